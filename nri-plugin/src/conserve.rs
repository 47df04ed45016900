//! The work-conserving bandwidth controller of the node daemon (docs/conserve.md).
//!
//! One thread per plugin. Four times per interval it reads the transmit counter of every allocated
//! VF in a pool it steers; every interval, and at once when a VF that lent part of its guarantee
//! runs at its lowered cap, it decides new maxima per PF with [`conrdma_api::conserve`] and sets
//! the ones that change through the same [`RateLimiter`] the shim uses (decreases first, so the
//! PF's sum stays within line x headroom). It reads the ledger and the config but never holds the
//! ledger while it talks to the hardware. CreateContainer waits for it only when it admits a pod
//! to a steered pool, for the round that makes room for the pod's start maximum
//! ([`crate::steering`]).
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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conrdma_api::conserve::{reclaim_due, Controller, Observation, RateMeter};
use conrdma_node::ledger::Held;
use conrdma_node::limiter::{LimiterSpec, RateLimiter, VfRate};
use conrdma_node::NodeConfig;
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing::{debug, info, warn};

use crate::error::PluginError;
use crate::node::NodeState;

/// Counter samples per interval.
const SAMPLES: u32 = 4;
/// How long a VF without a rate is left to its runtime before the controller sets one.
pub const PENDING: Duration = Duration::from_secs(30);
/// How often a switched-off controller looks at the config again.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A VF as the controller tracks it: the pod holding it and the VF, so a VF that changes hands
/// starts afresh.
type Key = (String, u32);

/// Starts the controller thread; what it does is published in the returned telemetry.
pub fn spawn(node: Arc<NodeState>, root: PathBuf) -> Result<Arc<Telemetry>, PluginError> {
    let telemetry =
        Arc::new(Telemetry::new().map_err(|e| {
            PluginError::Setup(format!("conserve metrics cannot be registered: {e}"))
        })?);
    let t = telemetry.clone();
    std::thread::Builder::new()
        .name("conrdma-conserve".into())
        .spawn(move || Loop::new(node, root, t).run())
        .map_err(|e| {
            PluginError::Setup(format!(
                "cannot start the work-conserving controller thread: {e}"
            ))
        })?;
    Ok(telemetry)
}

struct Vf {
    pool: String,
    pf: String,
    vf: u32,
    pod: String,
    guarantee: u64,
    limit: u64,
    line: u64,
    meter: RateMeter,
    /// The maximum last read from or set on the hardware.
    max: u64,
    /// The peak window rate of the last decision.
    measured: Option<u64>,
    /// Since when the VF has had no rate.
    bare_since: Option<Instant>,
    /// The controller was the last to change this VF's rate.
    touched: bool,
    /// A limiter call failed (logged once, until the counters can be read again).
    failing: bool,
}

struct Loop {
    node: Arc<NodeState>,
    root: PathBuf,
    telemetry: Arc<Telemetry>,
    vfs: BTreeMap<(String, Key), Vf>,
    ctls: BTreeMap<String, Controller<Key>>,
    epoch: Instant,
    next_decision: Instant,
}

impl Loop {
    fn new(node: Arc<NodeState>, root: PathBuf, telemetry: Arc<Telemetry>) -> Loop {
        let now = Instant::now();
        Loop {
            node,
            root,
            telemetry,
            vfs: BTreeMap::new(),
            ctls: BTreeMap::new(),
            epoch: now,
            next_decision: now,
        }
    }

    fn run(mut self) {
        self.node.steering.attach();
        let mut was_on = false;
        let mut limiter: Option<(LimiterSpec, Box<dyn RateLimiter>)> = None;
        let mut next_sample = Instant::now();
        loop {
            let cfg = self.node.config();
            let c = &cfg.conserve;
            if c.enabled != was_on {
                info!(
                    enabled = c.enabled,
                    interval_ms = c.interval_ms,
                    headroom = c.headroom,
                    pools = ?c.pools,
                    "work-conserving controller {}",
                    if c.enabled { "on" } else { "off" }
                );
                was_on = c.enabled;
            }
            let started = Instant::now();
            let spec = self.limiter_spec(&cfg);
            if limiter.as_ref().is_none_or(|(s, _)| *s != spec) {
                let built = spec.build();
                limiter = Some((spec, built));
            }
            // Admissions wake the loop between samples; the sampling cadence stays the same.
            let sample = started >= next_sample;
            if let Some((_, l)) = &limiter {
                self.tick(&cfg, l.as_ref(), started, sample);
            }
            if sample {
                let pause = if c.enabled {
                    Duration::from_millis(c.interval_ms) / SAMPLES
                } else {
                    IDLE_POLL
                };
                next_sample = started + pause;
            }
            self.node
                .steering
                .sleep(next_sample.saturating_duration_since(Instant::now()));
        }
    }

