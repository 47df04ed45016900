//! The NRI handler: requests in, adjustments out.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use conrdma_api::Request;
use conrdma_node::ledger::PodRef;
use conrdma_node::NodeConfig;
use conrdma_nri::{
    ConfigureRequest, ContainerUpdate, CreateContainerRequest, CreateContainerResponse, Event,
    EventMask, PodSandbox, RpcError, StateChangeEvent, SynchronizeRequest,
};
use tracing::{error, info, info_span, warn};

use crate::adjust::adjustment;
use crate::error::PluginError;
use crate::node::NodeState;
use crate::startup::MetricsBind;

/// Where the ledger lives unless told otherwise. /run is a tmpfs on nodes: the ledger survives
/// plugin and containerd restarts (which keep pods running) and is cleared by a reboot (which
/// ends every pod, so every allocation with it).
pub const DEFAULT_STATE_DIR: &str = "/run/conrdma/nri";

/// Command-line choices that win over the node config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub cri_socket: Option<PathBuf>,
    /// Where to serve the controller's metrics (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Overrides {
    pub fn root(&self, cfg: &NodeConfig) -> PathBuf {
        self.root
            .clone()
            .or_else(|| cfg.sysfs_root.clone())
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    pub fn state_dir(&self, cfg: &NodeConfig) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| cfg.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }

    pub fn metrics_listen(&self, cfg: &NodeConfig) -> Option<std::net::SocketAddr> {
        self.metrics_listen.or(cfg.conserve.metrics_listen)
    }

    pub fn cri_socket(&self, cfg: &NodeConfig) -> PathBuf {
        self.cri_socket
            .clone()
            .unwrap_or_else(|| cfg.cri.socket.clone())
    }
}

pub struct Plugin {
    /// Set at startup (external mode) or by the first Configure (pre-launched mode, whose only
    /// configuration channel is Configure).
    node: RwLock<Option<Arc<NodeState>>>,
    overrides: Overrides,
}

impl Plugin {
    pub fn new(node: Arc<NodeState>) -> Plugin {
        Plugin {
            node: RwLock::new(Some(node)),
            overrides: Overrides::default(),
        }
    }

    /// A plugin that sets its node up from the config text in NRI Configure.
    pub fn deferred(overrides: Overrides) -> Plugin {
        Plugin {
            node: RwLock::new(None),
            overrides,
        }
    }

    fn node(&self) -> Result<Arc<NodeState>, PluginError> {
        let guard = self.node.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| {
            PluginError::NotReady("the plugin's configuration failed (see its log)".into())
        })
    }

    /// Everything CreateContainer does, without the transport: used by the handler and benches.
    pub fn create(
        &self,
        req: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse, PluginError> {
        create_on(|| self.node(), req)
    }

    /// RunPodSandbox: a pod with its own network namespace is admitted here, before any of its
    /// containers exists, so a VF netdev moved into it is in place when they start. A refusal is
    /// logged, not returned: containerd 2.1.9 leaves the sandbox's shim, pause process and mounts
    /// behind when a plugin fails RunPodSandbox (1.7.24 cleans up), and kubelet retries sandboxes,
    /// so each retry would leak another. The pod's first CreateContainer asks again and fails with
    /// the reason, as for hostNetwork pods. The move is netlink work: it runs on a blocking
    /// thread, not on an NRI worker.
    pub async fn run_pod(&self, pod: PodSandbox) {
        let Some(netns) = crate::podnet::pod_netns(&pod) else {
            return;
        };
        let span = info_span!("run_pod_sandbox", pod_id = %pod.id, pod = %format!("{}/{}", pod.namespace, pod.name));
        let refused = |e: &PluginError| warn!(error = %e, "not admitted at sandbox start; its first container gets the reason");
        let request = match Request::from_annotations(&pod.annotations) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return span.in_scope(|| refused(&e.into())),
        };
        let node = match self.node() {
            Ok(n) => n,
            Err(e) => return span.in_scope(|| refused(&e)),
        };
        let work = move || {
            let _g = span.enter();
            match node.grant(&pod_ref(&pod), &request, &pod.runtime_handler, Some(&netns)) {
                Ok(grant) if grant.fresh => {
                    let rec = &grant.record;
                    info!(pool = %rec.pool, pf = %rec.pf, vf = rec.vf, rdma_device = %rec.rdma_device,
                          guaranteed_mbps = rec.guaranteed_mbps, limit_mbps = rec.limit_mbps,
                          address = rec.address.as_deref().unwrap_or(""), "admitted");
                }
                Ok(_) => {}
                Err(e) => refused(&e),
            }
        };
        if let Err(e) = tokio::task::spawn_blocking(work).await {
            error!(error = %e, "admitting the pod at sandbox start stopped");
        }
    }

    fn configure_text(&self, text: &str) -> Result<(), PluginError> {
        let cfg = NodeConfig::from_toml(text, "NRI plugin config")?;
        let existing = self.node.read().unwrap_or_else(|p| p.into_inner()).clone();
        match existing {
            Some(node) => node.set_config(cfg),
            None => {
                let node = crate::startup::start(cfg, &self.overrides, MetricsBind::BestEffort)?;
                *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node);
                Ok(())
            }
        }
    }
}

