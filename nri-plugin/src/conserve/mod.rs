//! The work-conserving bandwidth controller of the node daemon (docs/conserve.md).
//!
//! One thread per plugin. Four times per interval it reads the transmit counter of every allocated
//! VF in a pool it steers; every interval, and at once when a VF that lent part of its guarantee
//! runs at its lowered cap, it decides new maxima per PF with [`conrdma_api::conserve`] and sets
//! the ones that change through the node's [`RateLimiter`](conrdma_node::limiter::RateLimiter) of
//! the configured kind, the same kind the shim uses (decreases first, so the PF's sum stays within
//! line x headroom). It reads the ledger and the config but never holds the ledger while it talks
//! to the hardware. CreateContainer waits for it only when it admits a pod to a steered pool, for
//! the round that makes room for the pod's start maximum ([`crate::steering`]).
//!
//! Who owns a VF's rate: the runtime (shim, or the plugin's own enforcement) sets the allocation's
//! start rate (`max = guarantee`, at least 1 Mbps, `min = guarantee`) when the pod starts and
//! resets it when the pod goes. From the first decision after that until the pod leaves the
//! ledger (or its pool is switched off), the controller owns `max_tx_rate` and keeps it within
//! `[floor, limit]`, never below the guarantee while it is wanted. A VF without a rate (the
//! runtime has not set it yet, or has already reset it) is left alone and counted at its start
//! maximum for up to [`PENDING`]. A VF that leaves the ledger is reset
//! if the controller was the last to change it and no other pod holds it; a VF whose pool is
//! switched off gets its allocation's static rate back.
//!
//! - [`control`]: the loop (what it tracks per VF, rounds, decisions, hand-backs);
//! - [`telemetry`]: what it did, as Prometheus metrics;
//! - [`http`]: the `/metrics` endpoint.

mod control;
pub mod http;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

pub use http::{bind_metrics, serve_metrics};
pub use telemetry::Telemetry;

use crate::error::PluginError;
use crate::node::NodeState;

/// How long a VF without a rate is left to its runtime before the controller sets one.
pub const PENDING: Duration = Duration::from_secs(30);

/// A VF as the controller tracks it: its PF and index, and the pod holding it, so a VF that
/// changes hands starts afresh. Ordered PF first, so one PF's VFs are adjacent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct VfKey {
    pf: String,
    pod_id: String,
    vf: u32,
}

/// Starts the controller thread, which steers through the node's limiters; what it does is
/// published in the returned telemetry.
pub fn spawn(node: Arc<NodeState>) -> Result<Arc<Telemetry>, PluginError> {
    let telemetry = Arc::new(Telemetry::new()?);
    let t = telemetry.clone();
    std::thread::Builder::new()
        .name("conrdma-conserve".into())
        .spawn(move || control::Loop::new(node, t).run())
        .map_err(|source| PluginError::Thread {
            what: "work-conserving controller",
            source,
        })?;
    Ok(telemetry)
}
