//! The cluster's RDMA picture and the placement decision on top of it.
//!
//! Everything here is synchronous and takes `now` as an argument: the HTTP handlers pass the clock,
//! the simulator passes simulated time, and both run exactly the same decision code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conrdma_api::rate::format_mbps;
use conrdma_api::report::{NodeReport, PodId, UsageBatch};
use conrdma_api::Request;
use serde::Serialize;

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

/// The latest usage report of one pod.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub pod: PodId,
    pub pool: String,
    pub pf: String,
    pub vf: u32,
    pub guaranteed_mbps: u64,
    pub limit_mbps: u64,
    pub tx_mbps: f64,
    pub rx_mbps: f64,
    pub window_end_unix_ms: u64,
    pub received: Instant,
}

/// Why a pod does not fit a node (or why the node is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No report ever arrived from the node.
    NeverReported,
    /// The node's last report is older than the TTL.
    Stale,
    /// The node reports no pool at all.
    NoVfs,
    /// The node has no pool of the name the pod asks for.
    NoPool,
    /// No PF of the node could carry the guarantee even when empty.
    TooBig,
    /// Every PF that could carry the guarantee has all its VFs in use.
    NoFreeVf,
    /// No PF with a free VF has the guarantee's headroom left.
    NoHeadroom,
}

impl Why {
    /// Whether evicting pods could make room (kube-scheduler may try preemption for these).
    pub fn resolvable(self) -> bool {
        matches!(self, Why::NoFreeVf | Why::NoHeadroom)
    }
}

/// What the webhook thinks of one node for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The pod fits; `score` is the policy's preference from 0 to 100 (before scaling).
    Fits { score: u32 },
    /// No fresh report: treated as configured by `unknown_nodes`.
    Unknown(Why),
    /// The pod does not fit.
    No(Why),
}

/// What `/filter` does with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// In `FailedNodes`: preemption could help.
    Failed(Why),
    /// In `FailedAndUnresolvableNodes`.
    Unresolvable(Why),
}

/// The reason texts kube-scheduler shows, built once per request and shared by every node they
/// apply to. Free of per-node numbers so kube-scheduler can aggregate them in the pod's events.
pub struct Reasons {
    texts: [Arc<str>; 7],
}

impl Reasons {
    pub fn new(settings: &Settings, req: &Request) -> Reasons {
        let ask = format_mbps(req.guaranteed_mbps());
        let in_pool = req
            .pool
            .as_deref()
            .map(|p| format!(" in pool {p:?}"))
            .unwrap_or_default();
        let t = |s: String| Arc::<str>::from(s);
        Reasons {
            texts: [
                t("conrdma: no report from this node".into()),
                t(format!(
                    "conrdma: the node's last report is older than the {}s TTL",
                    settings.node_ttl.as_secs()
                )),
                t("conrdma: no RDMA VFs on this node".into()),
                t(format!(
                    "conrdma: no RDMA pool {:?} on this node",
                    req.pool.as_deref().unwrap_or_default()
                )),
                t(format!("conrdma: no PF{in_pool} can guarantee {ask}")),
                t(format!("conrdma: no free VF{in_pool}")),
                t(format!(
                    "conrdma: no PF{in_pool} with a free VF has {ask} of guarantee left"
                )),
            ],
        }
    }

    pub fn text(&self, why: Why) -> &Arc<str> {
        &self.texts[why as usize]
    }
}

/// Which pools a request may use, resolved once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolSel {
    Any,
    Id(u32),
    /// Names a pool no node has ever reported.
    Unknown,
}

/// A request resolved against the store: see [`Store::ask`].
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    mbps: u64,
    sel: PoolSel,
    pool: Option<&'a str>,
}

