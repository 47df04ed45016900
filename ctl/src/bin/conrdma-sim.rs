//! `conrdma-sim`: the work-conserving controller against static rates and the ideal, on one PF
//! with N VFs and seeded demand traces.
//!
//! The NIC is modelled in 50 ms ticks: in each, a VF sends `min(demand, max_tx_rate)`, and when
//! that adds up to more than the line the line is shared max-min fairly (no `min_tx_rate`, as on
//! most drivers). The controller runs as the node daemon runs it: it reads every VF's byte counter
//! four times per interval ([`RateMeter`]), decides every interval from the peak window rates, and
//! decides at once when a lender runs at its lowered cap ([`reclaim_due`]). Policies:
//! - `static max = guarantee` (the floor for a best-effort VF);
//! - `static max = limit` (what the shim sets without the controller);
//! - `controller`: [`Controller`];
//! - `ideal max-min`: [`ideal`], recomputed every tick with the true demands.
//!
//! A VF misses its guarantee in an interval when it sent less than `min(demand, guarantee)` over
//! that interval (beyond 1% slack); misses are counted per VF and interval. Reclaim is the longest
//! time, in intervals, that any VF was held below `min(demand, guarantee)` without a break (in
//! ticks: a lender whose demand returns is short until its loan is back). The last line printed is `controller:
//! utilisation U of ideal, guarantee misses M% of intervals, reclaim R intervals`, over all
//! scenarios, for comparing runs.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use conrdma_api::conserve::{
    ideal, reclaim_due, water_fill, Controller, Observation, RateMeter, Tuning,
};
use conrdma_api::rate::Rate;

/// The NIC model's time step.
const TICK_MS: u64 = 50;
/// Counter samples per interval (as in the node daemon).
const SAMPLES: u64 = 4;

#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Simulate the work-conserving bandwidth controller against static rates and the ideal"
)]
struct Args {
    /// Seed for the VF set and the demand traces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per scenario.
    #[arg(long, default_value_t = 7200)]
    seconds: u64,
    /// Controller interval, ms (a multiple of 200).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stretches (>1) or compresses (<1) every duration in the traces.
    #[arg(long, default_value_t = 1.0)]
    timescale: f64,
    /// VFs on the PF (the last one is best-effort: no guarantee).
    #[arg(long, default_value_t = 8)]
    vfs: usize,
    /// PF line rate.
    #[arg(long, default_value = "100Gbps", value_parser = parse_rate)]
    line: Rate,
    /// Share of the line rate that is guaranteed (the admission ratio).
    #[arg(long, default_value_t = 0.9)]
    admitted: f64,
    /// Max rates add up to at most line x headroom.
    #[arg(long, default_value_t = 1.0)]
    headroom: f64,
    /// Quiet intervals before a guarantee is lent.
    #[arg(long, default_value_t = Tuning::default().lend_after)]
    lend_after: u32,
    /// Room above a measured demand, as a fraction of it.
    #[arg(long, default_value_t = Tuning::default().margin)]
    margin: f64,
    /// Room above a measured demand, in multiples of the VF's jitter.
    #[arg(long, default_value_t = Tuning::default().spread)]
    spread: f64,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioArg,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    Rate::parse(s).map_err(|e| e.to_string())
}

impl Args {
    fn check(&self) -> Result<(), String> {
        if !(self.admitted > 0.0 && self.admitted <= 1.0) {
            return Err(format!("--admitted {} is not in (0, 1]", self.admitted));
        }
        if !(self.headroom > 0.0 && self.headroom <= 1.0) || self.headroom < self.admitted {
            return Err(format!(
                "--headroom {} must be in (0, 1] and at least --admitted {}",
                self.headroom, self.admitted
            ));
        }
        if self.interval_ms == 0 || self.interval_ms % (TICK_MS * SAMPLES) != 0 {
            return Err(format!(
                "--interval-ms {} is not a positive multiple of {}",
                self.interval_ms,
                TICK_MS * SAMPLES
            ));
        }
        if self.vfs < 2 || self.seconds * 1000 < self.interval_ms {
            return Err("use --vfs >= 2 and --seconds of at least one interval".into());
        }
        if !(self.timescale > 0.0 && self.timescale.is_finite()) {
            return Err(format!("--timescale {} is not positive", self.timescale));
        }
        Ok(())
    }