    /// `[conserve] limiter`, else `[enforce] limiter`; a simulated NIC lives under the root.
    fn limiter_spec(&self, cfg: &NodeConfig) -> LimiterSpec {
        let kind = cfg
            .conserve
            .limiter
            .as_deref()
            .unwrap_or(cfg.enforce.limiter.as_str());
        match kind {
            "simulated" => LimiterSpec::Simulated {
                root: self.root.clone(),
            },
            _ => LimiterSpec::Netlink,
        }
    }

    /// One sampling round, which answers the admissions that asked for a decision before it began.
    /// `sample`: a round of the regular cadence, which reads every VF's counters; otherwise an
    /// admission woke the controller and only PFs with new VFs are decided.
    fn tick(&mut self, cfg: &NodeConfig, lim: &dyn RateLimiter, now: Instant, sample: bool) {
        let ticket = self.node.steering.begin();
        self.round(cfg, lim, now, sample);
        self.node.steering.finish(ticket);
    }

    /// Follows the ledger, reads counters, decides where due: every interval, and at once on a
    /// PF with a new VF (to make room for its start maximum) or a lender back at its cap.
    fn round(&mut self, cfg: &NodeConfig, lim: &dyn RateLimiter, now: Instant, sample: bool) {
        let c = &cfg.conserve;
        if !c.enabled && self.vfs.is_empty() {
            return;
        }
        let held = self.node.held();
        let inv = self.node.inventory();
        let mut current: BTreeMap<(String, Key), &Held> = BTreeMap::new();
        if c.enabled {
            for h in &held {
                let r = &h.record;
                if c.controls(&r.pool) && inv.pf(&r.pf).is_some() {
                    current.insert((r.pf.clone(), (h.pod.id.clone(), r.vf)), h);
                }
            }
        }
        let gone: Vec<(String, Key)> = self
            .vfs
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(v) = self.vfs.remove(&k) {
                self.leave(lim, &k.1 .0, v, &held);
            }
        }
        self.ctls
            .retain(|pf, _| current.keys().any(|(p, _)| p == pf));
        if current.is_empty() {
            self.publish();
            return;
        }
        let tuning = c.tuning();
        let mut due: BTreeSet<String> = BTreeSet::new();
        for (k, h) in &current {
            if self.vfs.contains_key(k) {
                continue;
            }
            let r = &h.record;
            due.insert(r.pf.clone());
            let line = inv.pf(&r.pf).map_or(0, |(_, pf)| pf.line_rate_mbps);
            info!(pod_id = %h.pod.id, pod = %format!("{}/{}", h.pod.namespace, h.pod.name),
                  pool = %r.pool, pf = %r.pf, vf = r.vf, guaranteed_mbps = r.guaranteed_mbps,
                  limit_mbps = r.limit_mbps, "work-conserving controller steers this VF");
            self.vfs.insert(
                k.clone(),
                Vf {
                    pool: r.pool.clone(),
                    pf: r.pf.clone(),
                    vf: r.vf,
                    pod: format!("{}/{}", h.pod.namespace, h.pod.name),
                    guarantee: r.guaranteed_mbps,
                    limit: r.limit_mbps,
                    line,
                    meter: RateMeter::default(),
                    max: 0,
                    measured: None,
                    bare_since: Some(now),
                    touched: false,
                    failing: false,
                },
            );
        }
        if !sample {
            // Admission waits for this: no counters, only the PFs that gained a VF.
            for pf in &due {
                self.decide(cfg, lim, pf, now, false);
            }
            self.publish();
            return;
        }
        // Sample every VF's counter; note PFs where a lender is back or a bare VF got its rate.
        let at = now.duration_since(self.epoch).as_secs_f64();
        for (k, v) in self.vfs.iter_mut() {
            let (pf, vf) = (v.pf.clone(), v.vf);
            // A VF without a rate is watched for its runtime setting one, to decide at once.
            if v.max == 0 && lim.get(&pf, vf).is_ok_and(|r| r.max_mbps != 0) {
                due.insert(pf.clone());
            }
            match lim.counters(&pf, vf) {
                Ok(cn) => {
                    v.failing = false;
                    if let Some(rate) = v.meter.sample(at, cn.tx_bytes) {
                        if reclaim_due(rate, v.max, v.guarantee, &tuning) {
                            debug!(pod_id = %k.1 .0, pf = %pf, vf, rate_mbps = rate, max_mbps = v.max, "lender runs at its cap: taking the loan back now");
                            due.insert(pf.clone());
                        }
                    }
                }
                Err(e) => {
                    self.telemetry.errors.with_label_values(&["counters"]).inc();
                    if !v.failing {
                        warn!(pod_id = %k.1 .0, pf = %pf, vf, error = %e, "cannot read the VF's counters");
                        v.failing = true;
                    }
                }
            }
        }
        let regular = now >= self.next_decision;
        if regular {
            let every = Duration::from_millis(c.interval_ms);
            self.next_decision += every;
            if self.next_decision <= now {
                self.next_decision = now + every;
            }
        }
        let pfs: BTreeSet<String> = self.vfs.values().map(|v| v.pf.clone()).collect();
        for pf in pfs {
            if regular || due.contains(&pf) {
                self.decide(cfg, lim, &pf, now, !regular);
            }
        }
        self.publish();
    }

    /// Decides and applies one PF's maxima.
    fn decide(
        &mut self,
        cfg: &NodeConfig,
        lim: &dyn RateLimiter,
        pf: &str,
        now: Instant,
        early: bool,
    ) {
        let tuning = cfg.conserve.tuning();
        let keys: Vec<(String, Key)> = self
            .vfs
            .iter()
            .filter(|(_, v)| v.pf == pf)
            .map(|(k, _)| k.clone())
            .collect();
        let mut obs = Vec::with_capacity(keys.len());
        let mut line = 0;
        for k in &keys {
            let Some(v) = self.vfs.get_mut(k) else {
                continue;
            };
            let (pfn, vf) = (v.pf.clone(), v.vf);
            let read = lim.get(&pfn, vf);
            line = line.max(v.line);
            let measured = v.meter.take_peak();
            v.measured = measured.or(v.measured);
            let (current, pinned) = match read {
                Ok(r) => {
                    v.max = r.max_mbps;
                    if r.max_mbps == 0 {
                        let since = *v.bare_since.get_or_insert(now);
                        (0, now.duration_since(since) < PENDING)
                    } else {
                        v.bare_since = None;
                        (r.max_mbps, false)
                    }
                }
                Err(e) => {
                    self.telemetry.errors.with_label_values(&["get"]).inc();
                    if !v.failing {
                        warn!(pod_id = %k.1 .0, pf = %pfn, vf, error = %e, "cannot read the VF's rate; leaving it alone");
                        v.failing = true;
                    }
                    // Counted at its limit, the most it can have.
                    (v.limit.max(1), true)
                }
            };
            obs.push(Observation {
                key: k.1.clone(),
                guarantee_mbps: v.guarantee,
                limit_mbps: v.limit,
                current_max_mbps: current,
                measured_mbps: measured,
                pinned,
            });
        }
        let decisions = self
            .ctls
            .entry(pf.to_string())
            .or_insert_with(|| Controller::new(tuning));
        decisions.tuning = tuning;
        let decisions = decisions.step(line, &obs);
        if early {
            self.telemetry.reclaims.with_label_values(&[pf]).inc();
        }
        let mut decrease_failed = false;
        for d in decisions {
            let k = (pf.to_string(), d.key.clone());
            if !d.changed {
                continue;
            }
            let up = d.previous_max_mbps != 0 && d.rate.max_mbps > d.previous_max_mbps;
            if up && decrease_failed {
                // The sum would run over: raise nothing until the decreases go through.
                continue;
            }
            let result = lim.set(pf, d.key.1, d.rate);
            let Some(v) = self.vfs.get_mut(&k) else {
                continue;
            };
            match result {
                Ok(applied) => {
                    debug!(pod_id = %d.key.0, pf, vf = d.key.1, from_mbps = d.previous_max_mbps,
                           max_mbps = applied.applied.max_mbps, demand = ?d.demand, early, "VF max rate steered");
                    v.max = applied.applied.max_mbps;
                    v.touched = true;
                    self.telemetry.changes.with_label_values(&[pf]).inc();
                }
                Err(e) => {
                    decrease_failed |= !up;
                    self.telemetry.errors.with_label_values(&["set"]).inc();
                    if !v.failing {
                        warn!(pod_id = %d.key.0, pf, vf = d.key.1, error = %e, "cannot steer the VF's max rate");
                        v.failing = true;
                    }
                }
            }
        }
    }

    /// A VF the controller no longer steers: its pod left the ledger, or its pool (or the whole
    /// controller) was switched off.
    fn leave(&self, limiter: &dyn RateLimiter, pod_id: &str, v: Vf, held: &[Held]) {
        let still_held = held.iter().find(|h| h.pod.id == pod_id);
        info!(pod_id = %pod_id, pf = %v.pf, vf = v.vf, held = still_held.is_some(), "work-conserving controller lets go of this VF");
        if !v.touched {
            return;
        }
        let target = match still_held {
            // Switched off: back to the allocation's static rate.
            Some(h) => VfRate::new(h.record.guaranteed_mbps, h.record.limit_mbps),
            None => {
                if held
                    .iter()
                    .any(|h| h.record.pf == v.pf && h.record.vf == v.vf)
                {
                    // Another pod holds it now; its runtime sets its rate.
                    return;
                }
                VfRate::NONE
            }
        };
        match limiter.get(&v.pf, v.vf) {
            Ok(r) if r.max_mbps == target.max_mbps => {}
            // The runtime reset it already (pod gone): leave it.
            Ok(r) if r == VfRate::NONE && still_held.is_none() => {}
            _ => {
                if let Err(e) = limiter.set(&v.pf, v.vf, target) {
                    self.telemetry.errors.with_label_values(&["set"]).inc();
                    warn!(pod_id = %pod_id, pf = %v.pf, vf = v.vf, error = %e, "cannot hand the VF's rate back");
                } else {
                    info!(pod_id = %pod_id, pf = %v.pf, vf = v.vf, rate = %target, "VF rate handed back");
                }
            }
        }
    }

    fn publish(&self) {
        let rows = self
            .vfs
            .iter()
            .map(|((_, (pod_id, _)), v)| VfRow {
                pool: v.pool.clone(),
                pf: v.pf.clone(),
                vf: v.vf,
                pod_id: pod_id.clone(),
                pod: v.pod.clone(),
                guarantee: v.guarantee,
                limit: v.limit,
                max: v.max,
                measured: v.measured,
            })
            .collect();
        let pfs = self
            .vfs
            .values()
            .fold(BTreeMap::new(), |mut m: BTreeMap<String, PfRow>, v| {
                let row = m.entry(v.pf.clone()).or_insert_with(|| PfRow {
                    pool: v.pool.clone(),
                    line: v.line,
                    max_sum: 0,
                });
                row.max_sum += if v.max == 0 { v.line } else { v.max };
                m
            });
        let mut snap = self
            .telemetry
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        snap.vfs = rows;
        snap.pfs = pfs;
    }
}

