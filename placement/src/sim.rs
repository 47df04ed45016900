//! A deterministic placement simulator: one seeded workload scheduled (a) by VF count only, as
//! kube-scheduler does with the SR-IOV device plugin's extended resource, and (b) through this
//! webhook's `/filter` and `/prioritize` (the very functions in [`crate::verbs`]), so the two can be
//! compared on the pods that get the bandwidth they asked for.
//!
//! Model (also in `docs/placement.md`):
//! - nodes in a repeating mix of 25, 100 and 200 Gbit/s NICs, `pfs_per_node` PFs each with
//!   `vfs_per_pf` VFs; capacity = line rate (admission ratio 1);
//! - pods arrive as a Poisson process sized so the offered guaranteed bandwidth is `load` x the
//!   cluster's capacity; each asks one guarantee from a fixed spread (1 to 100 Gbit/s) and lives
//!   an exponential lifetime;
//! - a pod that cannot be placed waits (retried every `retry_s`, like kube-scheduler's
//!   unschedulable queue) and gives up after `patience_s`;
//! - (a) picks the node with most free VFs and, on it, the PF with most free VFs; nothing checks
//!   bandwidth. (b) calls filter then prioritize over all nodes and picks the top score (ties at
//!   random, as kube-scheduler does); the node then admits like the NRI plugin's ledger (the PF with
//!   the most headroom that fits). Node reports reach the webhook as soon as a node changes.
//! - a PF is over-committed when its guarantees exceed its capacity; every pod on it at such a
//!   moment has its bandwidth not met. A placed pod whose PF never over-commits during its life has
//!   its bandwidth met.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use conrdma_api::rate::format_mbps;
use conrdma_api::report::{NodeReport, PfReport, PoolReport, REPORT_VERSION};
use conrdma_api::request::KEY_BANDWIDTH;

use crate::config::{Policy, UnknownNodes};
use crate::store::{Settings, Store};
use crate::verbs;

/// Parameters of one simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub pfs_per_node: usize,
    pub vfs_per_pf: u32,
    /// Offered guaranteed bandwidth as a multiple of the cluster's capacity.
    pub load: f64,
    pub pods: usize,
    pub mean_lifetime_s: f64,
    pub retry_s: f64,
    pub patience_s: f64,
    pub policy: Policy,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            nodes: 200,
            pfs_per_node: 2,
            vfs_per_pf: 16,
            load: 1.0,
            pods: 20_000,
            mean_lifetime_s: 600.0,
            retry_s: 10.0,
            patience_s: 300.0,
            policy: Policy::BestFit,
        }
    }
}

/// Line rates of the node mix, Mbps: node i gets `NIC_MIX[i % 3]` on every PF.
pub const NIC_MIX: [u64; 3] = [25_000, 100_000, 200_000];
/// Guarantees pods ask for (Mbps) and their weights (percent).
pub const DEMAND: [(u64, u32); 6] = [
    (1_000, 20),
    (5_000, 25),
    (10_000, 25),
    (25_000, 15),
    (50_000, 10),
    (100_000, 5),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// (a) kube-scheduler counting VFs (the SR-IOV device plugin's extended resource).
    VfCount,
    /// (b) kube-scheduler with this webhook as extender.
    Webhook,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::VfCount => "VF count only",
            Mode::Webhook => "ConRDMA webhook",
        }
    }
}

/// What happened to the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub arrived: usize,
    pub placed: usize,
    /// Placed pods whose PF never had more guaranteed than its capacity while they ran.
    pub met: usize,
    pub not_met: usize,
    /// Pods that waited `patience_s` without being placed.
    pub gave_up: usize,
    /// Pods the chosen node refused (the webhook's picture was wrong); 0 with immediate reports.
    pub refused_at_node: usize,
    pub overcommitted_pfs: usize,
    pub total_pfs: usize,
    /// Guaranteed bandwidth of pods whose bandwidth was met, integrated over the arrival horizon,
    /// as a percentage of the cluster's capacity over the same time.
    pub delivered_share_pct: u64,
}

/// SplitMix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

#[derive(Debug, Clone)]
struct PodSpec {
    arrive: f64,
    ask_mbps: u64,
    lifetime: f64,
}