    fn tuning(&self) -> Tuning {
        Tuning {
            headroom: self.headroom,
            lend_after: self.lend_after,
            margin: self.margin,
            spread: self.spread,
            ..Tuning::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    All,
    Bursty,
    Diurnal,
    Incast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Bursty,
    Diurnal,
    Incast,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Bursty, Scenario::Diurnal, Scenario::Incast];

    fn name(self) -> &'static str {
        match self {
            Scenario::Bursty => "bursty",
            Scenario::Diurnal => "diurnal",
            Scenario::Incast => "incast",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    StaticGuarantee,
    StaticLimit,
    Controller,
    Ideal,
}

impl Policy {
    const ALL: [Policy; 4] = [
        Policy::StaticGuarantee,
        Policy::StaticLimit,
        Policy::Controller,
        Policy::Ideal,
    ];

    fn name(self) -> &'static str {
        match self {
            Policy::StaticGuarantee => "static max = guarantee",
            Policy::StaticLimit => "static max = limit",
            Policy::Controller => "controller",
            Policy::Ideal => "ideal max-min",
        }
    }
}

/// SplitMix64: small, fast, and the same sequence on every platform and version.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Exponentially distributed, with this mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[derive(Debug, Clone, Copy)]
struct Vf {
    guarantee: u64,
    limit: u64,
}

/// N-1 guaranteed VFs sharing `admitted` x line in random proportions, limits 1.5-4x their
/// guarantee, and one best-effort VF limited to a quarter of the line.
fn vf_set(rng: &mut Rng, n: usize, line: u64, admitted: f64) -> Vec<Vf> {
    let n = n.max(2);
    let shares: Vec<f64> = (0..n - 1).map(|_| rng.range(1.0, 4.0)).collect();
    let total: f64 = shares.iter().sum();
    let mut vfs: Vec<Vf> = shares
        .iter()
        .map(|s| {
            let g = ((line as f64 * admitted * s / total) / 100.0).floor() as u64 * 100;
            let l = ((g as f64 * rng.range(1.5, 4.0)) as u64).min(line);
            Vf {
                guarantee: g,
                limit: l,
            }
        })
        .collect();
    vfs.push(Vf {
        guarantee: 0,
        limit: line / 4,
    });
    vfs
}

/// Demand per tick and VF, Mbps.
struct Trace {
    demand: Vec<Vec<u64>>,
}

/// Trace durations in ticks.
struct Clock {
    scale: f64,
}

impl Clock {
    fn ticks(&self, secs: f64) -> usize {
        ((secs * self.scale * 1000.0 / TICK_MS as f64).round() as usize).max(1)
    }
}

/// Control traffic of an idle VF: a level up to 2% of its guarantee (at least 50 Mbps) that
/// changes every second.
fn idle(rng: &mut Rng, v: &Vf, row: &mut [Vec<u64>], i: usize) {
    let per_sec = (1000 / TICK_MS) as usize;
    for chunk in row.chunks_mut(per_sec) {
        let level = (rng.unit() * (v.guarantee as f64 * 0.02).max(50.0)) as u64;
        for r in chunk {
            r[i] = level;
        }
    }
}

fn trace(s: Scenario, rng: &mut Rng, vfs: &[Vf], line: u64, ticks: usize, clock: &Clock) -> Trace {
    let n = vfs.len();
    let mut d = vec![vec![0u64; n]; ticks];
    match s {
        Scenario::Bursty => {
            // On/off sources: on for ~1 min, off for ~2 min (exponential); half the bursts are
            // greedy (want the line), the rest want a level between half the guarantee and the
            // limit.
            for (i, v) in vfs.iter().enumerate() {
                let mut t = 0;
                let mut on = rng.unit() < 0.4;
                while t < ticks {
                    let dur = clock.ticks(rng.exp(if on { 60.0 } else { 120.0 }));
                    let end = (t + dur).min(ticks);
                    if on {
                        let level = if rng.unit() < 0.5 {
                            line
                        } else {
                            rng.range(v.guarantee as f64 * 0.5, v.limit as f64) as u64
                        };
                        for row in &mut d[t..end] {
                            row[i] = level;
                        }
                    } else {
                        idle(rng, v, &mut d[t..end], i);
                    }
                    t = end;
                    on = !on;
                }
            }
        }
        Scenario::Diurnal => {
            // A daily swing (one "day" = 1 h) peaking at the VF's limit, in four time zones, with
            // noise that wanders on a ~20 s time scale.
            let day = clock.ticks(3600.0) as f64;
            let keep = (-1.0 / clock.ticks(20.0) as f64).exp();
            for (i, v) in vfs.iter().enumerate() {
                let phase = (rng.next() % 4) as f64 * std::f64::consts::FRAC_PI_2;
                let mut noise = 0.0;
                for (t, row) in d.iter_mut().enumerate() {
                    noise = keep * noise + (1.0 - keep * keep).sqrt() * rng.range(-1.0, 1.0);
                    let x = 0.5
                        + 0.45 * (std::f64::consts::TAU * t as f64 / day + phase).sin()
                        + 0.1 * noise;
                    row[i] = (v.limit as f64 * x.clamp(0.0, 1.0)) as u64;
                }
            }
        }
        Scenario::Incast => {
            // Two bulk senders want the line all the time; the others idle until a fan-in event
            // (about every 2 min) makes half of them send at their limit at once for 5-20 s.
            let bulk = [0, n - 1];
            for (i, v) in vfs.iter().enumerate() {
                if bulk.contains(&i) {
                    for row in d.iter_mut() {
                        row[i] = line;
                    }
                } else {
                    idle(rng, v, &mut d, i);
                }
            }
            let mut t = clock.ticks(rng.exp(120.0));
            while t < ticks {
                let end = (t + clock.ticks(rng.range(5.0, 20.0))).min(ticks);
                for (i, v) in vfs.iter().enumerate() {
                    if bulk.contains(&i) || rng.unit() < 0.5 {
                        continue;
                    }
                    for row in &mut d[t..end] {
                        row[i] = v.limit;
                    }
                }
                t = end + clock.ticks(rng.exp(120.0).max(10.0));
            }
        }
    }
    Trace { demand: d }
}

/// What the NIC lets each VF send: `min(demand, max)`, shared max-min fairly when over the line.
fn serve(line: u64, demand: &[u64], max: &[u64]) -> Vec<u64> {
    let offered: Vec<u64> = demand
        .iter()
        .zip(max)
        .map(|(&d, &m)| d.min(if m == 0 { line } else { m }))
        .collect();
    if offered.iter().sum::<u64>() <= line {
        return offered;
    }
    let mut a = vec![0; offered.len()];
    water_fill(line, &mut a, &offered);
    a
}

#[derive(Debug, Default, Clone)]
struct Stats {
    intervals: u64,
    vf_intervals: u64,
    /// Mbps x ticks.
    served: u128,
    ideal: u128,
    missed_vf_intervals: u64,
    intervals_with_miss: u64,
    /// Lengths of the spells in which a VF was short of its guarantee, in ticks.
    short_runs: Vec<u64>,
    ticks_per_interval: u64,
    /// Rate changes made (limiter calls).
    sets: u64,
    /// Decisions taken before their interval was up, to take a loan back.
    early: u64,
    /// Mbps x intervals above guarantees (controller only).
    borrowed: u128,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        self.intervals += o.intervals;
        self.vf_intervals += o.vf_intervals;
        self.served += o.served;
        self.ideal += o.ideal;
        self.missed_vf_intervals += o.missed_vf_intervals;
        self.intervals_with_miss += o.intervals_with_miss;
        self.short_runs.extend(&o.short_runs);
        self.ticks_per_interval = o.ticks_per_interval;
        self.sets += o.sets;
        self.early += o.early;
        self.borrowed += o.borrowed;
    }

