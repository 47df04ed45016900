//! Work-conserving bandwidth: lend idle guaranteed bandwidth to VFs that want more, take it back
//! within one interval, and never let a PF's maximum rates add up to more than it can carry.
//!
//! Most drivers refuse `min_tx_rate`, so a guarantee can only be kept by steering every VF's
//! `max_tx_rate`. Each interval the controller looks at what each VF sent and decides new maxima:
//!
//! 1. **Demand** ([`estimate`]): a VF that ran below `saturation` x its cap wanted what it sent;
//!    one that ran at its cap wants more than it got (how much more cannot be seen, so up to its
//!    limit). [`want`] adds room so a VF can grow between intervals: 10% of its rate, or `spread`
//!    times its typical change from one interval to the next (its jitter), whichever is more.
//! 2. **Reserve**: every VF first gets its guarantee, or, when it has wanted less than its guarantee
//!    for `lend_after` intervals in a row, only what it wants: the rest of its guarantee is lent.
//! 3. **Lending**: what is left of `line x headroom` goes to VFs that want more, max-min fairly on
//!    their totals with the reserves as floors ([`water_fill`]), each up to its own limit.
//! 4. **Giving back**: spare capacity first restores lenders to their guarantee (so a lender whose
//!    demand returns finds it there whenever nobody needed the loan), then raises every VF toward
//!    its limit, max-min fairly, so growth does not wait for the next interval.
//!
//! A lender whose demand returns runs at its lowered cap, which the next interval sees as "at its
//! cap": its want jumps to its limit and its reserve to its guarantee, so the loan is taken back in
//! that one step. Max-min fairness (rather than lending in proportion to guarantees) is used because
//! a guarantee is a floor, not a weight: weighting would give a best-effort VF (guarantee 0) nothing
//! and let the largest guarantee take most of every loan.
//!
//! [`plan`] is a pure function of the PF's line rate and each VF's figures; [`Controller`] adds the
//! little state kept between intervals (how long each VF has been quiet) and is what the node
//! daemon and the `conrdma-sim` simulator both run.

use std::collections::BTreeMap;

use crate::vf::VfRate;

/// Knobs of the controller. [`Tuning::default`] is what the node daemon runs unless configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// The sum of a PF's maxima stays at or below line rate x `headroom`, in (0, 1].
    pub headroom: f64,
    /// A VF that sent at least this fraction of its cap is taken to want more.
    pub saturation: f64,
    /// Relative room added to a measured demand.
    pub margin: f64,
    /// Room added to a measured demand in multiples of the VF's jitter (the moving average of how
    /// much its rate changes from one interval to the next while it runs below its cap).
    pub spread: f64,
    /// The smallest maximum ever set (0 would mean "no limit" to the kernel), and the least room
    /// added to a measured demand.
    pub floor_mbps: u64,
    /// Changes smaller than this fraction of the PF's capacity are not made (keeps the hardware
    /// quiet), unless the sum or a guarantee needs them.
    pub deadband: f64,
    /// Intervals a VF must want less than its guarantee before the difference is lent.
    pub lend_after: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            headroom: 1.0,
            saturation: 0.95,
            margin: 0.10,
            spread: 4.0,
            floor_mbps: 100,
            deadband: 0.005,
            lend_after: 2,
        }
    }
}

impl Tuning {
    /// The most the maxima on a PF of this line rate may add up to.
    pub fn capacity(&self, line_mbps: u64) -> u64 {
        (line_mbps as f64 * self.headroom.clamp(0.0, 1.0)).floor() as u64
    }

    fn deadband_mbps(&self, capacity: u64) -> u64 {
        (capacity as f64 * self.deadband.max(0.0)) as u64
    }
}

/// What one interval's measurement says about a VF's demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Nothing measured yet (a VF just seen, or its counters went backwards).
    Unknown,
    /// It sent this many Mbps, below its cap: that is what it wanted.
    Measured(u64),
    /// It sent this many Mbps, at its cap: it wants more than it was given.
    AtCap(u64),
}

impl Demand {
    /// The measured rate, if any.
    pub fn measured_mbps(&self) -> Option<u64> {
        match *self {
            Demand::Unknown => None,
            Demand::Measured(m) | Demand::AtCap(m) => Some(m),
        }
    }
}

/// Classifies a measured rate against the cap that was in force while it was measured (0 = none,
/// i.e. the line rate).
pub fn estimate(measured_mbps: Option<u64>, cap_mbps: u64, line_mbps: u64, t: &Tuning) -> Demand {
    let Some(m) = measured_mbps else {
        return Demand::Unknown;
    };
    let cap = if cap_mbps == 0 {
        line_mbps
    } else {
        cap_mbps.min(line_mbps.max(1))
    };
    if m as f64 >= t.saturation * cap as f64 {
        Demand::AtCap(m)
    } else {
        Demand::Measured(m)
    }
}

