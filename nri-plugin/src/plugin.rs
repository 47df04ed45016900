//! The NRI handler: requests in, adjustments out.

use std::sync::Arc;

use conrdma_core::ledger::PodRef;
use conrdma_core::{NodeConfig, Request};
use conrdma_nri::{
    ConfigureRequest, ContainerUpdate, CreateContainerRequest, CreateContainerResponse, Event,
    EventMask, PodSandbox, RpcError, StateChangeEvent, SynchronizeRequest,
};
use tracing::{error, info, info_span, warn};

use crate::adjust::adjustment;
use crate::error::PluginError;
use crate::node::NodeState;

pub struct Plugin {
    node: Arc<NodeState>,
}

impl Plugin {
    pub fn new(node: Arc<NodeState>) -> Plugin {
        Plugin { node }
    }

    /// Everything CreateContainer does, without the transport: used by the handler and benches.
    pub fn create(
        &self,
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
        let grant = self
            .node
            .grant(&pod_ref(pod), &request)
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
        if !req.config.trim().is_empty() {
            // A pre-launched plugin's config arrives here. Failing Configure would make containerd
            // exit, so a bad config is logged and the previous one kept.
            match NodeConfig::from_toml(&req.config, "NRI plugin config") {
                Ok(cfg) => {
                    if let Err(e) = self.node.set_config(cfg) {
                        error!(error = %e, "applying NRI plugin config failed; keeping the previous inventory");
                    }
                }
                Err(e) => error!(error = %e, "ignoring NRI plugin config"),
            }
        }
        Ok(EventMask::CREATE_CONTAINER | EventMask::REMOVE_POD_SANDBOX)
    }

    async fn synchronize(&self, req: SynchronizeRequest) -> Result<Vec<ContainerUpdate>, RpcError> {
        let pods = req.pods.iter().map(pod_ref);
        let ctrs = req
            .containers
            .iter()
            .map(|c| (c.pod_sandbox_id.as_str(), &c.annotations));
        let out = self.node.reconcile(pods, ctrs).map_err(|e| {
            error!(error = %e, "reconcile failed");
            RpcError::from(e)
        })?;
        for p in &out.released {
            info!(pod_id = %p.id, pod = %format!("{}/{}", p.namespace, p.name), "released: pod is gone");
        }
        for p in &out.adopted {
            info!(pod_id = %p.id, pod = %format!("{}/{}", p.namespace, p.name), "adopted allocation recorded on a live container");
        }
        info!(
            pods = req.pods.len(),
            containers = req.containers.len(),
            held = self.node.held().len(),
            "synchronized"
        );
        Ok(vec![])
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, RpcError> {
        self.create(&req).map_err(RpcError::from)
    }

    async fn state_change(&self, ev: StateChangeEvent) -> Result<(), RpcError> {
        if ev.event.enum_value() != Ok(Event::REMOVE_POD_SANDBOX) {
            return Ok(());
        }
        let Some(pod) = ev.pod.as_ref() else {
            return Ok(());
        };
        match self.node.release(&pod.id) {
            Ok(Some(h)) => {
                info!(pod_id = %pod.id, pod = %format!("{}/{}", pod.namespace, pod.name),
                                 pf = %h.record.pf, vf = h.record.vf, guaranteed_mbps = h.record.guaranteed_mbps, "released")
            }
            Ok(None) => {}
            // Kept in the ledger; the next Synchronize frees it since the pod is gone by then.
            Err(e) => error!(pod_id = %pod.id, error = %e, "release failed"),
        }
        Ok(())
    }
}
