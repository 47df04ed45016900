//! The event loop: arrivals, retries of waiting pods and departures, in simulated time, with the
//! webhook's choice (b) made by the placement library's own verbs over its own store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use conrdma_api::rate::format_mbps;
use conrdma_api::request::KEY_BANDWIDTH;
use conrdma_placement::store::{Settings, Store};
use conrdma_placement::{verbs, UnknownNodes};

use super::cluster::{Cluster, Spot};
use super::workload::{workload, PodSpec};
use super::{Mode, Outcome, SimConfig};
use crate::Rng;

/// Everything one simulation changes as it goes.
struct Run<'a> {
    mode: Mode,
    pods: &'a [PodSpec],
    cluster: Cluster,
    /// The webhook's picture (mode (b) only).
    store: Store,
    /// Breaks ties between equally good nodes, as kube-scheduler does: at random.
    ties: Rng,
    /// Simulated time 0.
    base: Instant,
    out: Outcome,
    /// Per pod: its PF over-committed while it ran.
    violated: Vec<bool>,
    placed_on: Vec<Option<Spot>>,
    started: Vec<f64>,
    /// (end of life in µs, pod), earliest first.
    departures: BinaryHeap<Reverse<(u64, usize)>>,
    delivered_mbps_s: f64,
    /// The last arrival: delivered bandwidth counts up to here.
    horizon: f64,
}

fn micros(t: f64) -> u64 {
    (t * 1e6) as u64
}

impl<'a> Run<'a> {
    fn new(cfg: &'a SimConfig, mode: Mode, pods: &'a [PodSpec]) -> Run<'a> {
        let mut run = Run {
            mode,
            pods,
            cluster: Cluster::new(cfg),
            store: Store::new(Settings {
                // Reports arrive on every change; no node goes stale in the simulation.
                node_ttl: Duration::from_secs(1 << 30),
                forget_after: Duration::from_secs(1 << 30),
                unknown_nodes: UnknownNodes::Exclude,
                policy: cfg.policy,
                max_score: 10,
            }),
            ties: Rng::new(cfg.seed ^ 0xA5A5_A5A5_5A5A_5A5A),
            base: Instant::now(),
            out: Outcome {
                arrived: pods.len(),
                placed: 0,
                met: 0,
                not_met: 0,
                gave_up: 0,
                refused_at_node: 0,
                overcommitted_pfs: 0,
                total_pfs: cfg.nodes * cfg.pfs_per_node,
                delivered_share_pct: 0,
            },
            violated: vec![false; pods.len()],
            placed_on: vec![None; pods.len()],
            started: vec![0.0; pods.len()],
            departures: BinaryHeap::new(),
            delivered_mbps_s: 0.0,
            horizon: pods.last().map_or(1.0, |p| p.arrive).max(1.0),
        };
        for n in 0..run.cluster.nodes.len() {
            run.publish(n, 0.0);
        }
        run
    }

    fn at(&self, t: f64) -> Instant {
        self.base + Duration::from_secs_f64(t)
    }

    /// Node `n`'s report reaches the webhook at `t` (mode (b) only: (a) reads no reports).
    fn publish(&mut self, n: usize, t: f64) {
        if self.mode == Mode::Webhook {
            let now = self.at(t);
            self.store.put_node(self.cluster.report(n), now, 0);
        }
    }

    /// (b): `/filter` then `/prioritize` over all nodes, the top score (ties at random), then the
    /// node's own admission, which may refuse.
    fn by_webhook(&mut self, ask: u64, t: f64) -> Option<Spot> {
        let ann: HashMap<String, String> = [(KEY_BANDWIDTH.to_string(), format_mbps(ask))].into();
        let now = self.at(t);
        let names = self.cluster.names.iter().map(String::as_str);
        let passed = verbs::filter(&self.store, verbs::args_for(ann.clone(), names), now)
            .ok()
            .and_then(|r| r.node_names)
            .unwrap_or_default();
        if passed.is_empty() {
            return None;
        }
        let scores =
            verbs::prioritize(&self.store, verbs::args_for(ann, passed), now).unwrap_or_default();
        let top = scores.iter().map(|h| h.score).max().unwrap_or(0);
        let tied: Vec<&str> = scores
            .iter()
            .filter(|h| h.score == top)
            .map(|h| h.host.as_str())
            .collect();
        let n = *self.cluster.index.get(tied[self.ties.below(tied.len())?])?;
        match self.cluster.admission(n, ask) {
            Some(pf) => Some((n, pf)),
            None => {
                self.out.refused_at_node += 1;
                None
            }
        }
    }

    /// Tries to place pod `p` at time `t`; true when placed.
    fn try_place(&mut self, p: usize, t: f64) -> bool {
        let ask = self.pods[p].ask_mbps;
        let chosen = match self.mode {
            Mode::VfCount => self.cluster.by_vf_count(&mut self.ties),
            Mode::Webhook => self.by_webhook(ask, t),
        };
        let Some(spot) = chosen else {
            return false;
        };
        if let Some(on_pf) = self.cluster.place(spot, p, ask) {
            for &q in on_pf {
                self.violated[q] = true;
            }
        }
        self.placed_on[p] = Some(spot);
        self.started[p] = t;
        self.out.placed += 1;
        self.departures
            .push(Reverse((micros(t + self.pods[p].lifetime), p)));
        self.publish(spot.0, t);
        true
    }

    /// The earliest departure leaves at `t`.
    fn depart(&mut self, t: f64) {
        let Some(Reverse((_, p))) = self.departures.pop() else {
            return;
        };
        let Some(spot) = self.placed_on[p] else {
            return;
        };
        let pod = &self.pods[p];
        self.cluster.release(spot, p, pod.ask_mbps);
        if self.violated[p] {
            self.out.not_met += 1;
        } else {
            self.out.met += 1;
            // Only the part of its life inside the arrival horizon counts.
            let start = self.started[p];
            let end = (start + pod.lifetime).min(self.horizon);
            self.delivered_mbps_s += pod.ask_mbps as f64 * (end - start).max(0.0);
        }
        self.publish(spot.0, t);
    }

    fn finish(mut self) -> Outcome {
        self.out.overcommitted_pfs = self.cluster.overcommitted_pfs();
        let capacity = self.cluster.capacity() as f64;
        self.out.delivered_share_pct =
            (100.0 * self.delivered_mbps_s / (self.horizon * capacity)).round() as u64;
        self.out
    }
}