/// A VF's guarantee and limit as the controller uses them: the limit is at least the guarantee and
/// at most the PF's capacity, and both are at least 1 Mbps apart from a zero guarantee.
fn bounds(guarantee: u64, limit: u64, capacity: u64) -> (u64, u64) {
    let l = limit.max(guarantee).min(capacity).max(1);
    (guarantee.min(l), l)
}

/// The rate the controller aims to let a VF send next interval: its measured demand plus room
/// (`margin` of it, `spread` x its jitter, at least the floor), its limit when it ran at its cap,
/// its guarantee while nothing is known yet.
pub fn want(
    demand: Demand,
    guarantee: u64,
    limit: u64,
    capacity: u64,
    jitter_mbps: u64,
    t: &Tuning,
) -> u64 {
    let (g, l) = bounds(guarantee, limit, capacity);
    let floor = t.floor_mbps.max(1).min(l);
    let w = match demand {
        Demand::Unknown => g.max(floor),
        Demand::Measured(m) => {
            let room = (m as f64 * t.margin.max(0.0))
                .max(jitter_mbps as f64 * t.spread.max(0.0))
                .ceil() as u64;
            m.saturating_add(room.max(floor))
        }
        Demand::AtCap(_) => l,
    };
    w.clamp(floor, l)
}

/// One VF as [`plan`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfInput {
    pub guarantee_mbps: u64,
    pub limit_mbps: u64,
    pub demand: Demand,
    /// How much its rate typically changes from one interval to the next, Mbps.
    pub jitter_mbps: u64,
    /// Intervals in a row this VF has wanted less than its guarantee.
    pub quiet: u32,
    /// The maximum in force now (0 = none).
    pub current_max_mbps: u64,
    /// Not the controller's to change: counted in the PF's sum at its current maximum (at its
    /// guarantee, at least 1 Mbps, when it has none: a VF whose runtime has not set its rate yet
    /// and will set the allocation's start maximum) and left alone.
    pub pinned: bool,
}

/// What [`plan`] decided for one VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfPlan {
    /// The new maximum; never 0 for a controlled VF.
    pub max_mbps: u64,
    /// `min(guarantee, max)`: a minimum above the maximum is refused by every driver.
    pub min_mbps: u64,
    /// What the VF was estimated to want.
    pub want_mbps: u64,
    /// The maximum differs from the one in force.
    pub changed: bool,
}

impl VfPlan {
    pub fn rate(&self) -> VfRate {
        VfRate::new(self.min_mbps, self.max_mbps)
    }
}

/// Raises `alloc` toward `target` (element-wise, never lowering), spending at most `budget`,
/// max-min fairly on the totals: the result is `max(alloc, min(target, level))` for the highest
/// level the budget pays for, with what is left over handed out 1 Mbps at a time in index order.
/// Returns the unspent budget.
pub fn water_fill(budget: u64, alloc: &mut [u64], target: &[u64]) -> u64 {
    let cost = |level: u64, alloc: &[u64]| -> u64 {
        alloc
            .iter()
            .zip(target)
            .map(|(&a, &t)| t.min(level).saturating_sub(a))
            .sum()
    };
    let top = target.iter().copied().max().unwrap_or(0);
    if cost(top, alloc) <= budget {
        let spent = cost(top, alloc);
        for (a, &t) in alloc.iter_mut().zip(target) {
            *a = (*a).max(t);
        }
        return budget - spent;
    }
    // The highest level whose cost fits: cost is monotone in the level.
    let (mut lo, mut hi) = (0u64, top);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if cost(mid, alloc) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut left = budget - cost(lo, alloc);
    for (a, &t) in alloc.iter_mut().zip(target) {
        *a = (*a).max(t.min(lo));
    }
    // Those at the level that could go higher each get one more, until the budget is spent
    // (fewer of them than the budget, or the level would have been higher).
    for (a, &t) in alloc.iter_mut().zip(target) {
        if left == 0 {
            break;
        }
        if *a == lo && t > lo {
            *a += 1;
            left -= 1;
        }
    }
    left
}

/// The maximum a steered VF starts at, before the controller has seen it send: its guarantee,
/// at least 1 Mbps (0 would mean no limit). Admission records it; [`plan`] counts a VF whose
/// runtime has not written it yet at this.
pub fn start_max_mbps(guarantee_mbps: u64) -> u64 {
    guarantee_mbps.max(1)
}

