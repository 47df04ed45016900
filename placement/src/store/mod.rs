//! The cluster's RDMA picture and the placement decision on top of it.
//!
//! Everything here is synchronous and takes `now` as an argument: the HTTP handlers pass the clock,
//! the simulator passes simulated time, and both run exactly the same decision code.
//!
//! This module holds what arrives (node and usage reports); `decide` judges a node for a pod,
//! `view` shows the picture for `GET /v1/nodes` and `/metrics`.

mod decide;
#[cfg(test)]
mod tests;
mod view;

pub use decide::{Ask, Fit, Reasons, Verdict, Why};
pub use view::{NodeView, PoolView, UsageView};

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conrdma_api::report::{NodeReport, UsageBatch, UsageReport};

use crate::config::{Config, Policy, UnknownNodes};
use crate::fits::{FitTable, PfFit};

/// The knobs of the decision, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_ttl: Duration,
    pub forget_after: Duration,
    pub unknown_nodes: UnknownNodes,
    pub policy: Policy,
    pub max_score: i64,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Self {
        Settings {
            node_ttl: c.node_ttl(),
            forget_after: c.forget_after(),
            unknown_nodes: c.unknown_nodes,
            policy: c.policy,
            max_score: c.max_score,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub report: NodeReport,
    pub received: Instant,
    pub received_unix_ms: u64,
}

/// The latest usage report of one pod, and when it arrived.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub report: UsageReport,
    pub received: Instant,
}

pub struct Store {
    settings: Settings,
    nodes: HashMap<String, NodeEntry>,
    fits: FitTable,
    pool_ids: HashMap<String, u32>,
    /// node -> pod uid -> latest usage.
    usage: HashMap<String, HashMap<String, PodUsage>>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    pub fn new(settings: Settings) -> Store {
        Store {
            settings,
            nodes: HashMap::new(),
            fits: FitTable::default(),
            pool_ids: HashMap::new(),
            usage: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Stores a (validated) node report; it replaces the node's previous one whole.
    pub fn put_node(&mut self, report: NodeReport, now: Instant, now_unix_ms: u64) {
        let name = report.node.clone();
        let mut pfs = Vec::with_capacity(report.pools.iter().map(|p| p.pfs.len()).sum());
        for pool in &report.pools {
            let next = self.pool_ids.len() as u32;
            let id = *self.pool_ids.entry(pool.pool.clone()).or_insert(next);
            pfs.extend(pool.pfs.iter().map(|pf| PfFit {
                pool: id,
                vfs_free: pf.vfs_free,
                capacity: pf.capacity_mbps,
                headroom: pf.headroom_mbps(),
            }));
        }
        self.fits.put(&name, now, &pfs);
        self.nodes.insert(
            name,
            NodeEntry {
                report,
                received: now,
                received_unix_ms: now_unix_ms,
            },
        );
    }

    /// Stores a (validated) batch of usage reports. A report older than the one already held for
    /// the pod (a retried spool entry) is ignored; a final report forgets the pod.
    pub fn put_usage(&mut self, batch: UsageBatch, now: Instant) {
        for r in batch.reports {
            let pods = self.usage.entry(r.node.clone()).or_default();
            if r.is_final {
                pods.remove(&r.pod.uid);
                continue;
            }
            if pods
                .get(&r.pod.uid)
                .is_some_and(|old| old.report.window_end_unix_ms > r.window_end_unix_ms)
            {
                continue;
            }
            pods.insert(
                r.pod.uid.clone(),
                PodUsage {
                    report: r,
                    received: now,
                },
            );
        }
    }

    /// Forgets nodes silent for `forget_after` and usage older than the node TTL.
    pub fn prune(&mut self, now: Instant) {
        let (ttl, forget) = (self.settings.node_ttl, self.settings.forget_after);
        self.nodes
            .retain(|_, e| now.saturating_duration_since(e.received) <= forget);
        self.fits
            .retain(|received| now.saturating_duration_since(received) <= forget);
        for pods in self.usage.values_mut() {
            pods.retain(|_, u| now.saturating_duration_since(u.received) <= ttl);
        }
        self.usage.retain(|_, pods| !pods.is_empty());
    }

    /// Measured (tx, rx) Mbps of the node's pods in `pool` (all pools if `None`), from fresh
    /// usage reports.
    pub fn measured(&self, node: &str, pool: Option<&str>, now: Instant) -> (f64, f64) {
        let Some(pods) = self.usage.get(node) else {
            return (0.0, 0.0);
        };
        pods.values()
            .filter(|u| pool.is_none_or(|p| u.report.pool == p))
            .filter(|u| now.saturating_duration_since(u.received) <= self.settings.node_ttl)
            .fold((0.0, 0.0), |(t, r), u| {
                (t + u.report.tx_mbps, r + u.report.rx_mbps)
            })
    }
}