/// CreateContainer's work on whichever node `node` yields (asked only for pods with ConRDMA
/// annotations, so a node that is not ready refuses only those).
fn create_on(
    node: impl FnOnce() -> Result<Arc<NodeState>, PluginError>,
    req: &CreateContainerRequest,
) -> Result<CreateContainerResponse, PluginError> {
    let pod = req.pod.as_ref().ok_or(PluginError::Malformed("a pod"))?;
    let ctr = req
        .container
        .as_ref()
        .ok_or(PluginError::Malformed("a container"))?;
    let span = info_span!("create_container", pod_id = %pod.id, pod = %format!("{}/{}", pod.namespace, pod.name), container_id = %ctr.id, container = %ctr.name);
    let _g = span.enter();
    let mut resp = CreateContainerResponse::new();
    let Some(request) = Request::from_annotations(&pod.annotations)
        .inspect_err(|e| warn!(error = %e, "refused"))?
    else {
        return Ok(resp);
    };
    let netns = crate::podnet::pod_netns(pod);
    let grant = node()?
        .grant(
            &pod_ref(pod),
            &request,
            &pod.runtime_handler,
            netns.as_deref(),
        )
        .inspect_err(|e| warn!(error = %e, "refused"))?;
    let rec = &grant.record;
    if grant.fresh {
        info!(pool = %rec.pool, pf = %rec.pf, vf = rec.vf, rdma_device = %rec.rdma_device,
              guaranteed_mbps = rec.guaranteed_mbps, limit_mbps = rec.limit_mbps, "admitted");
    }
    if !request.applies_to(&ctr.name) {
        info!("container not listed in rdma.conrdma.io/containers: left untouched");
        return Ok(resp);
    }
    resp.adjust = Some(adjustment(rec, &grant.uverbs, grant.rdma_cm.as_ref())).into();
    Ok(resp)
}

/// Synchronize's work: the ledger reconciled with the pods and containers containerd holds.
fn synchronize_on(
    node: &NodeState,
    req: &SynchronizeRequest,
) -> Result<Vec<ContainerUpdate>, RpcError> {
    let pods = req.pods.iter().map(|p| {
        (
            pod_ref(p),
            p.runtime_handler.as_str(),
            crate::podnet::pod_netns(p),
        )
    });
    let ctrs = req
        .containers
        .iter()
        .map(|c| (c.pod_sandbox_id.as_str(), &c.annotations));
    let out = node.reconcile(pods, ctrs).map_err(|e| {
        error!(error = %e, "reconcile failed");
        RpcError::from(e)
    })?;
    for h in &out.released {
        let p = &h.pod;
        info!(pod_id = %p.id, pod = %format!("{}/{}", p.namespace, p.name), "released: pod is gone");
    }
    for p in &out.adopted {
        info!(pod_id = %p.id, pod = %format!("{}/{}", p.namespace, p.name), "adopted allocation recorded on a live container");
    }
    info!(
        pods = req.pods.len(),
        containers = req.containers.len(),
        held = node.held().len(),
        "synchronized"
    );
    Ok(vec![])
}