/// The maxima for one PF's VFs, in input order (pinned VFs keep their current maximum).
///
/// Invariants (checked by the tests, for any input):
/// - the sum of all maxima (pinned ones included) is at most `line x headroom`, as long as that
///   leaves each controlled VF 1 Mbps;
/// - every maximum is at most the VF's limit and never 0;
/// - a VF that wants at least its guarantee, or has not been quiet for `lend_after` intervals, gets
///   at least its guarantee whenever the guarantees fit (the ledger's admission sees to that);
/// - no capacity is left idle while a VF is below its limit (work conservation), apart from the
///   deadband.
pub fn plan(line_mbps: u64, vfs: &[VfInput], t: &Tuning) -> Vec<VfPlan> {
    let capacity = t.capacity(line_mbps);
    let pinned: u64 = vfs
        .iter()
        .filter(|v| v.pinned)
        .map(|v| {
            if v.current_max_mbps == 0 {
                // What its runtime will set.
                start_max_mbps(v.guarantee_mbps)
            } else {
                v.current_max_mbps
            }
        })
        .sum();
    let avail = capacity.saturating_sub(pinned);
    let ctl: Vec<usize> = (0..vfs.len()).filter(|&i| !vfs[i].pinned).collect();
    let n = ctl.len();
    let (mut g, mut l, mut w, mut reserve) = (vec![0; n], vec![0; n], vec![0; n], vec![0; n]);
    for (k, &i) in ctl.iter().enumerate() {
        let v = &vfs[i];
        (g[k], l[k]) = bounds(v.guarantee_mbps, v.limit_mbps, capacity);
        w[k] = want(
            v.demand,
            v.guarantee_mbps,
            v.limit_mbps,
            capacity,
            v.jitter_mbps,
            t,
        );
        let floor = t.floor_mbps.max(1).min(l[k]);
        reserve[k] = if w[k] >= g[k] || v.quiet < t.lend_after {
            g[k].max(floor)
        } else {
            w[k]
        };
    }
    // 1. Reserves (guarantees, or the wants of settled lenders); shared max-min when they do not
    //    all fit, which admission prevents unless headroom is set below the admission ratio.
    let mut a = vec![0; n];
    let mut left = water_fill(avail, &mut a, &reserve);
    // 2. Loans to the VFs that want more.
    left = water_fill(left, &mut a, &w);
    // 3. Lenders back to their guarantee where nobody needs the loan.
    let up_to_g: Vec<u64> = a.iter().zip(&g).map(|(&x, &gk)| x.max(gk)).collect();
    left = water_fill(left, &mut a, &up_to_g);
    // 4. The rest toward every limit.
    water_fill(left, &mut a, &l);

    // Leave small changes undone where that keeps every promise; if the sum then runs over, the
    // decreases among them are made after all.
    let band = t.deadband_mbps(capacity);
    let mut kept = vec![false; n];
    for (k, &i) in ctl.iter().enumerate() {
        let cur = vfs[i].current_max_mbps;
        a[k] = a[k].max(1);
        if cur != 0 && cur != a[k] && cur.abs_diff(a[k]) <= band && cur >= reserve[k] && cur <= l[k]
        {
            kept[k] = true;
        }
    }
    let sum_with = |kept: &[bool]| -> u64 {
        ctl.iter()
            .enumerate()
            .map(|(k, &i)| {
                if kept[k] {
                    vfs[i].current_max_mbps
                } else {
                    a[k]
                }
            })
            .sum()
    };
    if sum_with(&kept) > avail {
        for (k, &i) in ctl.iter().enumerate() {
            if kept[k] && vfs[i].current_max_mbps > a[k] {
                kept[k] = false;
            }
        }
    }
    let mut out: Vec<VfPlan> = vfs
        .iter()
        .map(|v| VfPlan {
            max_mbps: v.current_max_mbps,
            min_mbps: v.guarantee_mbps.min(v.current_max_mbps),
            want_mbps: v.current_max_mbps,
            changed: false,
        })
        .collect();
    for (k, &i) in ctl.iter().enumerate() {
        let cur = vfs[i].current_max_mbps;
        let max = if kept[k] { cur } else { a[k] };
        out[i] = VfPlan {
            max_mbps: max,
            min_mbps: g[k].min(max),
            want_mbps: w[k],
            changed: max != cur,
        };
    }
    out
}

/// Turns a VF's transmit byte counter, sampled several times per interval, into rates: the rate
/// over each sample window, and the highest of them since the last decision (a conservative
/// demand estimate that a burst inside the interval cannot hide from).
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(f64, u64)>,
    peak: Option<u64>,
}

impl RateMeter {
    /// Records the counter read at `at_secs` (any monotonic clock). Returns the rate since the
    /// previous sample in Mbps; `None` for the first sample, when no time passed, or when the
    /// counter went backwards (a driver reset), which starts the measurement afresh.
    pub fn sample(&mut self, at_secs: f64, tx_bytes: u64) -> Option<u64> {
        let (t0, b0) = self.last.replace((at_secs, tx_bytes))?;
        let dt = at_secs - t0;
        if dt <= 0.0 || tx_bytes < b0 {
            return None;
        }
        let mbps = ((tx_bytes - b0) as f64 * 8.0 / dt / 1e6).round() as u64;
        self.peak = Some(self.peak.map_or(mbps, |p| p.max(mbps)));
        Some(mbps)
    }

