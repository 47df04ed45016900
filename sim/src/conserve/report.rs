//! All scenarios under all policies, and the printed tables.

use std::fmt::Write as _;

use super::{run, trace, vf_set, Args, Clock, Policy, Scenario, ScenarioArg, Stats, Vf, TICK_MS};
use crate::Rng;

pub struct Report {
    pub vfs: Vec<Vf>,
    /// Per policy: per scenario, then all scenarios together.
    pub rows: Vec<(Policy, Vec<(String, Stats)>)>,
}

pub fn simulate(args: &Args) -> Report {
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
    pub fn total(&self, p: Policy) -> Option<&Stats> {
        self.rows
            .iter()
            .find(|(q, _)| *q == p)
            .and_then(|(_, per)| per.last())
            .map(|(_, s)| s)
    }

    pub fn summary(&self) -> String {
        let c = self.total(Policy::Controller).cloned().unwrap_or_default();
        format!(
            "controller: utilisation {:.3} of ideal, guarantee misses {:.2}% of intervals, reclaim {:.2} intervals",
            c.utilisation(),
            c.miss_pct(),
            c.reclaim_max()
        )
    }

    pub fn render(&self, args: &Args) -> String {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

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
}
