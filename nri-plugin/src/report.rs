//! Node reports to the placement webhook: the node's pools, capacity, guaranteed sums and free VFs,
//! sent every `interval_seconds` and right after every admission or release. A report replaces the
//! node's previous one whole, so a lost report is never replayed: the next one carries the same news.
//! After a failed delivery the next try comes sooner than the tick (1 s, doubling up to the interval),
//! so a webhook that starts after the node (any DaemonSet order) hears from it within seconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conrdma_api::report::{NodeReport, NODE_REPORT_PATH};
use conrdma_node::config::PlacementConfig;
use conrdma_reporter::{Client, Target};
use tracing::{debug, info, warn};

use crate::node::NodeState;

/// First retry after a failed delivery; doubles per failure up to the report interval.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The Kubernetes node name this plugin reports as.
pub fn node_name(cfg: &PlacementConfig) -> String {
    cfg.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Builds the current report (no I/O beyond what the node state already holds).
pub fn build_report(node: &NodeState, name: &str) -> NodeReport {
    let inv = node.inventory();
    let held = node.held();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    conrdma_node::report::node_report(name, now, &inv, held.iter().map(|h| &h.record))
}

/// Starts the reporter if the node config names a webhook.
pub fn spawn_node_reporter(node: Arc<NodeState>) {
    let Some(cfg) = node.config().placement.clone() else {
        return;
    };
    let target = Target {
        url: cfg.url.clone(),
        credential_file: cfg.credential_file.clone(),
        ca_file: cfg.ca_file.clone(),
        timeout: Duration::from_secs(5),
    };
    let client = match Client::new(target) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!(error = %e, "node reports disabled");
            return;
        }
    };
    let name = node_name(&cfg);
    info!(node = %name, url = %cfg.url, "sending node reports");
    let every = Duration::from_secs(cfg.interval_seconds);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut failing = false;
        let mut retry = RETRY_FIRST;
        loop {
            let backoff = async {
                if failing {
                    tokio::time::sleep(retry).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = node.changed.notified() => {}
                _ = backoff => {}
            }
            let report = build_report(&node, &name);
            let c = client.clone();
            let sent =
                tokio::task::spawn_blocking(move || c.post_json(NODE_REPORT_PATH, &report)).await;
            match sent {
                Ok(Ok(())) => {
                    if failing {
                        info!("node reports reach the webhook again");
                    }
                    failing = false;
                    retry = RETRY_FIRST;
                    debug!("node report sent");
                }
                Ok(Err(e)) => {
                    // Log the first failure of a run, not every try of an outage.
                    if !failing {
                        warn!(error = %e, retry_s = retry.as_secs(), "node report not delivered; retrying");
                    } else {
                        retry = (retry * 2).min(every);
                    }
                    failing = true;
                }
                Err(e) => warn!(error = %e, "node report task failed"),
            }
        }
    });
}