    /// The highest window rate since the last call (and forgets it).
    pub fn take_peak(&mut self) -> Option<u64> {
        self.peak.take()
    }
}

/// Whether a VF that has lent part of its guarantee just ran at its lowered cap: its demand is
/// back, so the loan is to be taken back now instead of at the next interval.
pub fn reclaim_due(rate_mbps: u64, current_max_mbps: u64, guarantee_mbps: u64, t: &Tuning) -> bool {
    current_max_mbps != 0
        && current_max_mbps < guarantee_mbps
        && rate_mbps as f64 >= t.saturation * current_max_mbps as f64
}

/// The perfect-knowledge allocation the controller is measured against: each VF gets
/// `min(demand, guarantee)` first, then the rest of `capacity` max-min fairly up to
/// `min(demand, limit)`. Returns the rate each VF would send.
pub fn ideal(capacity: u64, vfs: &[(u64, u64, u64)]) -> Vec<u64> {
    let wants: Vec<u64> = vfs
        .iter()
        .map(|&(g, l, d)| d.min(l.max(g)).min(capacity))
        .collect();
    let floors: Vec<u64> = vfs
        .iter()
        .zip(&wants)
        .map(|(&(g, _, _), &w)| g.min(w))
        .collect();
    let mut a = vec![0; vfs.len()];
    let left = water_fill(capacity, &mut a, &floors);
    water_fill(left, &mut a, &wants);
    a
}

/// A VF the controller is told about at the start of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation<K> {
    pub key: K,
    pub guarantee_mbps: u64,
    pub limit_mbps: u64,
    /// The maximum in force now, as read back from the hardware (0 = none).
    pub current_max_mbps: u64,
    /// What the VF sent since the last decision, Mbps; `None` when not known.
    pub measured_mbps: Option<u64>,
    /// Left alone and counted at its current maximum, or at its guarantee when it has none (e.g.
    /// its runtime has not set its rate yet).
    pub pinned: bool,
}

/// The controller's decision for one VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<K> {
    pub key: K,
    pub guarantee_mbps: u64,
    pub demand: Demand,
    /// The rate to set (`min = min(guarantee, max)`).
    pub rate: VfRate,
    /// The maximum in force before this decision.
    pub previous_max_mbps: u64,
    /// The maximum changes: set `rate`. Otherwise leave the VF alone.
    pub changed: bool,
}

impl<K> Decision<K> {
    /// How far above its guarantee this VF may now send: bandwidth borrowed from others.
    pub fn borrowed_mbps(&self) -> u64 {
        self.rate.max_mbps.saturating_sub(self.guarantee_mbps)
    }

    /// How much of its guarantee this VF has lent out.
    pub fn lent_mbps(&self) -> u64 {
        self.guarantee_mbps.saturating_sub(self.rate.max_mbps)
    }
}

/// One PF's controller: [`plan`] plus what it remembers of each VF between intervals (how long it
/// has been quiet, its jitter). Keys are whatever names a VF for the caller (the daemon uses the
/// pod id and VF index, so a VF that changes hands starts afresh).
#[derive(Debug, Clone)]
pub struct Controller<K> {
    pub tuning: Tuning,
    vfs: BTreeMap<K, Track>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Track {
    quiet: u32,
    last: Option<Demand>,
    jitter: f64,
}

impl Track {
    /// Folds in this interval's demand. The jitter follows changes between two intervals below
    /// the cap only: the jump into or out of a burst is a change of regime, not noise.
    fn fold(&mut self, demand: Demand) {
        if let (Some(Demand::Measured(p)), Demand::Measured(m)) = (self.last, demand) {
            self.jitter += (p.abs_diff(m) as f64 - self.jitter) / 8.0;
        }
        if demand != Demand::Unknown {
            self.last = Some(demand);
        }
    }

    fn count_quiet(&mut self, demand: Demand, wants_less_than_guarantee: bool) {
        match demand {
            Demand::Unknown => {}
            _ if wants_less_than_guarantee => self.quiet = self.quiet.saturating_add(1),
            _ => self.quiet = 0,
        }
    }
}

impl<K: Ord + Clone> Controller<K> {
    pub fn new(tuning: Tuning) -> Controller<K> {
        Controller {
            tuning,
            vfs: BTreeMap::new(),
        }
    }

