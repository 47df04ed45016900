//! The control loop: follows the ledger, samples counters, decides per PF and applies the
//! decisions through the node's limiter of the configured kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conrdma_api::conserve::{reclaim_due, Controller, Observation, RateMeter};
use conrdma_node::ledger::Held;
use conrdma_node::limiter::{RateLimiter, VfRate};
use conrdma_node::NodeConfig;
use tracing::{debug, info, warn};

use super::telemetry::{PfRow, Telemetry, VfRow};
use super::{VfKey, PENDING};
use crate::node::NodeState;

/// Counter samples per interval.
const SAMPLES: u32 = 4;
/// How often a switched-off controller looks at the config again.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Why a PF is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The interval is up.
    Regular,
    /// Before the interval: a lender is back at its cap, or a bare VF got its rate.
    Early,
    /// An admission waits for room for its new VF's start maximum.
    Admission,
}

/// What the controller keeps of one steered VF (its PF, index and pod are its [`VfKey`]).
struct Vf {
    pool: String,
    /// `namespace/name` of the pod, for metrics.
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

pub(super) struct Loop {
    node: Arc<NodeState>,
    telemetry: Arc<Telemetry>,
    vfs: BTreeMap<VfKey, Vf>,
    /// VFs no longer steered whose rate is still to be handed back (on the sampling cadence).
    leaving: Vec<(VfKey, Vf)>,
    /// One controller per PF with steered VFs.
    ctls: BTreeMap<String, Controller<VfKey>>,
    epoch: Instant,
    next_decision: Instant,
}

impl Loop {
    pub(super) fn new(node: Arc<NodeState>, telemetry: Arc<Telemetry>) -> Loop {
        let now = Instant::now();
        Loop {
            node,
            telemetry,
            vfs: BTreeMap::new(),
            leaving: Vec::new(),
            ctls: BTreeMap::new(),
            epoch: now,
            next_decision: now,
        }
    }

    pub(super) fn run(mut self) {
        self.node.steering.attach();
        let mut was_on = false;
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
                    limiter = %cfg.conserve_limiter(),
                    "work-conserving controller {}",
                    if c.enabled { "on" } else { "off" }
                );
                was_on = c.enabled;
            }
            let started = Instant::now();
            // Admissions wake the loop between samples; the sampling cadence stays the same.
            let sample = started >= next_sample;
            self.tick(&cfg, started, sample);
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

    /// One sampling round, which answers the admissions that asked for a decision before it began.
    /// `sample`: a round of the regular cadence, which reads every VF's counters; otherwise an
    /// admission woke the controller and only PFs with new VFs are decided. The limiter is the
    /// node's of the kind the config names now, so a Configure that switches it takes effect here.
    fn tick(&mut self, cfg: &NodeConfig, now: Instant, sample: bool) {
        let lim = self.node.limiter(cfg.conserve_limiter());
        let ticket = self.node.steering.begin();
        self.round(cfg, lim.as_ref(), now, sample);
        self.node.steering.finish(ticket);
    }