fn pod_ref(pod: &PodSandbox) -> PodRef {
    PodRef {
        id: pod.id.clone(),
        uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
    }
}

#[conrdma_nri::async_trait::async_trait]
impl conrdma_nri::Handler for Plugin {
    async fn configure(&self, req: ConfigureRequest) -> Result<EventMask, RpcError> {
        info!(runtime = %req.runtime_name, version = %req.runtime_version, "configured by runtime");
        let deferred = self
            .node
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if deferred || !req.config.trim().is_empty() {
            // Failing Configure makes containerd drop the plugin (and exit, for a pre-launched
            // one), so a bad config is logged and requesting pods are refused until it is fixed.
            if let Err(e) = self.configure_text(&req.config) {
                error!(error = %e, "NRI plugin config not applied");
            }
        }
        Ok(EventMask::RUN_POD_SANDBOX
            | EventMask::STOP_POD_SANDBOX
            | EventMask::CREATE_CONTAINER
            | EventMask::REMOVE_POD_SANDBOX)
    }

    async fn synchronize(&self, req: SynchronizeRequest) -> Result<Vec<ContainerUpdate>, RpcError> {
        let node = self.node().map_err(RpcError::from)?;
        // Reconciling writes the ledger and may bring VF netdevs home: a blocking thread's work.
        tokio::task::spawn_blocking(move || synchronize_on(&node, &req))
            .await
            .map_err(|e| {
                RpcError::from(PluginError::Setup(format!("Synchronize work stopped: {e}")))
            })?
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, RpcError> {
        // Pods that ask for nothing pass straight through. Admission writes the ledger (fsync) and
        // may wait for the controller to make room, so it runs on a blocking thread: the NRI
        // workers stay free for other pods' requests and the runtime's own events.
        let asked = req
            .pod
            .as_ref()
            .is_some_and(|p| Request::asked_for(&p.annotations));
        if !asked && req.container.is_some() {
            return Ok(CreateContainerResponse::new());
        }
        let node = self.node();
        tokio::task::spawn_blocking(move || create_on(move || node, &req))
            .await
            .map_err(|e| {
                RpcError::from(PluginError::Setup(format!(
                    "CreateContainer work stopped: {e}"
                )))
            })?
            .map_err(RpcError::from)
    }

    async fn state_change(&self, ev: StateChangeEvent) -> Result<(), RpcError> {
        let event = ev.event.enum_value();
        if event == Ok(Event::RUN_POD_SANDBOX) {
            if let Some(pod) = ev.pod.into_option() {
                self.run_pod(pod).await;
            }
            return Ok(());
        }
        let stop = event == Ok(Event::STOP_POD_SANDBOX);
        if !stop && event != Ok(Event::REMOVE_POD_SANDBOX) {
            return Ok(());
        }
        let (Some(pod), Ok(node)) = (ev.pod.into_option(), self.node()) else {
            return Ok(());
        };
        // Netlink and fsync work: on a blocking thread, not on an NRI worker.
        let work = move || {
            if stop {
                // Before containerd deletes the namespace; an error is only logged by
                // containerd, and the VF stays booked until a later stop, release or sweep
                // brings it home.
                if let Err(e) = node.stop(&pod.id) {
                    error!(pod_id = %pod.id, error = %e, "returning the VF netdev at pod stop failed");
                }
                return;
            }
            match node.release(&pod.id) {
                Ok(Some(h)) => {
                    info!(pod_id = %pod.id, pod = %format!("{}/{}", pod.namespace, pod.name),
                          pf = %h.record.pf, vf = h.record.vf, guaranteed_mbps = h.record.guaranteed_mbps, "released")
                }
                Ok(None) => {}
                // Kept in the ledger; the next Synchronize or sweep frees it since the pod is
                // gone by then.
                Err(e) => error!(pod_id = %pod.id, error = %e, "release failed"),
            }
        };
        if let Err(e) = tokio::task::spawn_blocking(work).await {
            error!(error = %e, "pod stop or removal handling stopped");
        }
        Ok(())
    }
}