    /// Decides the interval's maxima for one PF. VFs not observed are forgotten. The decisions
    /// come in the order to apply them: decreases first, so the PF's sum stays within its
    /// capacity at every step.
    pub fn step(&mut self, line_mbps: u64, obs: &[Observation<K>]) -> Vec<Decision<K>> {
        let t = self.tuning;
        let capacity = t.capacity(line_mbps);
        self.vfs.retain(|k, _| obs.iter().any(|o| &o.key == k));
        let mut inputs = Vec::with_capacity(obs.len());
        for o in obs {
            let demand = estimate(o.measured_mbps, o.current_max_mbps, line_mbps, &t);
            let track = self.vfs.entry(o.key.clone()).or_default();
            track.fold(demand);
            let (g, _) = bounds(o.guarantee_mbps, o.limit_mbps, capacity);
            let w = want(
                demand,
                o.guarantee_mbps,
                o.limit_mbps,
                capacity,
                track.jitter.round() as u64,
                &t,
            );
            track.count_quiet(demand, w < g);
            inputs.push(VfInput {
                guarantee_mbps: o.guarantee_mbps,
                limit_mbps: o.limit_mbps,
                demand,
                jitter_mbps: track.jitter.round() as u64,
                quiet: track.quiet,
                current_max_mbps: o.current_max_mbps,
                pinned: o.pinned,
            });
        }
        let plans = plan(line_mbps, &inputs, &t);
        let mut out: Vec<Decision<K>> = obs
            .iter()
            .zip(inputs.iter().zip(plans))
            .filter(|(o, _)| !o.pinned)
            .map(|(o, (i, p))| Decision {
                key: o.key.clone(),
                guarantee_mbps: o.guarantee_mbps,
                demand: i.demand,
                rate: p.rate(),
                previous_max_mbps: o.current_max_mbps,
                changed: p.changed,
            })
            .collect();
        // Decreases (toward a smaller non-zero maximum, or away from "none") before increases.
        out.sort_by_key(|d| d.previous_max_mbps != 0 && d.rate.max_mbps > d.previous_max_mbps);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINE: u64 = 100_000;

    fn t0() -> Tuning {
        Tuning {
            deadband: 0.0,
            lend_after: 0,
            ..Tuning::default()
        }
    }

    fn vf(g: u64, l: u64, demand: Demand, cur: u64) -> VfInput {
        VfInput {
            guarantee_mbps: g,
            limit_mbps: l,
            demand,
            jitter_mbps: 0,
            quiet: 100,
            current_max_mbps: cur,
            pinned: false,
        }
    }

    fn maxes(p: &[VfPlan]) -> Vec<u64> {
        p.iter().map(|p| p.max_mbps).collect()
    }

    #[test]
    fn water_fill_is_max_min_on_totals() {
        let mut a = vec![50, 0, 10];
        let left = water_fill(60, &mut a, &[100, 100, 100]);
        assert_eq!((a.clone(), left), (vec![50, 35, 35], 0));
        let mut a = vec![0, 0];
        assert_eq!(water_fill(100, &mut a, &[10, 20]), 70);
        assert_eq!(a, vec![10, 20]);
        let mut a = vec![0, 0, 0];
        assert_eq!(water_fill(10, &mut a, &[9, 9, 9]), 0);
        assert_eq!(a.iter().sum::<u64>(), 10);
        assert!(a.iter().all(|&x| x == 3 || x == 4), "{a:?}");
    }

    #[test]
    fn estimate_reads_the_cap() {
        let t = Tuning::default();
        assert_eq!(estimate(None, 10, LINE, &t), Demand::Unknown);
        assert_eq!(estimate(Some(5), 10, LINE, &t), Demand::Measured(5));
        assert_eq!(
            estimate(Some(9_600), 10_000, LINE, &t),
            Demand::AtCap(9_600)
        );
        // No cap: the line is the cap.
        assert_eq!(estimate(Some(96_000), 0, LINE, &t), Demand::AtCap(96_000));
        assert_eq!(
            estimate(Some(50_000), 0, LINE, &t),
            Demand::Measured(50_000)
        );
    }

    #[test]
    fn idle_guarantee_is_lent_and_taken_back_in_one_step() {
        let t = t0();
        // Two VFs, 50G guaranteed each, limit 100G. A idles, B runs at its cap.
        let p = plan(
            LINE,
            &[
                vf(50_000, LINE, Demand::Measured(0), 50_000),
                vf(50_000, LINE, Demand::AtCap(50_000), 50_000),
            ],
            &t,
        );
        assert_eq!(maxes(&p), vec![100, 99_900]);
        assert_eq!(p[0].min_mbps, 100, "min never above max");
        assert_eq!(p[1].min_mbps, 50_000);
        // A's demand returns: it runs at its lowered cap. One step later both have their guarantee.
        let p = plan(
            LINE,
            &[
                vf(50_000, LINE, Demand::AtCap(100), 100),
                vf(50_000, LINE, Demand::AtCap(99_900), 99_900),
            ],
            &t,
        );
        assert_eq!(maxes(&p), vec![50_000, 50_000]);
        assert!(p.iter().all(|p| p.changed));
    }

    #[test]
    fn lending_waits_for_lend_after_quiet_intervals() {
        let t = Tuning {
            lend_after: 3,
            deadband: 0.0,
            ..Tuning::default()
        };
        let mut a = vf(50_000, LINE, Demand::Measured(0), 50_000);
        let b = vf(50_000, LINE, Demand::AtCap(50_000), 50_000);
        a.quiet = 2;
        assert_eq!(maxes(&plan(LINE, &[a, b], &t)), vec![50_000, 50_000]);
        a.quiet = 3;
        assert_eq!(maxes(&plan(LINE, &[a, b], &t)), vec![100, 99_900]);
    }

    #[test]
    fn spare_capacity_restores_lenders_before_raising_others() {
        let t = t0();
        // A idles, B wants 30G (below its 50G guarantee + loans): nobody needs A's guarantee.
        let p = plan(
            LINE,
            &[
                vf(40_000, LINE, Demand::Measured(0), 40_000),
                vf(40_000, LINE, Demand::Measured(30_000), 40_000),
            ],
            &t,
        );
        assert!(p[0].max_mbps >= 40_000, "{p:?}");
        assert_eq!(p.iter().map(|p| p.max_mbps).sum::<u64>(), LINE);
    }

    #[test]
    fn best_effort_vf_borrows_and_loans_are_max_min() {
        let t = t0();
        // A (g=60G) and B (g=0) both at their caps, C (g=20G) idle.
        let p = plan(
            LINE,
            &[
                vf(60_000, LINE, Demand::AtCap(60_000), 60_000),
                vf(0, LINE, Demand::AtCap(100), 100),
                vf(20_000, LINE, Demand::Measured(0), 20_000),
            ],
            &t,
        );
        // C keeps its floor; B gets the remaining 39.9G, A its guarantee (max-min on totals).
        assert_eq!(maxes(&p), vec![60_000, 39_900, 100]);
        assert_eq!(p[1].min_mbps, 0);
    }

    #[test]
    fn limits_cap_loans_and_the_rest_spreads() {
        let t = t0();
        let p = plan(
            LINE,
            &[
                vf(10_000, 20_000, Demand::AtCap(10_000), 10_000),
                vf(10_000, LINE, Demand::AtCap(10_000), 10_000),
                vf(10_000, 30_000, Demand::Measured(0), 10_000),
            ],
            &t,
        );
        assert_eq!(p[0].max_mbps, 20_000);
        assert_eq!(p[2].max_mbps, 100);
        assert_eq!(p[1].max_mbps, LINE - 20_000 - 100);
    }

    #[test]
    fn pinned_vfs_count_in_the_sum_and_are_left_alone() {
        let t = t0();
        let mut pending = vf(20_000, 40_000, Demand::Unknown, 0);
        pending.pinned = true;
        let p = plan(
            LINE,
            &[pending, vf(20_000, LINE, Demand::AtCap(20_000), 20_000)],
            &t,
        );
        assert_eq!(p[0].max_mbps, 0);
        assert!(!p[0].changed);
        assert_eq!(
            p[1].max_mbps,
            LINE - 20_000,
            "the pinned VF without a rate counts at its guarantee"
        );
        let mut set = vf(20_000, 40_000, Demand::Unknown, 30_000);
        set.pinned = true;
        let p = plan(
            LINE,
            &[set, vf(20_000, LINE, Demand::AtCap(20_000), 20_000)],
            &t,
        );
        assert_eq!(p[1].max_mbps, LINE - 30_000, "one with a rate counts at it");
        // A best-effort one starts at 1 Mbps (0 would mean no limit).
        let mut best_effort = vf(0, 40_000, Demand::Unknown, 0);
        best_effort.pinned = true;
        let busy = vf(20_000, LINE, Demand::AtCap(20_000), 20_000);
        assert_eq!(plan(LINE, &[best_effort, busy], &t)[1].max_mbps, LINE - 1);
    }

    #[test]
    fn deadband_skips_small_changes_but_never_the_sum() {
        let t = Tuning {
            deadband: 0.01,
            lend_after: 0,
            ..Tuning::default()
        };
        // B would go from 49.5G to 50G: within 1G, left alone.
        let p = plan(
            LINE,
            &[
                vf(50_000, LINE, Demand::AtCap(50_000), 50_000),
                vf(50_000, LINE, Demand::AtCap(49_500), 49_500),
            ],
            &t,
        );
        assert_eq!(
            maxes(&p),
            vec![50_000, 50_000],
            "B below its guarantee is raised"
        );
        let p = plan(
            LINE,
            &[
                vf(40_000, LINE, Demand::AtCap(50_000), 50_000),
                vf(40_000, LINE, Demand::AtCap(49_500), 49_500),
            ],
            &t,
        );
        assert_eq!(maxes(&p), vec![50_000, 49_500]);
        assert!(!p[0].changed && !p[1].changed);
    }

    #[test]
    fn controller_orders_decreases_first_and_tracks_quiet() {
        let mut c = Controller::new(Tuning {
            lend_after: 2,
            deadband: 0.0,
            ..Tuning::default()
        });
        let ob = |key: &'static str, cur: u64, m: u64| Observation {
            key,
            guarantee_mbps: 50_000,
            limit_mbps: LINE,
            current_max_mbps: cur,
            measured_mbps: Some(m),
            pinned: false,
        };
        // a idle, b at its cap: lent after two quiet intervals.
        let d = c.step(LINE, &[ob("b", 50_000, 50_000), ob("a", 50_000, 0)]);
        assert!(d.iter().all(|d| !d.changed), "{d:?}");
        let d = c.step(LINE, &[ob("b", 50_000, 50_000), ob("a", 50_000, 0)]);
        assert_eq!(d[0].key, "a", "the decrease comes first: {d:?}");
        assert_eq!((d[0].rate.max_mbps, d[0].lent_mbps()), (100, 49_900));
        assert_eq!((d[1].rate.max_mbps, d[1].borrowed_mbps()), (99_900, 49_900));
        // a comes back: b's decrease first again.
        let d = c.step(LINE, &[ob("b", 99_900, 99_900), ob("a", 100, 100)]);
        assert_eq!((d[0].key, d[0].rate.max_mbps), ("b", 50_000));
        assert_eq!((d[1].key, d[1].rate.max_mbps), ("a", 50_000));
        // Forgotten VFs start afresh.
        c.step(LINE, &[ob("b", 50_000, 50_000)]);
        assert_eq!(c.vfs.len(), 1);
    }

