//! The periodic sweep: frees allocations of pods containerd no longer holds.
//!
//! NRI alone cannot promise that a pod's removal reaches the plugin. containerd relays
//! RemovePodSandbox only for pods it has seen start since it came up (its NRI state is in memory),
//! so a pod created before a containerd restart and removed after it is never reported; 1.7 sends
//! pre-launched plugins no Synchronize; and a removal that happens while the plugin is restarting
//! is lost until the next Synchronize. So every few seconds the plugin asks containerd's CRI
//! which pod sandboxes exist (ListPodSandbox, every state) and frees what the ledger holds for any
//! other pod. The ledger's admission mark keeps a pod admitted while the question was out from
//! being taken for gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::ListPodSandboxRequest;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{info, warn};

use crate::error::PluginError;
use crate::node::NodeState;

/// A CRI call that takes longer than this is abandoned until the next sweep.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Lists every pod sandbox containerd holds, in any state, through its CRI socket.
pub struct CriPods {
    client: RuntimeServiceClient<Channel>,
}

impl CriPods {
    /// A client for `socket`; it connects on first use and again after containerd restarts.
    pub fn new(socket: &Path) -> Result<CriPods, PluginError> {
        let path = socket.to_path_buf();
        // tonic needs a URI; the connector ignores it and dials the socket.
        let endpoint = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }));
        Ok(CriPods {
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Ids of all pod sandboxes, ready or not (a stopped sandbox still holds its allocation until
    /// it is removed, as with RemovePodSandbox).
    pub async fn sandbox_ids(&self) -> Result<HashSet<String>, PluginError> {
        let mut client = self.client.clone();
        let reply = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| PluginError::Cri(format!("ListPodSandbox: {}", s.message())))?;
        Ok(reply.into_inner().items.into_iter().map(|p| p.id).collect())
    }
}

/// One sweep: mark, ask, free what is gone. Returns how many allocations were freed.
pub async fn sweep_once(node: &NodeState, cri: &CriPods) -> Result<usize, PluginError> {
    let mark = node.admission_mark();
    let live = cri.sandbox_ids().await?;
    let released = node.sweep(&live, mark)?;
    for h in &released {
        let p = &h.pod;
        info!(pod_id = %p.id, pod = %format!("{}/{}", p.namespace, p.name), pf = %h.record.pf, vf = h.record.vf,
              guaranteed_mbps = h.record.guaranteed_mbps, "released: containerd no longer holds the pod");
    }
    Ok(released.len())
}

/// Runs the sweep every `cri.sweep_seconds` (unless 0) against `socket`.
pub fn spawn_sweeper(node: Arc<NodeState>, socket: PathBuf) -> Result<(), PluginError> {
    let every = node.config().cri.sweep_seconds;
    if every == 0 {
        info!("ledger sweep off (cri.sweep_seconds = 0)");
        return Ok(());
    }
    let cri = CriPods::new(&socket)?;
    info!(socket = %socket.display(), every_s = every, "ledger sweep against containerd's CRI");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Logged when the state flips, not at every tick: containerd may be down for a while.
        let mut failing = false;
        // The first tick is immediate: a restarted plugin frees what went away while it was down
        // before containerd even reconnects it.
        loop {
            tick.tick().await;
            match sweep_once(&node, &cri).await {
                Ok(_) if failing => {
                    info!("ledger sweep works again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    warn!(error = %e, socket = %socket.display(), "ledger sweep failed; retrying every interval");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
    Ok(())
}