/// FxHash (rustc's hasher): a multiply-rotate per word, several times cheaper than SipHash on
/// short node names. Node names come from kube-scheduler and authenticated nodes, so hash
/// flooding is not a concern here.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
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
                .is_some_and(|old| old.window_end_unix_ms > r.window_end_unix_ms)
            {
                continue;
            }
            pods.insert(
                r.pod.uid.clone(),
                PodUsage {
                    pod: r.pod,
                    pool: r.pool,
                    pf: r.pf,
                    vf: r.vf,
                    guaranteed_mbps: r.guaranteed_mbps,
                    limit_mbps: r.limit_mbps,
                    tx_mbps: r.tx_mbps,
                    rx_mbps: r.rx_mbps,
                    window_end_unix_ms: r.window_end_unix_ms,
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

    fn fresh<'a>(&'a self, node: &str, now: Instant) -> Result<&'a [PfFit], Why> {
        let (received, pfs) = self.fits.get(node).ok_or(Why::NeverReported)?;
        if now.saturating_duration_since(received) > self.settings.node_ttl {
            return Err(Why::Stale);
        }
        Ok(pfs)
    }

    /// Measured (tx, rx) Mbps of the node's pods in `pool` (all pools if `None`), from fresh
    /// usage reports.
    pub fn measured(&self, node: &str, pool: Option<&str>, now: Instant) -> (f64, f64) {
        let Some(pods) = self.usage.get(node) else {
            return (0.0, 0.0);
        };
        pods.values()
            .filter(|u| pool.is_none_or(|p| u.pool == p))
            .filter(|u| now.saturating_duration_since(u.received) <= self.settings.node_ttl)
            .fold((0.0, 0.0), |(t, r), u| (t + u.tx_mbps, r + u.rx_mbps))
    }

    /// Resolves a request against the store once, for [`Store::evaluate_ask`] over many nodes.
    pub fn ask<'a>(&self, req: &'a Request) -> Ask<'a> {
        Ask {
            mbps: req.guaranteed_mbps(),
            sel: match req.pool.as_deref() {
                None => PoolSel::Any,
                Some(p) => self
                    .pool_ids
                    .get(p)
                    .map_or(PoolSel::Unknown, |id| PoolSel::Id(*id)),
            },
            pool: req.pool.as_deref(),
        }
    }

    /// Whether the pod can get one VF on one PF with guaranteed headroom for its request, and how
    /// much the configured policy likes the node.
    pub fn evaluate(&self, node: &str, req: &Request, now: Instant) -> Fit {
        self.evaluate_ask(node, &self.ask(req), now)
    }

    /// [`Store::evaluate`] with the request resolved beforehand.
    pub fn evaluate_ask(&self, node: &str, ask: &Ask, now: Instant) -> Fit {
        let data = match self.fresh(node, now) {
            Ok(d) => d,
            Err(why) => return Fit::Unknown(why),
        };
        let want = ask.mbps;
        let (mut any_pool, mut any_cap, mut any_vf) = (false, false, false);
        let mut best: Option<f64> = None;
        let mut pool_capacity = 0u64;
        for pf in data {
            match ask.sel {
                PoolSel::Any => {}
                PoolSel::Id(id) if id == pf.pool => {}
                _ => continue,
            }
            any_pool = true;
            pool_capacity += pf.capacity;
            if pf.capacity < want || pf.capacity == 0 {
                continue;
            }
            any_cap = true;
            if pf.vfs_free == 0 {
                continue;
            }
            any_vf = true;
            if pf.headroom < want {
                continue;
            }
            let left = (pf.headroom - want) as f64 / pf.capacity as f64;
            let s = match self.settings.policy {
                Policy::BestFit => 1.0 - left,
                Policy::Spread => left,
                // Scored per node below; any fitting PF will do.
                Policy::LeastMeasuredUsage => 0.0,
            };
            best = Some(best.map_or(s, |b: f64| b.max(s)));
        }
        let Some(best) = best else {
            return Fit::No(if !any_pool {
                if ask.pool.is_some() {
                    Why::NoPool
                } else {
                    Why::NoVfs
                }
            } else if !any_cap {
                Why::TooBig
            } else if !any_vf {
                Why::NoFreeVf
            } else {
                Why::NoHeadroom
            });
        };
        let share = match self.settings.policy {
            Policy::BestFit | Policy::Spread => best,
            Policy::LeastMeasuredUsage => {
                let (tx, rx) = self.measured(node, ask.pool, now);
                if pool_capacity == 0 {
                    0.0
                } else {
                    1.0 - (tx.max(rx) / pool_capacity as f64).min(1.0)
                }
            }
        };
        Fit::Fits {
            score: (share.clamp(0.0, 1.0) * 100.0).round() as u32,
        }
    }

    /// The `/filter` outcome for a fit.
    pub fn verdict(&self, fit: Fit) -> Verdict {
        match fit {
            Fit::Fits { .. } => Verdict::Pass,
            Fit::Unknown(why) => match self.settings.unknown_nodes {
                UnknownNodes::Neutral => Verdict::Pass,
                UnknownNodes::Exclude => Verdict::Unresolvable(why),
            },
            Fit::No(why) if why.resolvable() => Verdict::Failed(why),
            Fit::No(why) => Verdict::Unresolvable(why),
        }
    }

    /// The text kube-scheduler would show for a fit (tests, tools; the verbs share [`Reasons`]).
    pub fn reason(&self, fit: Fit, req: &Request) -> Option<String> {
        match fit {
            Fit::Fits { .. } => None,
            Fit::Unknown(why) | Fit::No(why) => {
                Some(Reasons::new(&self.settings, req).text(why).to_string())
            }
        }
    }

    /// The `/prioritize` score for a fit, from 0 to `max_score`.
    pub fn score(&self, fit: Fit) -> i64 {
        let share = match fit {
            Fit::Fits { score } => score as i64,
            Fit::Unknown(_) if self.settings.unknown_nodes == UnknownNodes::Neutral => 50,
            _ => 0,
        };
        (share * self.settings.max_score + 50) / 100
    }

    /// Everything known, for `GET /v1/nodes` and `/metrics`, sorted by node name.
    pub fn snapshot(&self, now: Instant) -> Vec<NodeView> {
        let mut out: Vec<NodeView> = self
            .nodes
            .values()
            .map(|e| {
                let age = now.saturating_duration_since(e.received);
                NodeView {
                    node: e.report.node.clone(),
                    age_seconds: age.as_secs_f64(),
                    stale: age > self.settings.node_ttl,
                    time_unix_ms: e.report.time_unix_ms,
                    received_unix_ms: e.received_unix_ms,
                    pools: e
                        .report
                        .pools
                        .iter()
                        .map(|p| {
                            let (tx, rx) = self.measured(&e.report.node, Some(&p.pool), now);
                            PoolView {
                                pool: p.pool.clone(),
                                capacity_mbps: p.capacity_mbps,
                                guaranteed_mbps: p.guaranteed_mbps,
                                pods: p.pods,
                                vfs_total: p.vfs_total,
                                vfs_free: p.vfs_free,
                                measured_tx_mbps: tx,
                                measured_rx_mbps: rx,
                                pfs: p
                                    .pfs
                                    .iter()
                                    .map(|pf| PfView {
                                        name: pf.name.clone(),
                                        line_rate_mbps: pf.line_rate_mbps,
                                        capacity_mbps: pf.capacity_mbps,
                                        guaranteed_mbps: pf.guaranteed_mbps,
                                        headroom_mbps: pf.headroom_mbps(),
                                        pods: pf.pods,
                                        vfs_total: pf.vfs_total,
                                        vfs_free: pf.vfs_free,
                                    })
                                    .collect(),
                            }
                        })
                        .collect(),
                    usage: self
                        .usage
                        .get(&e.report.node)
                        .map(|pods| {
                            let mut v: Vec<UsageView> = pods
                                .values()
                                .map(|u| UsageView {
                                    namespace: u.pod.namespace.clone(),
                                    name: u.pod.name.clone(),
                                    uid: u.pod.uid.clone(),
                                    pool: u.pool.clone(),
                                    pf: u.pf.clone(),
                                    vf: u.vf,
                                    guaranteed_mbps: u.guaranteed_mbps,
                                    limit_mbps: u.limit_mbps,
                                    tx_mbps: u.tx_mbps,
                                    rx_mbps: u.rx_mbps,
                                    age_seconds: now
                                        .saturating_duration_since(u.received)
                                        .as_secs_f64(),
                                })
                                .collect();
                            v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
                            v
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
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

#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub pool: String,
    pub capacity_mbps: u64,
    pub guaranteed_mbps: u64,
    pub pods: u32,
    pub vfs_total: u32,
    pub vfs_free: u32,
    pub measured_tx_mbps: f64,
    pub measured_rx_mbps: f64,
    pub pfs: Vec<PfView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PfView {
    pub name: String,
    pub line_rate_mbps: u64,
    pub capacity_mbps: u64,
    pub guaranteed_mbps: u64,
    pub headroom_mbps: u64,
    pub pods: u32,
    pub vfs_total: u32,
    pub vfs_free: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pool: String,
    pub pf: String,
    pub vf: u32,
    pub guaranteed_mbps: u64,
    pub limit_mbps: u64,
    pub tx_mbps: f64,
    pub rx_mbps: f64,
    pub age_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use conrdma_api::rate::Rate;
    use conrdma_api::report::{PfReport, PoolReport, UsageReport, REPORT_VERSION};

    fn settings(policy: Policy, unknown: UnknownNodes) -> Settings {
        Settings {
            node_ttl: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
            unknown_nodes: unknown,
            policy,
            max_score: 100,
        }
    }

    fn pf(name: &str, cap: u64, g: u64, free: u32) -> PfReport {
        PfReport {
            name: name.into(),
            line_rate_mbps: cap,
            capacity_mbps: cap,
            guaranteed_mbps: g,
            pods: 8 - free,
            vfs_total: 8,
            vfs_free: free,
        }
    }

    fn report(node: &str, pools: Vec<(&str, Vec<PfReport>)>) -> NodeReport {
        NodeReport {
            version: REPORT_VERSION,
            node: node.into(),
            time_unix_ms: 1,
            pools: pools
                .into_iter()
                .map(|(p, pfs)| PoolReport::from_pfs(p, pfs))
                .collect(),
        }
    }

    fn ask(gbps: u64, pool: Option<&str>) -> Request {
        Request {
            guarantee: Rate::from_mbps(gbps * 1000),
            pool: pool.map(str::to_string),
            ..Request::default()
        }
    }

    #[test]
    fn fit_is_per_pf_not_per_pool() {
        let t0 = Instant::now();
        let mut s = Store::new(settings(Policy::BestFit, UnknownNodes::Exclude));
        // 30G free in the pool, but at most 15G on one PF.
        s.put_node(
            report(
                "n1",
                vec![(
                    "default",
                    vec![pf("a", 25_000, 10_000, 4), pf("b", 25_000, 10_000, 4)],
                )],
            ),
            t0,
            0,
        );
        assert!(matches!(
            s.evaluate("n1", &ask(15, None), t0),
            Fit::Fits { score: 100 }
        ));
        for (req, why, text) in [
            (
                ask(20, None),
                Why::NoHeadroom,
                "no PF with a free VF has 20Gbps of guarantee left",
            ),
            (ask(40, None), Why::TooBig, "no PF can guarantee 40Gbps"),
            (
                ask(1, Some("fast")),
                Why::NoPool,
                "no RDMA pool \"fast\" on this node",
            ),
        ] {
            let fit = s.evaluate("n1", &req, t0);
            assert_eq!(fit, Fit::No(why));
            let reason = s.reason(fit, &req).unwrap();
            assert!(reason.contains(text), "{reason}");
            assert_eq!(why.resolvable(), why == Why::NoHeadroom);
        }
    }

    #[test]
    fn no_free_vf_and_best_effort() {
        let t0 = Instant::now();
        let mut s = Store::new(settings(Policy::BestFit, UnknownNodes::Exclude));
        s.put_node(
            report("n1", vec![("default", vec![pf("a", 25_000, 0, 0)])]),
            t0,
            0,
        );
        assert!(matches!(
            s.evaluate("n1", &Request::default(), t0),
            Fit::No(Why::NoFreeVf)
        ));
        s.put_node(
            report("n1", vec![("default", vec![pf("a", 25_000, 25_000, 1)])]),
            t0,
            0,
        );
        assert!(matches!(
            s.evaluate("n1", &Request::default(), t0),
            Fit::Fits { .. }
        ));
    }

    #[test]
    fn policies_rank_as_documented() {
        let t0 = Instant::now();
        let nodes = [
            report("tight", vec![("default", vec![pf("a", 25_000, 15_000, 4)])]),
            report("roomy", vec![("default", vec![pf("a", 200_000, 0, 8)])]),
        ];
        let mut scores = HashMap::new();
        for policy in [Policy::BestFit, Policy::Spread, Policy::LeastMeasuredUsage] {
            let mut s = Store::new(settings(policy, UnknownNodes::Exclude));
            for n in &nodes {
                s.put_node(n.clone(), t0, 0);
            }
            let mk = |node: &str, tx: f64| UsageReport {
                node: node.into(),
                pod: PodId {
                    namespace: "ns".into(),
                    name: "p".into(),
                    uid: format!("u-{node}"),
                },
                pool: "default".into(),
                pf: "a".into(),
                vf: 0,
                guaranteed_mbps: 0,
                limit_mbps: 0,
                tx_mbps: tx,
                rx_mbps: 0.0,
                window_start_unix_ms: 0,
                window_end_unix_ms: 1,
                is_final: false,
            };
            s.put_usage(
                UsageBatch::new(vec![mk("tight", 1_000.0), mk("roomy", 150_000.0)]),
                t0,
            );
            let r = ask(10, None);
            let sc = |n: &str| s.score(s.evaluate(n, &r, t0));
            scores.insert(policy.name(), (sc("tight"), sc("roomy")));
        }
        assert_eq!(scores["best-fit"], (100, 5));
        assert_eq!(scores["spread"], (0, 95));
        assert_eq!(scores["least-measured-usage"], (96, 25));
    }

    #[test]
    fn ttl_and_unknown_treatment() {
        let t0 = Instant::now();
        for (unknown, verdict_pass, score) in [
            (UnknownNodes::Exclude, false, 0),
            (UnknownNodes::Neutral, true, 50),
        ] {
            let mut s = Store::new(settings(Policy::BestFit, unknown));
            s.put_node(
                report("n1", vec![("default", vec![pf("a", 25_000, 0, 4)])]),
                t0,
                0,
            );
            let r = ask(1, None);
            assert!(matches!(
                s.evaluate("n1", &r, t0 + Duration::from_secs(60)),
                Fit::Fits { .. }
            ));
            let later = t0 + Duration::from_secs(61);
            let fit = s.evaluate("n1", &r, later);
            assert_eq!(fit, Fit::Unknown(Why::Stale));
            assert!(s
                .reason(fit, &r)
                .unwrap()
                .contains("older than the 60s TTL"));
            assert_eq!(s.verdict(fit) == Verdict::Pass, verdict_pass);
            assert_eq!(s.score(fit), score);
            let never = s.evaluate("n2", &r, t0);
            assert_eq!(never, Fit::Unknown(Why::NeverReported));
            assert!(s.reason(never, &r).unwrap().contains("no report"));
            s.prune(t0 + Duration::from_secs(601));
            assert_eq!(s.node_count(), 0);
        }
    }

    #[test]
    fn usage_ordering_and_final() {
        let t0 = Instant::now();
        let mut s = Store::new(settings(Policy::LeastMeasuredUsage, UnknownNodes::Exclude));
        let mk = |end: u64, tx: f64, fin: bool| UsageReport {
            node: "n1".into(),
            pod: PodId {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u1".into(),
            },
            pool: "default".into(),
            pf: "a".into(),
            vf: 0,
            guaranteed_mbps: 0,
            limit_mbps: 0,
            tx_mbps: tx,
            rx_mbps: 1.0,
            window_start_unix_ms: 0,
            window_end_unix_ms: end,
            is_final: fin,
        };
        s.put_usage(
            UsageBatch::new(vec![mk(20, 200.0, false), mk(10, 100.0, false)]),
            t0,
        );
        assert_eq!(s.measured("n1", None, t0), (200.0, 1.0));
        s.put_usage(UsageBatch::new(vec![mk(30, 0.0, true)]), t0);
        assert_eq!(s.measured("n1", None, t0), (0.0, 0.0));
    }
}