    #[test]
    fn meter_gives_window_rates_and_the_peak() {
        let mut m = RateMeter::default();
        assert_eq!(m.sample(0.0, 0), None);
        // 125 MB in 1 s = 1000 Mbps; then 250 MB in 1 s.
        assert_eq!(m.sample(1.0, 125_000_000), Some(1_000));
        assert_eq!(m.sample(2.0, 375_000_000), Some(2_000));
        assert_eq!(m.take_peak(), Some(2_000));
        assert_eq!(m.take_peak(), None);
        // A counter reset starts afresh.
        assert_eq!(m.sample(3.0, 5), None);
        assert_eq!(m.sample(3.0, 10), None, "no time passed");
        assert_eq!(m.sample(3.5, 6_250_010), Some(100));
    }

    #[test]
    fn reclaim_is_due_when_a_lender_runs_at_its_cap() {
        let t = Tuning::default();
        assert!(reclaim_due(100, 100, 50_000, &t));
        assert!(!reclaim_due(10, 100, 50_000, &t), "still idle");
        assert!(!reclaim_due(60_000, 60_000, 50_000, &t), "not lending");
        assert!(!reclaim_due(60_000, 0, 50_000, &t), "no cap");
    }

    #[test]
    fn jitter_gives_a_noisy_lender_more_room() {
        let mut c = Controller::new(t0());
        let ob = |m: u64| Observation {
            key: 0,
            guarantee_mbps: 50_000,
            limit_mbps: LINE,
            current_max_mbps: 50_000,
            measured_mbps: Some(m),
            pinned: false,
        };
        let busy = Observation {
            key: 1,
            current_max_mbps: 50_000,
            measured_mbps: Some(50_000),
            ..ob(0)
        };
        let mut last = Vec::new();
        for i in 0..40 {
            last = c.step(
                LINE,
                &[ob(if i % 2 == 0 { 0 } else { 2_000 }), busy.clone()],
            );
        }
        // It swings by 2G every interval: room of about 4 x 2G above the 2G it sent last.
        let max = last.iter().find(|d| d.key == 0).unwrap().rate.max_mbps;
        assert!((9_500..=10_100).contains(&max), "{max}");
    }