    fn utilisation(&self) -> f64 {
        if self.ideal == 0 {
            1.0
        } else {
            self.served as f64 / self.ideal as f64
        }
    }

    fn miss_pct(&self) -> f64 {
        100.0 * self.missed_vf_intervals as f64 / self.vf_intervals.max(1) as f64
    }

    fn any_miss_pct(&self) -> f64 {
        100.0 * self.intervals_with_miss as f64 / self.intervals.max(1) as f64
    }

    /// The longest spell short of a guarantee, in intervals.
    fn reclaim_max(&self) -> f64 {
        self.short_runs.iter().copied().max().unwrap_or(0) as f64
            / self.ticks_per_interval.max(1) as f64
    }

    fn reclaim_mean(&self) -> f64 {
        if self.short_runs.is_empty() {
            0.0
        } else {
            self.short_runs.iter().sum::<u64>() as f64
                / self.short_runs.len() as f64
                / self.ticks_per_interval.max(1) as f64
        }
    }
}

/// Runs one policy over one trace; `ideal_served` is the ideal's total for the same trace.
fn run(policy: Policy, vfs: &[Vf], args: &Args, trace: &Trace, ideal_served: u128) -> Stats {
    let n = vfs.len();
    let line = args.line.mbps();
    let tuning = args.tuning();
    let capacity = tuning.capacity(line);
    let per_interval = (args.interval_ms / TICK_MS) as usize;
    let per_sample = per_interval / SAMPLES as usize;
    let mut ctl: Controller<usize> = Controller::new(tuning);
    let mut meters = vec![RateMeter::default(); n];
    let mut bytes = vec![0u64; n];
    let mut max: Vec<u64> = match policy {
        Policy::StaticGuarantee => vfs
            .iter()
            .map(|v| v.guarantee.max(tuning.floor_mbps))
            .collect(),
        // The shim sets max = limit; the controller takes over at its first decision.
        Policy::StaticLimit | Policy::Controller | Policy::Ideal => {
            vfs.iter().map(|v| v.limit).collect()
        }
    };
    let mut st = Stats {
        ideal: ideal_served,
        ticks_per_interval: per_interval as u64,
        ..Stats::default()
    };
    let mut sent = vec![0u64; n];
    let mut owed = vec![0u64; n];
    let mut short = vec![0u64; n];
    for (tick, d) in trace.demand.iter().enumerate() {
        if policy == Policy::Controller && tick % per_sample == 0 {
            let at = tick as f64 * TICK_MS as f64 / 1000.0;
            let mut due = false;
            for i in 0..n {
                if let Some(rate) = meters[i].sample(at, bytes[i]) {
                    due |= reclaim_due(rate, max[i], vfs[i].guarantee, &tuning);
                }
            }
            let regular = tick % per_interval == 0;
            if regular || due {
                st.early += u64::from(!regular);
                let obs: Vec<Observation<usize>> = vfs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Observation {
                        key: i,
                        guarantee_mbps: v.guarantee,
                        limit_mbps: v.limit,
                        current_max_mbps: max[i],
                        measured_mbps: meters[i].take_peak(),
                        pinned: false,
                    })
                    .collect();
                for dec in ctl.step(line, &obs) {
                    if dec.changed {
                        max[dec.key] = dec.rate.max_mbps;
                        st.sets += 1;
                    }
                }
                debug_assert!(max.iter().sum::<u64>() <= capacity);
            }
        }
        let served = match policy {
            Policy::Ideal => ideal(
                capacity,
                &vfs.iter()
                    .zip(d)
                    .map(|(v, &d)| (v.guarantee, v.limit, d))
                    .collect::<Vec<_>>(),
            ),
            _ => serve(line, d, &max),
        };
        for i in 0..n {
            // Mbps for one tick, in bytes.
            bytes[i] += served[i] * TICK_MS * 125;
            let due = d[i].min(vfs[i].guarantee);
            sent[i] += served[i];
            owed[i] += due;
            if served[i] + (due / 100).max(1) < due {
                short[i] += 1;
            } else if short[i] > 0 {
                st.short_runs.push(short[i]);
                short[i] = 0;
            }
        }
        st.served += served.iter().map(|&x| x as u128).sum::<u128>();
        if (tick + 1) % per_interval == 0 || tick + 1 == trace.demand.len() {
            st.intervals += 1;
            st.vf_intervals += n as u64;
            if policy == Policy::Controller {
                st.borrowed += vfs
                    .iter()
                    .zip(&max)
                    .map(|(v, &m)| m.saturating_sub(v.guarantee) as u128)
                    .sum::<u128>();
            }
            let mut any = false;
            for i in 0..n {
                if sent[i] + (owed[i] / 100).max(1) < owed[i] {
                    st.missed_vf_intervals += 1;
                    any = true;
                }
                sent[i] = 0;
                owed[i] = 0;
            }
            st.intervals_with_miss += u64::from(any);
        }
    }
    st.short_runs.extend(short.into_iter().filter(|&r| r > 0));
    st
}

