//! What a test says about a pod or a container, and the parts of a CRI config kubelet derives
//! from it.

use std::collections::HashMap;

use k8s_cri::v1 as api;

/// What a test says about a pod; the rest is filled in like kubelet does (for a host-network pod
/// unless `own_netns`).
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// CRI runtime handler (RuntimeClass handler); empty = containerd's default runtime.
    pub runtime_handler: String,
    /// cgroup parent (cgroupfs style, e.g. "/kubepods/besteffort/podUID"); empty = containerd's
    /// default ("/k8s.io/<id>").
    pub cgroup_parent: String,
    /// Pod-level resources (what kubelet sends as `linux.resources`).
    pub resources: Option<api::LinuxContainerResources>,
    /// The pod gets its own network namespace (set up by containerd's CNI) instead of the host's.
    pub own_netns: bool,
}

impl PodSpec {
    pub fn new(name: &str, namespace: &str, uid: &str) -> Self {
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            ..Default::default()
        }
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }

    pub fn runtime_handler(mut self, h: &str) -> Self {
        self.runtime_handler = h.into();
        self
    }

    /// A pod with its own network namespace, as kubelet runs every pod that is not hostNetwork.
    pub fn own_netns(mut self) -> Self {
        self.own_netns = true;
        self
    }
}

/// What a test says about a container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    pub working_dir: String,
    pub mounts: Vec<api::Mount>,
    pub devices: Vec<api::Device>,
    /// None = kubelet's BestEffort resources (cpu_shares 2, oom_score_adj 1000).
    pub resources: Option<api::LinuxContainerResources>,
    pub privileged: bool,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str, command: &[&str]) -> Self {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
}

/// What kubelet sends for a BestEffort container.
pub fn best_effort_resources() -> api::LinuxContainerResources {
    api::LinuxContainerResources {
        cpu_shares: 2,
        oom_score_adj: 1000,
        ..Default::default()
    }
}

pub(super) fn to_map(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn namespace_options(own_netns: bool) -> api::NamespaceOption {
    api::NamespaceOption {
        network: if own_netns {
            api::NamespaceMode::Pod as i32
        } else {
            api::NamespaceMode::Node as i32
        },
        // kubelet's defaults without shareProcessNamespace.
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
