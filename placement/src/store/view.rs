//! The picture as `GET /v1/nodes` and `/metrics` show it.

use std::time::Instant;

use conrdma_api::report::{PfReport, PoolReport, UsageReport};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::{NodeEntry, PodUsage, Store};

// The pool, PF and usage views serialize by hand: each is a report laid out flat with a few
// figures of the store's, so their fields are declared once, in `conrdma_api::report`, and only
// listed here.

/// Serializes each listed field of `$src` under its own name.
macro_rules! fields {
    ($m:ident, $src:expr, $($f:ident),+) => {
        $($m.serialize_field(stringify!($f), &$src.$f)?;)+
    };
}

impl Store {
    /// Everything known, for `GET /v1/nodes` and `/metrics`, sorted by node name.
    pub fn snapshot(&self, now: Instant) -> Vec<NodeView> {
        let mut out: Vec<NodeView> = self
            .nodes
            .values()
            .map(|e| self.node_view(e, now))
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    fn node_view(&self, e: &NodeEntry, now: Instant) -> NodeView {
        let node = &e.report.node;
        let age = now.saturating_duration_since(e.received);
        let mut usage: Vec<UsageView> = self
            .usage
            .get(node)
            .map(|pods| pods.values().map(|u| UsageView::new(u, now)).collect())
            .unwrap_or_default();
        usage.sort_by(|a, b| {
            let (a, b) = (&a.report.pod, &b.report.pod);
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        });
        NodeView {
            node: node.clone(),
            age_seconds: age.as_secs_f64(),
            stale: age > self.settings.node_ttl,
            time_unix_ms: e.report.time_unix_ms,
            received_unix_ms: e.received_unix_ms,
            pools: e
                .report
                .pools
                .iter()
                .map(|p| {
                    let (tx, rx) = self.measured(node, Some(&p.pool), now);
                    PoolView {
                        report: p.clone(),
                        measured_tx_mbps: tx,
                        measured_rx_mbps: rx,
                    }
                })
                .collect(),
            usage,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub node: String,
    pub age_seconds: f64,
    pub stale: bool,
    pub time_unix_ms: u64,
    pub received_unix_ms: u64,
    pub pools: Vec<PoolView>,
    pub usage: Vec<UsageView>,
}

/// One pool as `GET /v1/nodes` shows it: its report's figures, what its pods were measured to
/// send and receive (Mbps), and its PFs with their headroom.
#[derive(Debug, Clone)]
pub struct PoolView {
    pub report: PoolReport,
    pub measured_tx_mbps: f64,
    pub measured_rx_mbps: f64,
}

impl Serialize for PoolView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("PoolView", 9)?;
        let r = &self.report;
        fields!(m, r, pool, capacity_mbps, guaranteed_mbps);
        fields!(m, r, pods, vfs_total, vfs_free);
        fields!(m, self, measured_tx_mbps, measured_rx_mbps);
        let pfs: Vec<PfView> = r.pfs.iter().map(PfView).collect();
        m.serialize_field("pfs", &pfs)?;
        m.end()
    }
}

/// One PF as `GET /v1/nodes` shows it: its report and, among its figures, the guarantee it can
/// still admit.
struct PfView<'a>(&'a PfReport);

impl Serialize for PfView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("PfView", 8)?;
        let pf = self.0;
        fields!(m, pf, name, line_rate_mbps, capacity_mbps, guaranteed_mbps);
        m.serialize_field("headroom_mbps", &pf.headroom_mbps())?;
        fields!(m, pf, pods, vfs_total, vfs_free);
        m.end()
    }
}

/// One pod's latest usage as `GET /v1/nodes` shows it: the held report with its pod flattened
/// (`namespace`, `name`, `uid`), without its window, and with how long ago it arrived.
#[derive(Debug, Clone)]
pub struct UsageView {
    pub report: UsageReport,
    pub age_seconds: f64,
}

impl UsageView {
    fn new(u: &PodUsage, now: Instant) -> UsageView {
        UsageView {
            report: u.report.clone(),
            age_seconds: now.saturating_duration_since(u.received).as_secs_f64(),
        }
    }
}

impl Serialize for UsageView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.report;
        let mut m = s.serialize_struct("UsageView", 11)?;
        fields!(m, r.pod, namespace, name, uid);
        fields!(m, r, pool, pf, vf);
        fields!(m, r, guaranteed_mbps, limit_mbps, tx_mbps, rx_mbps);
        fields!(m, self, age_seconds);
        m.end()
    }
}