#[derive(Debug, Clone)]
struct VfRow {
    pool: String,
    pf: String,
    vf: u32,
    pod_id: String,
    pod: String,
    guarantee: u64,
    limit: u64,
    max: u64,
    measured: Option<u64>,
}

#[derive(Debug, Clone)]
struct PfRow {
    pool: String,
    line: u64,
    max_sum: u64,
}

#[derive(Debug, Default)]
struct Snapshot {
    vfs: Vec<VfRow>,
    pfs: BTreeMap<String, PfRow>,
}

/// What the controller did, as Prometheus metrics. Gauges are filled from the controller's last
/// snapshot at scrape time, so VFs that left disappear; counters grow as things happen.
pub struct Telemetry {
    registry: Registry,
    snapshot: Mutex<Snapshot>,
    vf_gauges: [GaugeVec; 7],
    pf_gauges: [GaugeVec; 2],
    changes: IntCounterVec,
    reclaims: IntCounterVec,
    errors: IntCounterVec,
}

const NS: &str = "conrdma_conserve";

impl Telemetry {
    fn new() -> prometheus::Result<Telemetry> {
        let registry = Registry::new();
        let vf_labels = &["pool", "pf", "vf", "pod_id", "pod"];
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help).namespace(NS), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let vf_gauges = [
            gauge(
                "vf_max_mbps",
                "max_tx_rate now in force on the VF, Mbps (0: none).",
                vf_labels,
            )?,
            gauge(
                "vf_guarantee_mbps",
                "The pod's guaranteed bandwidth, Mbps.",
                vf_labels,
            )?,
            gauge(
                "vf_limit_mbps",
                "The pod's bandwidth limit, Mbps.",
                vf_labels,
            )?,
            gauge(
                "vf_measured_mbps",
                "Peak transmit rate over the last decision's sample windows, Mbps.",
                vf_labels,
            )?,
            gauge(
                "vf_borrowed_mbps",
                "How far the VF's max is above its guarantee (bandwidth on loan to it), Mbps.",
                vf_labels,
            )?,
            gauge(
                "vf_lent_mbps",
                "How much of the VF's guarantee is lent to others, Mbps.",
                vf_labels,
            )?,
            gauge(
                "vf_steered",
                "1 for each VF the controller steers.",
                vf_labels,
            )?,
        ];
        let pf_gauges = [
            gauge(
                "pf_line_mbps",
                "Line rate of a PF with steered VFs, Mbps.",
                &["pool", "pf"],
            )?,
            gauge(
                "pf_max_sum_mbps",
                "Sum of the max rates of its steered VFs (a VF without one counts at the line rate), Mbps.",
                &["pool", "pf"],
            )?,
        ];
        Ok(Telemetry {
            changes: counter(
                "rate_changes_total",
                "Max rates the controller changed.",
                &["pf"],
            )?,
            reclaims: counter(
                "early_decisions_total",
                "Decisions taken before the interval was up because a lender ran at its cap.",
                &["pf"],
            )?,
            errors: counter(
                "limiter_errors_total",
                "Failed limiter calls, by operation.",
                &["op"],
            )?,
            vf_gauges,
            pf_gauges,
            snapshot: Mutex::new(Snapshot::default()),
            registry,
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        for g in self.vf_gauges.iter().chain(&self.pf_gauges) {
            g.reset();
        }
        for r in &snap.vfs {
            let vf = r.vf.to_string();
            let labels = [
                r.pool.as_str(),
                r.pf.as_str(),
                vf.as_str(),
                r.pod_id.as_str(),
                r.pod.as_str(),
            ];
            let values = [
                r.max,
                r.guarantee,
                r.limit,
                r.measured.unwrap_or(0),
                r.max.saturating_sub(r.guarantee),
                if r.max == 0 {
                    0
                } else {
                    r.guarantee.saturating_sub(r.max)
                },
                1,
            ];
            for (g, v) in self.vf_gauges.iter().zip(values) {
                g.with_label_values(&labels).set(v as f64);
            }
        }
        for (pf, r) in &snap.pfs {
            let labels = [r.pool.as_str(), pf.as_str()];
            self.pf_gauges[0]
                .with_label_values(&labels)
                .set(r.line as f64);
            self.pf_gauges[1]
                .with_label_values(&labels)
                .set(r.max_sum as f64);
        }
        drop(snap);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Binds `addr` for `/metrics` (fails at once, so a taken port stops the daemon's start). Needs
/// the tokio runtime's context, as for any tokio socket.
pub fn bind_metrics(addr: SocketAddr) -> Result<tokio::net::TcpListener, PluginError> {
    let fail =
        |e: std::io::Error| PluginError::Setup(format!("cannot listen for metrics on {addr}: {e}"));
    // Bound synchronously: NRI Configure, which binds it in pre-launched mode, is not async.
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    tokio::net::TcpListener::from_std(listener).map_err(fail)
}

/// Serves `GET /metrics` on `listener` in the background.
pub fn serve_metrics(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let t = telemetry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    t.render(),
                )
            }
        }),
    );
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics at /metrics");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use conrdma_api::{AllocationRecord, Request};
    use conrdma_node::ledger::PodRef;
    use conrdma_node::limiter::SimulatedLimiter;
    use conrdma_node::simulate::{build, SimOptions};

    use super::*;

    struct Bench {
        _dir: tempfile::TempDir,
        root: PathBuf,
        node: Arc<NodeState>,
        lim: SimulatedLimiter,
        ctl: Loop,
        t0: Instant,
        step: u32,
        bytes: HashMap<u32, u64>,
    }

    const CFG: &str = "[conserve]\nenabled = true\ninterval_ms = 1000\nlimiter = \"simulated\"\n";

    impl Bench {
        fn new(cfg: &str) -> Bench {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("nic");
            build(
                &root,
                &SimOptions {
                    pfs: 1,
                    vfs_per_pf: 4,
                    ..Default::default()
                },
            )
            .unwrap();
            let cfg = NodeConfig::from_toml(cfg, "test").unwrap();
            let node = Arc::new(NodeState::open(&root, &dir.path().join("state"), cfg).unwrap());
            let ctl = Loop::new(
                node.clone(),
                root.clone(),
                Arc::new(Telemetry::new().unwrap()),
            );
            Bench {
                lim: SimulatedLimiter::new(&root),
                _dir: dir,
                root,
                node,
                ctl,
                t0: Instant::now(),
                step: 0,
                bytes: HashMap::new(),
            }
        }

        /// Admits a pod of 50G guaranteed, 100G limit and sets its rate as the shim does.
        fn pod(&self, name: &str) -> AllocationRecord {
            let r = admit(&self.node, name, "50G");
            self.lim.set(&r.pf, r.vf, r.start_rate()).unwrap();
            r
        }

        /// One sample window (250 ms) in which `busy` VFs send at their cap.
        fn tick(&mut self, busy: &[u32]) {
            for &vf in busy {
                let cap = self.lim.get("ens1f0", vf).unwrap().max_mbps;
                let b = self.bytes.entry(vf).or_default();
                *b += cap * 1_000_000 / 8 / 4;
                std::fs::write(
                    self.lim.vf_dir("ens1f0", vf).join("stats"),
                    format!("tx_bytes: {b}\n"),
                )
                .unwrap();
            }
            self.step += 1;
            let now = self.t0 + Duration::from_millis(250) * self.step;
            let cfg = self.node.config();
            let lim = SimulatedLimiter::new(&self.root);
            self.ctl.tick(&cfg, &lim, now, true);
        }

        fn max(&self, vf: u32) -> u64 {
            self.lim.get("ens1f0", vf).unwrap().max_mbps
        }
    }

    /// Admits a pod with this guarantee and a 100G limit, as CreateContainer does.
    fn admit(node: &NodeState, name: &str, guarantee: &str) -> AllocationRecord {
        let ann: HashMap<String, String> = [
            ("rdma.conrdma.io/bandwidth", guarantee),
            ("rdma.conrdma.io/bandwidth-limit", "100G"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let req = Request::from_annotations(&ann).unwrap().unwrap();
        let pod = PodRef {
            id: format!("id-{name}"),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            name: name.into(),
        };
        node.grant(&pod, &req, "conrdma", None).unwrap().record
    }

    fn sum(b: &Bench) -> u64 {
        (0..4).map(|v| b.max(v)).sum()
    }

    #[test]
    fn lends_takes_back_and_hands_rates_back_when_switched_off() {
        let mut b = Bench::new(CFG);
        let a = b.pod("a");
        let c = b.pod("c");
        for _ in 0..16 {
            b.tick(&[a.vf]);
        }
        assert_eq!((b.max(a.vf), b.max(c.vf)), (99_900, 100));
        assert!(sum(&b) <= 100_000);
        let text = b.ctl.telemetry.render();
        assert!(text.contains("conrdma_conserve_vf_lent_mbps{pf=\"ens1f0\",pod=\"default/c\",pod_id=\"id-c\",pool=\"default\",vf=\"1\"} 49900"), "{text}");
        // c wakes up: taken back at the next sample window, well before the interval is up.
        b.tick(&[a.vf, c.vf]);
        assert_eq!((b.max(a.vf), b.max(c.vf)), (50_000, 50_000));
        let text = b.ctl.telemetry.render();
        assert!(
            text.contains("conrdma_conserve_early_decisions_total{pf=\"ens1f0\"} 1"),
            "{text}"
        );
        // Switched off: both get their allocation's rate back and are left alone.
        b.tick(&[a.vf]);
        b.tick(&[a.vf]);
        let mut cfg = (*b.node.config()).clone();
        cfg.conserve.enabled = false;
        b.node.set_config(cfg).unwrap();
        b.tick(&[a.vf]);
        assert_eq!(
            b.lim.get("ens1f0", a.vf).unwrap(),
            VfRate::new(50_000, 100_000)
        );
        assert_eq!(
            b.lim.get("ens1f0", c.vf).unwrap(),
            VfRate::new(50_000, 100_000)
        );
        assert!(b.ctl.vfs.is_empty());
        assert!(!b.ctl.telemetry.render().contains("vf_max_mbps{"));
    }

    #[test]
    fn a_new_pod_finds_room_for_its_start_maximum_before_admission_answers() {
        let mut b = Bench::new(CFG);
        let a = admit(&b.node, "a", "30G");
        let c = admit(&b.node, "c", "30G");
        for r in [&a, &c] {
            assert_eq!(
                r.start_max_mbps,
                Some(30_000),
                "steered: starts at its guarantee"
            );
            b.lim.set(&r.pf, r.vf, r.start_rate()).unwrap();
        }
        for _ in 0..16 {
            b.tick(&[a.vf]);
        }
        assert_eq!((b.max(a.vf), b.max(c.vf)), (99_900, 100));
        // As the controller thread does when it starts: from now on admissions wait for it.
        b.node.steering.attach();
        let node = b.node.clone();
        let booking = std::thread::spawn(move || admit(&node, "d", "30G"));
        let mut rounds = 0;
        while !booking.is_finished() {
            assert!(rounds < 100, "admission was never answered");
            b.tick(&[a.vf]);
            rounds += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let d = booking.join().unwrap();
        assert_eq!(
            b.lim.get(&d.pf, d.vf).unwrap(),
            VfRate::NONE,
            "the runtime writes the first rate"
        );
        assert_eq!(
            b.max(a.vf),
            69_900,
            "a's loan came down before admission answered"
        );
        // What the runtime writes now fits within the line.
        b.lim.set(&d.pf, d.vf, d.start_rate()).unwrap();
        assert_eq!(b.max(d.vf), 30_000);
        assert!(sum(&b) <= 100_000, "sum of maxima {}", sum(&b));
    }

    #[test]
    fn a_released_vf_is_reset_and_a_bare_one_left_to_its_runtime() {
        let mut b = Bench::new(CFG);
        let a = b.pod("a");
        let c = b.pod("c");
        for _ in 0..16 {
            b.tick(&[a.vf]);
        }
        assert_eq!(b.max(c.vf), 100);
        // The runtime reset c's VF (sandbox gone) before the ledger let go of it: left alone.
        b.lim.reset("ens1f0", c.vf).unwrap();
        for _ in 0..8 {
            b.tick(&[a.vf]);
        }
        assert_eq!(b.lim.get("ens1f0", c.vf).unwrap(), VfRate::NONE);
        assert_eq!(b.max(a.vf), 50_000, "c counted at its guarantee while bare");
        // Released with a rate the controller left on it (e.g. set just after the runtime's
        // reset): reset.
        b.lim.set("ens1f0", c.vf, VfRate::new(100, 100)).unwrap();
        b.node.release("id-c").unwrap();
        b.tick(&[a.vf]);
        assert_eq!(b.lim.get("ens1f0", c.vf).unwrap(), VfRate::NONE);
        for _ in 0..4 {
            b.tick(&[a.vf]);
        }
        assert_eq!(b.max(a.vf), 100_000, "alone on the PF: up to its limit");
        assert_eq!(b.lim.get("ens1f0", c.vf).unwrap(), VfRate::NONE);
    }

    #[test]
    fn only_enabled_pools_are_steered() {
        let mut b = Bench::new(
            "[[pool]]\nname = \"gold\"\npfs = [\"ens9f9\"]\n[conserve]\nenabled = true\nlimiter = \"simulated\"\npools = [\"gold\"]\n",
        );
        let a = b.pod("a");
        let c = b.pod("c");
        for _ in 0..16 {
            b.tick(&[a.vf]);
        }
        assert_eq!(
            b.lim.get("ens1f0", a.vf).unwrap(),
            VfRate::new(50_000, 100_000)
        );
        assert_eq!(
            b.lim.get("ens1f0", c.vf).unwrap(),
            VfRate::new(50_000, 100_000)
        );
        assert!(b.ctl.vfs.is_empty());
    }
}