    #[test]
    fn ideal_is_guarantee_first_then_max_min() {
        assert_eq!(
            ideal(100, &[(60, 100, 100), (0, 100, 100), (20, 100, 0)]),
            vec![60, 40, 0]
        );
        assert_eq!(
            ideal(100, &[(10, 100, 100), (10, 100, 100), (10, 20, 100)]),
            vec![40, 40, 20]
        );
    }

    fn arb_demand() -> impl Strategy<Value = Demand> {
        prop_oneof![
            Just(Demand::Unknown),
            (0u64..120_000).prop_map(Demand::Measured),
            (0u64..120_000).prop_map(Demand::AtCap),
        ]
    }

    prop_compose! {
        /// A PF whose guarantees fit its capacity, as admission ensures.
        fn arb_pf()(line in 10_000u64..400_000, n in 1usize..12, headroom in 0.5f64..=1.0)
            (line in Just(line), headroom in Just(headroom), n in Just(n),
             shares in proptest::collection::vec(0u64..100, n),
             limits in proptest::collection::vec(0u64..500_000, n),
             demands in proptest::collection::vec(arb_demand(), n),
             quiet in proptest::collection::vec(0u32..5, n),
             jitter in proptest::collection::vec(0u64..20_000, n),
             cur in proptest::collection::vec(0u64..400_000, n),
             pinned in proptest::collection::vec(proptest::bool::weighted(0.1), n),
             lend_after in 0u32..4, deadband in 0.0f64..0.05)
            -> (u64, Vec<VfInput>, Tuning)
        {
            let t = Tuning { headroom, lend_after, deadband, ..Tuning::default() };
            let cap = t.capacity(line);
            let total: u64 = shares.iter().sum::<u64>().max(1);
            let vfs = (0..n).map(|i| {
                // Guarantees add up to at most the capacity less the floors.
                let g = (cap.saturating_sub(n as u64 * t.floor_mbps)) * shares[i] / total / 2;
                VfInput {
                    guarantee_mbps: g,
                    limit_mbps: limits[i],
                    demand: demands[i],
                    jitter_mbps: jitter[i],
                    quiet: quiet[i],
                    current_max_mbps: cur[i],
                    pinned: pinned[i] && cur[i] > 0 && cur[i] < cap / (4 * n as u64),
                }
            }).collect();
            (line, vfs, t)
        }
    }

