//! The VM node as tests drive it: containerd + the NRI plugin in external mode over the VM's real
//! sysfs, pods from the rdma-probe image.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use conrdma_api::AllocationRecord;
use conrdma_e2e::{workspace_bin, ChildGuard, Containerd, ContainerdOptions, PodSpec};
use conrdma_node::ledger::{Held, Ledger};
use serde_json::Value;

use crate::{
    node_facts, probe_image_tar, probe_line, require_vm_node, NodeFacts, PROBE_IMAGE,
    PROBE_IN_IMAGE,
};

pub const PLUGIN: &str = "10-conrdma";
/// Everything is slow under software emulation: generous waits.
pub const WAIT: Duration = Duration::from_secs(60);
pub const EXEC: Duration = Duration::from_secs(60);

/// containerd + the NRI plugin over the VM's real sysfs, pods from the rdma-probe image.
pub struct VmNode {
    pub cd: Containerd,
    pub plugin: Option<ChildGuard>,
    pub state: PathBuf,
    pub facts: NodeFacts,
}

impl VmNode {
    pub async fn start(node_config: &str) -> VmNode {
        Self::start_with(node_config, ContainerdOptions::default()).await
    }

    pub async fn start_with(node_config: &str, mut opts: ContainerdOptions) -> VmNode {
        require_vm_node();
        let facts = node_facts();
        opts.image = PROBE_IMAGE.into();
        opts.image_tar = Some(probe_image_tar());
        let mut cd = Containerd::start(opts).await.expect("containerd in the VM");
        let state = cd.dir().join("nri-state");
        let config = cd.dir().join("node.toml");
        std::fs::write(&config, node_config).unwrap();
        let mark = cd.log_mark();
        let mut cmd = Command::new(workspace_bin("conrdma-nri-plugin").unwrap());
        cmd.arg("--socket")
            .arg(cd.nri_socket())
            .arg("--cri-socket")
            .arg(cd.socket())
            .args(["--root", "/"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info");
        let plugin = cd.spawn_process("nri-plugin", &mut cmd).unwrap();
        cd.wait_for_plugin_since(mark, PLUGIN, WAIT)
            .await
            .expect("the NRI plugin connects");
        VmNode {
            cd,
            plugin: Some(plugin),
            state,
            facts,
        }
    }

    pub fn ledger(&self) -> Vec<Held> {
        Ledger::snapshot(&self.state).unwrap()
    }

    pub fn plugin_log(&self) -> String {
        self.plugin.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// A pod with one long-running container; a refused pod is removed again, as kubelet would.
    pub async fn pod(&self, spec: PodSpec) -> Result<(String, String), tonic::Status> {
        let cri = self.cd.cri();
        cri.run_pod_with_sleeper(&spec).await
    }

    pub async fn spec(&self, ctr: &str) -> Value {
        self.cd.cri().container_status_verbose(ctr).await.unwrap()["runtimeSpec"].clone()
    }

    pub async fn exec(&self, ctr: &str, cmd: &[&str]) -> (i32, String, String) {
        self.cd.cri().exec_sync(ctr, cmd, EXEC).await.unwrap()
    }

    /// The rdma-probe inside the container; returns its JSON line.
    pub async fn probe(&self, ctr: &str, args: &[&str]) -> Value {
        let mut cmd = vec![PROBE_IN_IMAGE];
        cmd.extend_from_slice(args);
        let (_, out, err) = self.exec(ctr, &cmd).await;
        if out.trim().is_empty() {
            panic!("the probe printed nothing in the container; stderr: {err}");
        }
        probe_line(&out)
    }
}

pub fn pod(name: &str, annotations: &[(&str, &str)]) -> PodSpec {
    let mut p = PodSpec::new(name, "default", &format!("uid-{name}"));
    for (k, v) in annotations {
        p = p.annotation(k, v);
    }
    p
}

pub fn allocation(spec: &Value) -> AllocationRecord {
    let json = spec["annotations"]["rdma.conrdma.io/allocation"]
        .as_str()
        .unwrap_or_else(|| panic!("no allocation annotation in {}", spec["annotations"]));
    AllocationRecord::from_json(json).unwrap()
}