struct Report {
    vfs: Vec<Vf>,
    /// Per policy: per scenario, then all scenarios together.
    rows: Vec<(Policy, Vec<(String, Stats)>)>,
}

fn simulate(args: &Args) -> Report {
    let line = args.line.mbps();
    let vfs = vf_set(&mut Rng::new(args.seed), args.vfs, line, args.admitted);
    let scenarios: Vec<Scenario> = match args.scenario {
        ScenarioArg::All => Scenario::ALL.to_vec(),
        ScenarioArg::Bursty => vec![Scenario::Bursty],
        ScenarioArg::Diurnal => vec![Scenario::Diurnal],
        ScenarioArg::Incast => vec![Scenario::Incast],
    };
    let clock = Clock {
        scale: args.timescale,
    };
    let ticks = (args.seconds * 1000 / TICK_MS) as usize;
    let runs: Vec<(Scenario, Vec<Stats>)> = scenarios
        .iter()
        .map(|&s| {
            let mut rng = Rng::new(args.seed.wrapping_mul(31).wrapping_add(s as u64 + 1));
            let t = trace(s, &mut rng, &vfs, line, ticks, &clock);
            let best = run(Policy::Ideal, &vfs, args, &t, 0).served;
            let per = Policy::ALL
                .iter()
                .map(|&p| run(p, &vfs, args, &t, best))
                .collect();
            (s, per)
        })
        .collect();
    let rows = Policy::ALL
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            let mut total = Stats::default();
            let mut per: Vec<(String, Stats)> = runs
                .iter()
                .map(|(s, stats)| {
                    total.merge(&stats[k]);
                    (s.name().to_string(), stats[k].clone())
                })
                .collect();
            per.push(("all".to_string(), total));
            (p, per)
        })
        .collect();
    Report { vfs, rows }
}

