//! ConRDMA end-to-end test harness.
//!
//! Starts a real, isolated containerd with NRI ([`Containerd`]), 1.7 or 2.x, and plays the
//! kubelet through CRI ([`Cri`]). Helper daemons such as the NRI plugin run under a [`ChildGuard`].
//!
//! Environment knobs:
//! - `CONRDMA_CONTAINERD`: which containerd line to run, `2.1` (default; any `2.N`, `2.x` or `2`
//!   means the same: whatever 2.x `hack/install-deps.sh` installed) or `1.7`. The harness writes
//!   config version 3 for 2.x and version 2 for 1.7; [`deps::containerd_line`] and
//!   [`deps::containerd_version`] tell tests which one runs;
//! - `CONRDMA_DEPS`: the 1.7 prefix holding `usr/bin/{containerd,ctr,containerd-shim-runc-v2}`
//!   (default `/opt/conrdma-deps`, containerd 1.7 from Debian trixie, installed by
//!   `hack/install-deps.sh`);
//! - `CONRDMA_DEPS2`: the 2.x prefix, same layout (default `/opt/conrdma-deps-2`, containerd 2.x
//!   from Debian sid, installed by `hack/install-deps.sh`). Both lines run the system's runc;
//! - `CONRDMA_BIN_DIR`: where the workspace's own binaries are (default: the target dir's
//!   profile directory; build them with `cargo build --workspace --bins`);
//! - `CONRDMA_E2E_IMAGE`: a ready OCI tarball instead of building one with `hack/build-image.sh`;
//! - `CONRDMA_E2E_TMPDIR`: where instance directories go (default the system temp dir);
//! - `CONRDMA_E2E_KEEP=1`: keep each instance directory (logs, config) after teardown.
//! - `CONRDMA_SHIM_TASK_API=3`: the shim replies to `start` as a task API v3 shim (containerd 2.x
//!   only), as under containerd 2.3; unset, it answers as v2 (the form 1.7 and 2.0-2.2 both take).
//!
//! Starting the NRI plugin against an instance:
//!
//! ```no_run
//! # async fn demo() -> conrdma_e2e::Result<()> {
//! use std::process::Command;
//! use std::time::Duration;
//! use conrdma_e2e::{workspace_bin, Containerd, ContainerdOptions};
//! let mut cd = Containerd::start(ContainerdOptions::default()).await?;
//! let mark = cd.log_mark();
//! let _plugin = cd.spawn_process(
//!     "nri-plugin",
//!     Command::new(workspace_bin("conrdma-nri-plugin")?)
//!         .arg("--nri-socket")
//!         .arg(cd.nri_socket()),
//! )?; // output in <dir>/nri-plugin.log; killed when dropped
//! cd.wait_for_plugin_since(mark, "10-conrdma", Duration::from_secs(10)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A pod and a container:
//!
//! ```no_run
//! # async fn demo() -> conrdma_e2e::Result<()> {
//! use conrdma_e2e::{Containerd, ContainerdOptions};
//! let cd = Containerd::start(ContainerdOptions::default()).await?;
//! let cri = cd.cri();
//! let pod = cri.run_pod("p", "default", "uid-1", &[]).await.expect("pod");
//! let c = cri
//!     .run_container(&pod, "c", cd.image(), &["sleep", "3600"], &[])
//!     .await
//!     .expect("container");
//! let (code, out, _) = cri
//!     .exec_sync(&c, &["echo", "hi"], std::time::Duration::from_secs(5))
//!     .await
//!     .expect("exec");
//! assert_eq!((code, out.as_str()), (0, "hi\n"));
//! cd.shutdown().await
//! # }
//! ```

pub mod conrdma;
pub mod containerd;
pub mod cri;
pub mod deps;
pub mod error;
pub mod process;
pub mod standin;
pub mod timing;
pub mod webhook;

pub use conrdma::{shim_dir, shim_runtime, simulate_nic, NRI_PLUGIN, SHIM};
pub use containerd::{
    CniBridge, Containerd, ContainerdOptions, Paths, RuntimeHandler, K8S_NAMESPACE,
};
pub use cri::{ContainerSpec, Cri, PodSpec};
pub use deps::{containerd_line, containerd_version, workspace_bin, ContainerdLine, DEFAULT_IMAGE};
pub use error::{Error, Result};
pub use process::ChildGuard;