/// The workload a seed yields; identical for both modes.
fn workload(cfg: &SimConfig) -> Vec<PodSpec> {
    let mut rng = Rng(cfg.seed);
    let capacity: u64 = (0..cfg.nodes)
        .map(|i| NIC_MIX[i % NIC_MIX.len()] * cfg.pfs_per_node as u64)
        .sum();
    let total_w: u32 = DEMAND.iter().map(|d| d.1).sum();
    let mean_ask: f64 = DEMAND
        .iter()
        .map(|(m, w)| *m as f64 * *w as f64 / total_w as f64)
        .sum();
    // Little's law: concurrent demand = rate x lifetime x mean ask = load x capacity.
    let rate = cfg.load * capacity as f64 / (cfg.mean_lifetime_s * mean_ask);
    let mut t = 0.0;
    (0..cfg.pods)
        .map(|_| {
            t += rng.exp(1.0 / rate);
            let mut pick = rng.below(total_w as usize) as u32;
            let mut ask = DEMAND[0].0;
            for (m, w) in DEMAND {
                if pick < w {
                    ask = m;
                    break;
                }
                pick -= w;
            }
            PodSpec {
                arrive: t,
                ask_mbps: ask,
                lifetime: rng.exp(cfg.mean_lifetime_s).max(1.0),
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct SimPf {
    name: String,
    capacity: u64,
    guaranteed: u64,
    vfs_free: u32,
    pods: Vec<usize>,
    overcommitted: bool,
}

#[derive(Debug, Clone)]
struct SimNode {
    name: String,
    pfs: Vec<SimPf>,
}

impl SimNode {
    fn vfs_free(&self) -> u32 {
        self.pfs.iter().map(|p| p.vfs_free).sum()
    }

    fn report(&self, vfs_per_pf: u32) -> NodeReport {
        let pfs = self
            .pfs
            .iter()
            .map(|p| PfReport {
                name: p.name.clone(),
                line_rate_mbps: p.capacity,
                capacity_mbps: p.capacity,
                guaranteed_mbps: p.guaranteed,
                pods: p.pods.len() as u32,
                vfs_total: vfs_per_pf,
                vfs_free: p.vfs_free,
            })
            .collect();
        NodeReport {
            version: REPORT_VERSION,
            node: self.name.clone(),
            time_unix_ms: 0,
            pools: vec![PoolReport::from_pfs("default", pfs)],
        }
    }
}

/// Runs one mode over the seed's workload.
pub fn simulate(cfg: &SimConfig, mode: Mode) -> Outcome {
    let pods = workload(cfg);
    let mut ties = Rng(cfg.seed ^ 0xA5A5_A5A5_5A5A_5A5A);
    let mut nodes: Vec<SimNode> = (0..cfg.nodes)
        .map(|i| SimNode {
            name: format!("node-{i:03}"),
            pfs: (0..cfg.pfs_per_node)
                .map(|j| SimPf {
                    name: format!("ens{j}"),
                    capacity: NIC_MIX[i % NIC_MIX.len()],
                    guaranteed: 0,
                    vfs_free: cfg.vfs_per_pf,
                    pods: Vec::new(),
                    overcommitted: false,
                })
                .collect(),
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let index: HashMap<String, usize> = names.iter().cloned().zip(0..).collect();
    let base = Instant::now();
    let at = |t: f64| base + Duration::from_secs_f64(t);
    let mut store = Store::new(Settings {
        // Reports arrive on every change; no node goes stale in the simulation.
        node_ttl: Duration::from_secs(1 << 30),
        forget_after: Duration::from_secs(1 << 30),
        unknown_nodes: UnknownNodes::Exclude,
        policy: cfg.policy,
        max_score: 10,
    });
    if mode == Mode::Webhook {
        for n in &nodes {
            store.put_node(n.report(cfg.vfs_per_pf), at(0.0), 0);
        }
    }

    let mut out = Outcome {
        arrived: pods.len(),
        placed: 0,
        met: 0,
        not_met: 0,
        gave_up: 0,
        refused_at_node: 0,
        overcommitted_pfs: 0,
        total_pfs: cfg.nodes * cfg.pfs_per_node,
        delivered_share_pct: 0,
    };
    let mut violated = vec![false; pods.len()];
    let mut placed_on: Vec<Option<(usize, usize)>> = vec![None; pods.len()];
    let mut departures: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut pending: VecDeque<usize> = VecDeque::new();
    let mut next_arrival = 0usize;
    let mut next_retry = cfg.retry_s;
    let mut delivered_mbps_s = 0.0f64;
    let mut started = vec![0.0f64; pods.len()];
    let horizon = pods.last().map_or(1.0, |p| p.arrive).max(1.0);
    let micros = |t: f64| (t * 1e6) as u64;

    // Tries to place pod `p` at time `t`; true when placed.
    let mut try_place = |p: usize,
                         t: f64,
                         nodes: &mut Vec<SimNode>,
                         store: &mut Store,
                         departures: &mut BinaryHeap<Reverse<(u64, usize)>>,
                         violated: &mut Vec<bool>,
                         placed_on: &mut Vec<Option<(usize, usize)>>,
                         started: &mut Vec<f64>,
                         out: &mut Outcome|
     -> bool {
        let ask = pods[p].ask_mbps;
        let chosen: Option<(usize, usize)> = match mode {
            Mode::VfCount => {
                let best = nodes.iter().map(SimNode::vfs_free).max().unwrap_or(0);
                if best == 0 {
                    None
                } else {
                    let tied: Vec<usize> = (0..nodes.len())
                        .filter(|&i| nodes[i].vfs_free() == best)
                        .collect();
                    let n = tied[ties.below(tied.len())];
                    let pf = (0..nodes[n].pfs.len())
                        .max_by_key(|&j| (nodes[n].pfs[j].vfs_free, Reverse(j)))
                        .unwrap_or(0);
                    Some((n, pf))
                }
            }
            Mode::Webhook => {
                let ann: HashMap<String, String> =
                    [(KEY_BANDWIDTH.to_string(), format_mbps(ask))].into();
                let now = at(t);
                let passed = verbs::filter(
                    store,
                    verbs::args_for(ann.clone(), names.iter().map(String::as_str)),
                    now,
                )
                .ok()
                .and_then(|r| r.node_names)
                .unwrap_or_default();
                if passed.is_empty() {
                    None
                } else {
                    let scores = verbs::prioritize(store, verbs::args_for(ann, passed), now)
                        .unwrap_or_default();
                    let top = scores.iter().map(|h| h.score).max().unwrap_or(0);
                    let tied: Vec<&str> = scores
                        .iter()
                        .filter(|h| h.score == top)
                        .map(|h| h.host.as_str())
                        .collect();
                    let n = index[tied[ties.below(tied.len())]];
                    // The node's own admission, as the NRI plugin's ledger does it: the PF with
                    // the most headroom that fits and has a free VF; ties to fewer pods.
                    let pf = (0..nodes[n].pfs.len())
                        .filter(|&j| {
                            let f = &nodes[n].pfs[j];
                            f.vfs_free > 0 && f.capacity.saturating_sub(f.guaranteed) >= ask
                        })
                        .max_by_key(|&j| {
                            let f = &nodes[n].pfs[j];
                            (f.capacity - f.guaranteed, Reverse(f.pods.len()), Reverse(j))
                        });
                    match pf {
                        Some(pf) => Some((n, pf)),
                        None => {
                            out.refused_at_node += 1;
                            None
                        }
                    }
                }
            }
        };
        let Some((n, j)) = chosen else {
            return false;
        };
        let pf = &mut nodes[n].pfs[j];
        pf.guaranteed += ask;
        pf.vfs_free -= 1;
        pf.pods.push(p);
        if pf.guaranteed > pf.capacity {
            pf.overcommitted = true;
            for &q in &pf.pods {
                violated[q] = true;
            }
        }
        placed_on[p] = Some((n, j));
        started[p] = t;
        out.placed += 1;
        departures.push(Reverse((micros(t + pods[p].lifetime), p)));
        if mode == Mode::Webhook {
            store.put_node(nodes[n].report(cfg.vfs_per_pf), at(t), 0);
        }
        true
    };

    loop {
        let ta = pods.get(next_arrival).map(|p| p.arrive);
        let td = departures.peek().map(|Reverse((us, _))| *us as f64 / 1e6);
        let busy = ta.is_some() || !pending.is_empty();
        if !busy && td.is_none() {
            break;
        }
        // Earliest of: departure, arrival, retry tick (only while pods wait).
        let mut t = f64::INFINITY;
        let mut what = 0;
        if let Some(d) = td {
            t = d;
            what = 1;
        }
        if let Some(a) = ta {
            if a < t {
                t = a;
                what = 2;
            }
        }
        if !pending.is_empty() && next_retry < t {
            t = next_retry;
            what = 3;
        }
        match what {
            1 => {
                let Some(Reverse((_, p))) = departures.pop() else {
                    break;
                };
                if let Some((n, j)) = placed_on[p] {
                    let pf = &mut nodes[n].pfs[j];
                    pf.guaranteed -= pods[p].ask_mbps;
                    pf.vfs_free += 1;
                    pf.pods.retain(|&q| q != p);
                    if violated[p] {
                        out.not_met += 1;
                    } else {
                        out.met += 1;
                        // Only the part of its life inside the arrival horizon counts.
                        let start = started[p];
                        let end = (start + pods[p].lifetime).min(horizon);
                        delivered_mbps_s += pods[p].ask_mbps as f64 * (end - start).max(0.0);
                    }
                    if mode == Mode::Webhook {
                        store.put_node(nodes[n].report(cfg.vfs_per_pf), at(t), 0);
                    }
                }
            }
            2 => {
                let p = next_arrival;
                next_arrival += 1;
                // A new pod is tried at once (kube-scheduler's active queue); waiting pods are
                // retried every `retry_s`.
                if !try_place(
                    p,
                    t,
                    &mut nodes,
                    &mut store,
                    &mut departures,
                    &mut violated,
                    &mut placed_on,
                    &mut started,
                    &mut out,
                ) {
                    pending.push_back(p);
                }
            }
            3 => {
                next_retry = t + cfg.retry_s;
                let waiting: Vec<usize> = pending.drain(..).collect();
                for p in waiting {
                    if t - pods[p].arrive > cfg.patience_s {
                        out.gave_up += 1;
                    } else if !try_place(
                        p,
                        t,
                        &mut nodes,
                        &mut store,
                        &mut departures,
                        &mut violated,
                        &mut placed_on,
                        &mut started,
                        &mut out,
                    ) {
                        pending.push_back(p);
                    }
                }
            }
            _ => break,
        }
        if what != 3 && next_retry < t {
            // Keep the retry clock from falling behind while nothing waits.
            next_retry = t + cfg.retry_s;
        }
    }
    out.overcommitted_pfs = nodes
        .iter()
        .flat_map(|n| n.pfs.iter())
        .filter(|p| p.overcommitted)
        .count();
    let capacity: u64 = nodes
        .iter()
        .flat_map(|n| n.pfs.iter())
        .map(|p| p.capacity)
        .sum();
    out.delivered_share_pct =
        (100.0 * delivered_mbps_s / (horizon * capacity as f64)).round() as u64;
    out
}

/// Both modes and the ratio of pods placed with their bandwidth met, (b) over (a).
pub fn compare(cfg: &SimConfig) -> (Outcome, Outcome, f64) {
    let a = simulate(cfg, Mode::VfCount);
    let b = simulate(cfg, Mode::Webhook);
    let ratio = if a.met == 0 {
        f64::INFINITY
    } else {
        b.met as f64 / a.met as f64
    };
    (a, b, ratio)
}

/// A printable table of one comparison.
pub fn table(cfg: &SimConfig, a: &Outcome, b: &Outcome, ratio: f64) -> String {
    let mut s = format!(
        "seed {} | {} nodes x {} PFs ({} Gbit/s mix) x {} VFs | {} pods, load {:.2} of capacity, mean life {}s | policy {}\n",
        cfg.seed,
        cfg.nodes,
        cfg.pfs_per_node,
        NIC_MIX.map(|m| (m / 1000).to_string()).join("/"),
        cfg.vfs_per_pf,
        cfg.pods,
        cfg.load,
        cfg.mean_lifetime_s,
        cfg.policy.name()
    );
    s.push_str(&format!(
        "{:<18} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>14} {:>10}\n",
        "scheduler",
        "arrived",
        "placed",
        "bw met",
        "not met",
        "gave up",
        "refused",
        "overcommit PFs",
        "delivered"
    ));
    for (mode, o) in [(Mode::VfCount, a), (Mode::Webhook, b)] {
        s.push_str(&format!(
            "{:<18} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} of {:<3} {:>9}%\n",
            mode.name(),
            o.arrived,
            o.placed,
            o.met,
            o.not_met,
            o.gave_up,
            o.refused_at_node,
            o.overcommitted_pfs,
            o.total_pfs,
            o.delivered_share_pct
        ));
    }
    s.push_str(&format!(
        "pods placed with bandwidth met, webhook / VF count: {ratio:.2}x\n"
    ));
    s
}