    proptest! {
        #[test]
        fn invariants_hold((line, vfs, t) in arb_pf()) {
            let cap = t.capacity(line);
            let p = plan(line, &vfs, &t);
            prop_assert_eq!(p.len(), vfs.len());
            let sum: u64 = p.iter().map(|x| x.max_mbps).sum();
            // Sum bound.
            prop_assert!(sum <= cap, "sum {} > capacity {}: {:?}", sum, cap, p);
            let band = (cap as f64 * t.deadband) as u64;
            let mut below_limit = false;
            for (v, x) in vfs.iter().zip(&p) {
                if v.pinned {
                    prop_assert_eq!(x.max_mbps, v.current_max_mbps);
                    prop_assert!(!x.changed);
                    continue;
                }
                let l = v.limit_mbps.max(v.guarantee_mbps).min(cap).max(1);
                // Limit bound; never "no limit"; min never above max.
                prop_assert!(x.max_mbps >= 1 && x.max_mbps <= l, "{:?} {:?}", v, x);
                prop_assert!(x.min_mbps <= x.max_mbps);
                prop_assert_eq!(x.changed, x.max_mbps != v.current_max_mbps);
                // Guarantee met when demanded (or not yet quiet long enough to lend).
                let w = want(v.demand, v.guarantee_mbps, v.limit_mbps, cap, v.jitter_mbps, &t);
                if w >= v.guarantee_mbps || v.quiet < t.lend_after {
                    prop_assert!(x.max_mbps >= v.guarantee_mbps.min(l), "{:?} {:?}", v, x);
                }
                // A VF is given at least what it wants up to its fair share: here, at least
                // min(want, guarantee) always.
                prop_assert!(x.max_mbps >= w.min(v.guarantee_mbps).min(l));
                if x.max_mbps + band < l {
                    below_limit = true;
                }
            }
            // Work conservation: capacity is only left over when every VF is at its limit.
            let pinned: u64 = vfs.iter().zip(&p).filter(|(v, _)| v.pinned).map(|(_, x)| x.max_mbps).sum();
            if below_limit && pinned <= cap {
                let slack = vfs.iter().filter(|v| !v.pinned).count() as u64 * band;
                prop_assert!(sum + slack >= cap, "idle capacity: sum {} of {}: {:?}", sum, cap, p);
            }
        }

        #[test]
        fn ideal_is_bounded_and_meets_demanded_guarantees(
            cap in 1u64..100_000,
            raw in proptest::collection::vec((0u64..100, 0u64..200_000, 0u64..200_000), 1..10),
        ) {
            let total: u64 = raw.iter().map(|r| r.0).sum::<u64>().max(1);
            let vfs: Vec<(u64, u64, u64)> = raw.iter().map(|&(s, l, d)| (cap * s / total, l, d)).collect();
            let a = ideal(cap, &vfs);
            prop_assert!(a.iter().sum::<u64>() <= cap);
            for (&(g, l, d), &x) in vfs.iter().zip(&a) {
                prop_assert!(x <= d.min(l.max(g)));
                prop_assert!(x >= g.min(d));
            }
        }
    }
}