    /// Follows the ledger, reads counters, decides where due: every interval, and at once on a
    /// PF with a new VF (to make room for its start maximum) or a lender back at its cap.
    fn round(&mut self, cfg: &NodeConfig, lim: &dyn RateLimiter, now: Instant, sample: bool) {
        let c = &cfg.conserve;
        if !c.enabled && self.vfs.is_empty() && self.leaving.is_empty() {
            return;
        }
        let held = self.node.held();
        let inv = self.node.inventory();
        let mut current: BTreeMap<VfKey, &Held> = BTreeMap::new();
        if c.enabled {
            for h in &held {
                let r = &h.record;
                if c.controls(&r.pool) && inv.pf(&r.pf).is_some() {
                    let key = VfKey {
                        pf: r.pf.clone(),
                        pod_id: h.pod.id.clone(),
                        vf: r.vf,
                    };
                    current.insert(key, h);
                }
            }
        }
        let gone: Vec<VfKey> = self
            .vfs
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(v) = self.vfs.remove(&k) {
                self.leaving.push((k, v));
            }
        }
        if sample {
            // Out of every decision from now on; handing their rates back is limiter I/O per VF
            // (a whole PF's worth after a drain), so it waits for the sampling cadence instead
            // of holding up an admission. A VF steered again in the meantime is left alone.
            for (k, v) in std::mem::take(&mut self.leaving) {
                if !current.contains_key(&k) {
                    self.leave(lim, &k, v, &held);
                }
            }
        }
        self.ctls
            .retain(|pf, _| current.keys().any(|k| &k.pf == pf));
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
                self.decide(cfg, lim, pf, now, Round::Admission);
            }
            self.publish();
            return;
        }
        // Sample every VF's counter; note PFs where a lender is back or a bare VF got its rate.
        let at = now.duration_since(self.epoch).as_secs_f64();
        for (k, v) in self.vfs.iter_mut() {
            let (pf, vf) = (&k.pf, k.vf);
            // A VF without a rate is watched for its runtime setting one, to decide at once.
            if v.max == 0 && lim.get(pf, vf).is_ok_and(|r| r.max_mbps != 0) {
                due.insert(pf.clone());
            }
            match lim.counters(pf, vf) {
                Ok(cn) => {
                    v.failing = false;
                    if let Some(rate) = v.meter.sample(at, cn.tx_bytes) {
                        if reclaim_due(rate, v.max, v.guarantee, &tuning) {
                            debug!(pod_id = %k.pod_id, pf = %pf, vf, rate_mbps = rate, max_mbps = v.max, "lender runs at its cap: taking the loan back now");
                            due.insert(pf.clone());
                        }
                    }
                }
                Err(e) => {
                    self.telemetry.failed("counters");
                    if !v.failing {
                        warn!(pod_id = %k.pod_id, pf = %pf, vf, error = %e, "cannot read the VF's counters");
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
        let pfs: BTreeSet<String> = self.vfs.keys().map(|k| k.pf.clone()).collect();
        for pf in pfs {
            if regular || due.contains(&pf) {
                let round = if regular {
                    Round::Regular
                } else {
                    Round::Early
                };
                self.decide(cfg, lim, &pf, now, round);
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
        round: Round,
    ) {
        let early = round == Round::Early;
        let tuning = cfg.conserve.tuning();
        let mut obs = Vec::new();
        let mut line = 0;
        for (k, v) in self.vfs.iter_mut().filter(|(k, _)| k.pf == pf) {
            // An admission waits for this round: it reads only VFs without a known rate (the new
            // one, and any whose runtime may have set its start rate since) and trusts what it
            // last set on the others. A runtime's later reset of one of those (its pod leaving)
            // makes the VF unlimited whatever is decided, and the sampling rounds read all.
            let read = if round == Round::Admission && v.max != 0 {
                Ok(VfRate::new(0, v.max))
            } else {
                lim.get(&k.pf, k.vf)
            };
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
                    self.telemetry.failed("get");
                    if !v.failing {
                        warn!(pod_id = %k.pod_id, pf = %k.pf, vf = k.vf, error = %e, "cannot read the VF's rate; leaving it alone");
                        v.failing = true;
                    }
                    // Counted at its limit, the most it can have.
                    (v.limit.max(1), true)
                }
            };
            obs.push(Observation {
                key: k.clone(),
                guarantee_mbps: v.guarantee,
                limit_mbps: v.limit,
                current_max_mbps: current,
                measured_mbps: measured,
                pinned,
            });
        }
        let ctl = self
            .ctls
            .entry(pf.to_string())
            .or_insert_with(|| Controller::new(tuning));
        ctl.tuning = tuning;
        let decisions = ctl.step(line, &obs);
        if early {
            self.telemetry.early(pf);
        }
        let mut decrease_failed = false;
        for d in decisions {
            if !d.changed {
                continue;
            }
            let up = d.previous_max_mbps != 0 && d.rate.max_mbps > d.previous_max_mbps;
            if up && decrease_failed {
                // The sum would run over: raise nothing until the decreases go through.
                continue;
            }
            let k = &d.key;
            let result = lim.set(pf, k.vf, d.rate);
            let Some(v) = self.vfs.get_mut(k) else {
                continue;
            };
            match result {
                Ok(applied) => {
                    debug!(pod_id = %k.pod_id, pf, vf = k.vf, from_mbps = d.previous_max_mbps,
                           max_mbps = applied.applied.max_mbps, demand = ?d.demand, early, "VF max rate steered");
                    v.max = applied.applied.max_mbps;
                    v.touched = true;
                    self.telemetry.changed(pf);
                }
                Err(e) => {
                    decrease_failed |= !up;
                    self.telemetry.failed("set");
                    if !v.failing {
                        warn!(pod_id = %k.pod_id, pf, vf = k.vf, error = %e, "cannot steer the VF's max rate");
                        v.failing = true;
                    }
                }
            }
        }
    }

    /// A VF the controller no longer steers: its pod left the ledger, or its pool (or the whole
    /// controller) was switched off.
    fn leave(&self, limiter: &dyn RateLimiter, k: &VfKey, v: Vf, held: &[Held]) {
        let (pod_id, pf, vf) = (k.pod_id.as_str(), k.pf.as_str(), k.vf);
        let still_held = held.iter().find(|h| h.pod.id == pod_id);
        info!(pod_id = %pod_id, pf = %pf, vf, held = still_held.is_some(), "work-conserving controller lets go of this VF");
        if !v.touched {
            return;
        }
        let target = match still_held {
            // Switched off: back to the allocation's static rate.
            Some(h) => VfRate::new(h.record.guaranteed_mbps, h.record.limit_mbps),
            None => {
                if held.iter().any(|h| h.record.pf == pf && h.record.vf == vf) {
                    // Another pod holds it now; its runtime sets its rate.
                    return;
                }
                VfRate::NONE
            }
        };
        match limiter.get(pf, vf) {
            Ok(r) if r.max_mbps == target.max_mbps => {}
            // The runtime reset it already (pod gone): leave it.
            Ok(r) if r == VfRate::NONE && still_held.is_none() => {}
            _ => {
                if let Err(e) = limiter.set(pf, vf, target) {
                    self.telemetry.failed("set");
                    warn!(pod_id = %pod_id, pf = %pf, vf, error = %e, "cannot hand the VF's rate back");
                } else {
                    info!(pod_id = %pod_id, pf = %pf, vf, rate = %target, "VF rate handed back");
                }
            }
        }
    }

    /// Hands the telemetry what the round left: every steered VF and, per PF, its line and
    /// sum of maxima.
    fn publish(&self) {
        let rows = self
            .vfs
            .iter()
            .map(|(k, v)| VfRow {
                pool: v.pool.clone(),
                pf: k.pf.clone(),
                vf: k.vf,
                pod_id: k.pod_id.clone(),
                pod: v.pod.clone(),
                guarantee: v.guarantee,
                limit: v.limit,
                max: v.max,
                measured: v.measured,
            })
            .collect();
        let mut pfs: BTreeMap<String, PfRow> = BTreeMap::new();
        for (k, v) in &self.vfs {
            let row = pfs.entry(k.pf.clone()).or_insert_with(|| PfRow {
                pool: v.pool.clone(),
                line: v.line,
                max_sum: 0,
            });
            row.max_sum += if v.max == 0 { v.line } else { v.max };
        }
        self.telemetry.publish(rows, pfs);
    }
}
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Mutex;

    use conrdma_api::{AllocationRecord, Request};
    use conrdma_node::ledger::PodRef;
    use conrdma_node::limiter::{Applied, SimulatedLimiter, VfCounters};
    use conrdma_node::simulate::{build, SimOptions};

    use super::*;

    struct Bench {
        _dir: tempfile::TempDir,
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
            Bench::with_limiter(cfg, |_| None)
        }

        /// A bench whose node uses the limiter `given` returns for the NIC's root, if any.
        fn with_limiter(
            cfg: &str,
            given: impl FnOnce(&Path) -> Option<Arc<dyn RateLimiter>>,
        ) -> Bench {
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
            let mut node = NodeState::open(&root, &dir.path().join("state"), cfg).unwrap();
            if let Some(limiter) = given(&root) {
                node = node.with_limiter(limiter);
            }
            let node = Arc::new(node);
            let ctl = Loop::new(node.clone(), Arc::new(Telemetry::new().unwrap()));
            Bench {
                lim: SimulatedLimiter::new(&root),
                _dir: dir,
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
            self.ctl.tick(&cfg, now, true);
        }

        /// Admits pods a and c and runs 16 sample windows (four intervals) with only a sending.
        fn a_busy_c_idle(&mut self) -> (AllocationRecord, AllocationRecord) {
            let a = self.pod("a");
            let c = self.pod("c");
            for _ in 0..16 {
                self.tick(&[a.vf]);
            }
            (a, c)
        }

        fn max(&self, vf: u32) -> u64 {
            self.lim.get("ens1f0", vf).unwrap().max_mbps
        }

        /// Both VFs have their allocation's static rate (50G guaranteed, 100G limit) and the
        /// controller has let go of them.
        fn assert_static(&self, vfs: [u32; 2]) {
            for vf in vfs {
                assert_eq!(
                    self.lim.get("ens1f0", vf).unwrap(),
                    VfRate::new(50_000, 100_000),
                    "vf {vf}"
                );
            }
            assert!(self.ctl.vfs.is_empty());
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
        let (a, c) = b.a_busy_c_idle();
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
        b.assert_static([a.vf, c.vf]);
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
        let (a, c) = b.a_busy_c_idle();
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
        let (a, c) = b.a_busy_c_idle();
        b.assert_static([a.vf, c.vf]);
    }

    /// A limiter that records every rate set and passes all calls on to the simulated NIC.
    struct Recording {
        nic: SimulatedLimiter,
        sets: Mutex<Vec<(String, u32, VfRate)>>,
    }

    impl RateLimiter for Recording {
        fn kind(&self) -> &'static str {
            "recording"
        }

        fn set(&self, pf: &str, vf: u32, rate: VfRate) -> conrdma_node::Result<Applied> {
            self.sets.lock().unwrap().push((pf.to_string(), vf, rate));
            self.nic.set(pf, vf, rate)
        }

        fn get(&self, pf: &str, vf: u32) -> conrdma_node::Result<VfRate> {
            self.nic.get(pf, vf)
        }

        fn counters(&self, pf: &str, vf: u32) -> conrdma_node::Result<VfCounters> {
            self.nic.counters(pf, vf)
        }
    }

    #[test]
    fn decisions_go_through_the_limiter_the_node_was_given() {
        // Netlink as configured: the controller reaches the simulated NIC only through the
        // limiter injected into the node (a netlink one would find no PF ens1f0).
        let cfg = "[conserve]\nenabled = true\ninterval_ms = 1000\nlimiter = \"netlink\"\n";
        let mut rec = None;
        let mut b = Bench::with_limiter(cfg, |root| {
            let r = Arc::new(Recording {
                nic: SimulatedLimiter::new(root),
                sets: Mutex::new(Vec::new()),
            });
            rec = Some(r.clone());
            Some(r as Arc<dyn RateLimiter>)
        });
        let rec = rec.unwrap();
        // The runtime's start rates (written by the bench) go straight to the NIC: not recorded.
        let (a, c) = b.a_busy_c_idle();
        assert_eq!((b.max(a.vf), b.max(c.vf)), (99_900, 100));
        let sets = rec.sets.lock().unwrap().clone();
        let last = |vf: u32| {
            sets.iter()
                .rev()
                .find(|(pf, v, _)| pf == "ens1f0" && *v == vf)
                .map(|(_, _, r)| r.max_mbps)
        };
        assert_eq!(
            (last(a.vf), last(c.vf)),
            (Some(99_900), Some(100)),
            "{sets:?}"
        );
    }
}