impl Report {
    fn total(&self, p: Policy) -> Option<&Stats> {
        self.rows
            .iter()
            .find(|(q, _)| *q == p)
            .and_then(|(_, per)| per.last())
            .map(|(_, s)| s)
    }

    fn summary(&self) -> String {
        let c = self.total(Policy::Controller).cloned().unwrap_or_default();
        format!(
            "controller: utilisation {:.3} of ideal, guarantee misses {:.2}% of intervals, reclaim {:.2} intervals",
            c.utilisation(),
            c.miss_pct(),
            c.reclaim_max()
        )
    }

    fn render(&self, args: &Args) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "conrdma-sim: seed {}, {} s per scenario, interval {} ms, timescale {}, PF {} Mbps x headroom {}, lend_after {}, margin {}, spread {}",
            args.seed,
            args.seconds,
            args.interval_ms,
            args.timescale,
            args.line.mbps(),
            args.headroom,
            args.lend_after,
            args.margin,
            args.spread
        );
        let vf_list: Vec<String> = self
            .vfs
            .iter()
            .map(|v| format!("{}/{}", v.guarantee, v.limit))
            .collect();
        let _ = writeln!(out, "VFs (guarantee/limit Mbps): {}", vf_list.join(", "));
        let _ = writeln!(
            out,
            "miss %: share of VF-intervals below min(demand, guarantee); any %: share of intervals in which some VF missed\n"
        );
        for (p, per) in &self.rows {
            let _ = writeln!(out, "== {}", p.name());
            let _ = writeln!(
                out,
                "{:<9} {:>7} {:>8} {:>7} {:>7} {:>8} {:>6} {:>9} {:>8} {:>6}",
                "scenario",
                "Gbps",
                "of ideal",
                "miss %",
                "any %",
                "reclaim",
                "mean",
                "borrowed",
                "sets/int",
                "early"
            );
            for (name, s) in per {
                let n = s.intervals.max(1) as f64;
                let ticks_per_interval = (args.interval_ms / TICK_MS) as f64;
                let _ = writeln!(
                    out,
                    "{:<9} {:>7.2} {:>8.3} {:>7.2} {:>7.2} {:>8.2} {:>6.2} {:>9.2} {:>8.2} {:>6}",
                    name,
                    s.served as f64 / n / ticks_per_interval / 1000.0,
                    s.utilisation(),
                    s.miss_pct(),
                    s.any_miss_pct(),
                    s.reclaim_max(),
                    s.reclaim_mean(),
                    s.borrowed as f64 / n / 1000.0,
                    s.sets as f64 / n,
                    s.early
                );
            }
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("conrdma-sim: {e}");
        return ExitCode::FAILURE;
    }
    print!("{}", simulate(&args).render(&args));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["conrdma-sim"];
        argv.extend_from_slice(extra);
        let a = Args::parse_from(argv);
        a.check().unwrap();
        a
    }

    #[test]
    fn controller_reaches_the_goal_on_a_fixed_seed() {
        let a = args(&["--seed", "7", "--seconds", "1800"]);
        let r = simulate(&a);
        let c = r.total(Policy::Controller).unwrap();
        assert!(c.utilisation() >= 0.95, "{}", r.summary());
        assert!(c.miss_pct() < 1.0, "{}", r.summary());
        assert!(c.reclaim_max() <= 1.0, "{}", r.summary());
        let g = r.total(Policy::StaticGuarantee).unwrap();
        assert!(
            g.utilisation() < 0.8,
            "static max = guarantee: {}",
            g.utilisation()
        );
        assert_eq!(g.missed_vf_intervals, 0);
        let best = r.total(Policy::Ideal).unwrap();
        assert!((best.utilisation() - 1.0).abs() < 1e-12);
        assert_eq!(best.missed_vf_intervals, 0);
    }

    #[test]
    fn same_seed_same_figures_and_the_last_line_is_the_summary() {
        let a = args(&["--seed", "3", "--seconds", "120"]);
        let one = simulate(&a).render(&a);
        assert_eq!(one, simulate(&a).render(&a));
        let last = one.lines().last().unwrap();
        let rest = last.strip_prefix("controller: utilisation ").expect(last);
        let (u, rest) = rest.split_once(" of ideal, guarantee misses ").expect(last);
        let (m, rest) = rest.split_once("% of intervals, reclaim ").expect(last);
        let r = rest.strip_suffix(" intervals").expect(last);
        for x in [u, m, r] {
            assert!(x.parse::<f64>().is_ok(), "{last}");
        }
        assert_eq!(one.matches("\n== ").count(), Policy::ALL.len());
    }

    #[test]
    fn nic_shares_the_line_max_min_when_oversubscribed() {
        assert_eq!(serve(100, &[80, 80], &[0, 0]), vec![50, 50]);
        assert_eq!(serve(100, &[80, 10], &[60, 0]), vec![60, 10]);
        assert_eq!(serve(100, &[80, 80, 10], &[90, 90, 90]), vec![45, 45, 10]);
    }

    #[test]
    fn traces_are_seeded_and_within_bounds() {
        let line = 100_000;
        let vfs = vf_set(&mut Rng::new(1), 8, line, 0.9);
        assert!(vfs.iter().map(|v| v.guarantee).sum::<u64>() <= 90_000);
        assert!(vfs
            .iter()
            .all(|v| v.limit >= v.guarantee && v.limit <= line));
        let clock = Clock { scale: 1.0 };
        for s in Scenario::ALL {
            let a = trace(s, &mut Rng::new(5), &vfs, line, 2000, &clock);
            let b = trace(s, &mut Rng::new(5), &vfs, line, 2000, &clock);
            assert_eq!(a.demand, b.demand);
            assert!(a.demand.iter().flatten().all(|&d| d <= line));
            assert!(a.demand.iter().flatten().any(|&d| d > 0));
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--interval-ms", "300"][..],
            &["--headroom", "0.8"],
            &["--admitted", "0"],
            &["--vfs", "1"],
            &["--timescale", "0"],
        ] {
            let mut argv = vec!["conrdma-sim"];
            argv.extend_from_slice(bad);
            assert!(Args::parse_from(argv).check().is_err(), "{bad:?}");
        }
    }
}
