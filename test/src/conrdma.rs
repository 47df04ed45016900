//! The project's own pieces, as tests and benches start them: a simulated NIC built by
//! `conrdmactl`, and the NRI plugin run as an external plugin against a [`Containerd`].

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::containerd::{Containerd, RuntimeHandler};
use crate::deps::workspace_bin;
use crate::error::{Error, Result};
use crate::process::ChildGuard;

/// Name under which the NRI plugin registers (its default `--idx` and `--name`).
pub const NRI_PLUGIN: &str = "10-conrdma";

/// Writes a simulated SR-IOV NIC under `root` (which must not exist yet or be empty).
pub fn simulate_nic(root: &Path, pfs: u32, vfs: u32, speed: &str) -> Result<()> {
    let mut cmd = Command::new(workspace_bin("conrdmactl")?);
    cmd.args([
        "simulate-nic",
        "--pfs",
        &pfs.to_string(),
        "--vfs",
        &vfs.to_string(),
        "--speed",
        speed,
        "--root",
    ])
    .arg(root);
    let out = cmd.output().map_err(|e| Error::Io {
        context: format!("running {cmd:?}"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Binary name of the ConRDMA runtime shim.
pub const SHIM: &str = "containerd-shim-conrdma-v1";

/// The `name` runtime handler running pods under the ConRDMA shim with the simulated limiter on
/// the NIC at `nic`, and runc's state under `runc_root` (so the harness can clean it up). Put
/// [`shim_dir`] in `ContainerdOptions::extra_path` so containerd finds the shim.
pub fn shim_runtime(name: &str, nic: &Path, runc_root: &Path) -> RuntimeHandler {
    let mut h = RuntimeHandler::new(name, "io.containerd.conrdma.v1");
    // Fail-closed needs the pod's request on the sandbox spec.
    h.pod_annotations = vec!["rdma.conrdma.io/*".into()];
    h.options.insert("limiter".into(), "simulated".into());
    h.options.insert(
        "sysfs_root".into(),
        nic.to_string_lossy().into_owned().into(),
    );
    h.options.insert(
        "Root".into(),
        runc_root.to_string_lossy().into_owned().into(),
    );
    // `CONRDMA_SHIM_TASK_API=3` runs the shim as a version-3 shim on containerd 2.x (the JSON
    // bootstrap reply), the mode 2.3 drives it in, so the same tests cover both versions.
    if let Some(v) = forced_task_api() {
        h.options.insert("task_api".into(), v.into());
    }
    h
}

/// The task API version `CONRDMA_SHIM_TASK_API` forces on the shim, if set.
pub fn forced_task_api() -> Option<i64> {
    std::env::var("CONRDMA_SHIM_TASK_API")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// The directory holding the shim binary.
pub fn shim_dir() -> Result<std::path::PathBuf> {
    let bin = workspace_bin(SHIM)?;
    Ok(bin.parent().map(Path::to_path_buf).unwrap_or_default())
}

impl Containerd {
    /// Starts `conrdma-nri-plugin --socket <this NRI socket> --cri-socket <this containerd> ARGS...` (log in `<dir>/nri-plugin.log`)
    /// and waits until containerd has registered and synchronized it.
    pub async fn start_nri_plugin<I, S>(&mut self, args: I) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.start_nri_plugin_env(args, &[]).await
    }

    /// The NRI plugin on the simulated NIC at `nic`, its ledger in `state`, with `extra` args
    /// (e.g. `--config`).
    pub async fn start_plugin_on(
        &mut self,
        nic: &Path,
        state: &Path,
        extra: &[&OsStr],
    ) -> Result<ChildGuard> {
        let args = [
            "--root".as_ref(),
            nic.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ];
        self.start_nri_plugin(args.into_iter().chain(extra.iter().copied()))
            .await
    }

    /// [`Containerd::start_nri_plugin`] with extra environment (e.g. a crash point).
    pub async fn start_nri_plugin_env<I, S>(
        &mut self,
        args: I,
        env: &[(&str, &str)],
    ) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mark = self.log_mark();
        let mut cmd = Command::new(workspace_bin("conrdma-nri-plugin")?);
        cmd.envs(env.iter().copied());
        cmd.arg("--socket")
            .arg(self.nri_socket())
            .arg("--cri-socket")
            .arg(self.socket())
            .args(args);
        let plugin = self.spawn_process("nri-plugin", &mut cmd)?;
        self.wait_for_plugin_since(mark, NRI_PLUGIN, Duration::from_secs(20))
            .await?;
        Ok(plugin)
    }
}
