//! The plugin's startup sequence, one for both modes: at launch for an external plugin (config
//! from a file), at the first NRI Configure for one containerd pre-launched (config in the
//! request). Opens the node state and starts its background work.

use std::sync::Arc;
use std::time::Duration;

use conrdma_node::NodeConfig;
use tracing::{error, warn};

use crate::error::PluginError;
use crate::node::NodeState;
use crate::plugin::Overrides;

/// What a metrics address that cannot be bound does to the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsBind {
    /// Fails it: an external plugin exits at once with the reason.
    Required,
    /// Is logged, and the plugin runs without metrics: a pre-launched plugin must not fail
    /// Configure (containerd would exit).
    BestEffort,
}

/// Opens the node state (`cfg` with `overrides` for paths and the metrics address), then starts
/// sysfs rescans, node reports, the ledger sweep against containerd's CRI, the work-conserving
/// controller (idle unless `[conserve]` enables it) and, if asked for, its metrics server. Needs
/// the tokio runtime's context.
pub fn start(
    cfg: NodeConfig,
    overrides: &Overrides,
    bind: MetricsBind,
) -> Result<Arc<NodeState>, PluginError> {
    // Bound before anything else, so a taken port stops an external plugin before it opens the
    // ledger.
    let metrics = match overrides
        .metrics_listen(&cfg)
        .map(crate::conserve::bind_metrics)
    {
        None => None,
        Some(Ok(listener)) => Some(listener),
        Some(Err(e)) if bind == MetricsBind::BestEffort => {
            error!(error = %e, "metrics are not served");
            None
        }
        Some(Err(e)) => return Err(e),
    };
    let root = overrides.root(&cfg);
    let cri = overrides.cri_socket(&cfg);
    let node = Arc::new(NodeState::open(&root, &overrides.state_dir(&cfg), cfg)?);
    crate::report::spawn_node_reporter(node.clone());
    spawn_refresher(node.clone());
    crate::sweep::spawn_sweeper(node.clone(), cri)?;
    let telemetry = crate::conserve::spawn(node.clone())?;
    if let Some(listener) = metrics {
        crate::conserve::serve_metrics(listener, telemetry);
    }
    Ok(node)
}

/// Rescans sysfs periodically; discovery never runs on the CreateContainer path.
fn spawn_refresher(node: Arc<NodeState>) {
    let every = Duration::from_secs(node.config().refresh_seconds.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = node.refresh() {
                warn!(error = %e, "rescan failed; keeping the previous inventory");
            }
        }
    });
}