/// What comes next in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Departure,
    Arrival,
    Retry,
}

/// Runs one mode over the seed's workload.
pub fn simulate(cfg: &SimConfig, mode: Mode) -> Outcome {
    let pods = workload(cfg);
    let mut run = Run::new(cfg, mode, &pods);
    let mut pending: VecDeque<usize> = VecDeque::new();
    let mut next_arrival = 0usize;
    let mut next_retry = cfg.retry_s;
    loop {
        let ta = pods.get(next_arrival).map(|p| p.arrive);
        let td = run
            .departures
            .peek()
            .map(|Reverse((us, _))| *us as f64 / 1e6);
        // Earliest of: departure, arrival, retry tick (only while pods wait).
        let mut t = f64::INFINITY;
        let mut event = None;
        if let Some(d) = td {
            t = d;
            event = Some(Event::Departure);
        }
        if let Some(a) = ta.filter(|&a| a < t) {
            t = a;
            event = Some(Event::Arrival);
        }
        if !pending.is_empty() && next_retry < t {
            t = next_retry;
            event = Some(Event::Retry);
        }
        let Some(event) = event else {
            break;
        };
        match event {
            Event::Departure => run.depart(t),
            Event::Arrival => {
                let p = next_arrival;
                next_arrival += 1;
                // A new pod is tried at once (kube-scheduler's active queue); waiting pods are
                // retried every `retry_s`.
                if !run.try_place(p, t) {
                    pending.push_back(p);
                }
            }
            Event::Retry => {
                next_retry = t + cfg.retry_s;
                let waiting: Vec<usize> = pending.drain(..).collect();
                for p in waiting {
                    if t - pods[p].arrive > cfg.patience_s {
                        run.out.gave_up += 1;
                    } else if !run.try_place(p, t) {
                        pending.push_back(p);
                    }
                }
            }
        }
        if event != Event::Retry && next_retry < t {
            // Keep the retry clock from falling behind while nothing waits.
            next_retry = t + cfg.retry_s;
        }
    }
    run.finish()
}
