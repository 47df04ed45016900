//! The VF set and the seeded demand traces.

use super::TICK_MS;
use crate::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Bursty,
    Diurnal,
    Incast,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Bursty, Scenario::Diurnal, Scenario::Incast];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bursty => "bursty",
            Scenario::Diurnal => "diurnal",
            Scenario::Incast => "incast",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Vf {
    pub guarantee: u64,
    pub limit: u64,
}

/// N-1 guaranteed VFs sharing `admitted` x line in random proportions, limits 1.5-4x their
/// guarantee, and one best-effort VF limited to a quarter of the line.
pub fn vf_set(rng: &mut Rng, n: usize, line: u64, admitted: f64) -> Vec<Vf> {
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
pub struct Trace {
    pub demand: Vec<Vec<u64>>,
}

/// Trace durations in ticks.
pub struct Clock {
    pub scale: f64,
}

impl Clock {
    pub fn ticks(&self, secs: f64) -> usize {
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

pub fn trace(
    s: Scenario,
    rng: &mut Rng,
    vfs: &[Vf],
    line: u64,
    ticks: usize,
    clock: &Clock,
) -> Trace {
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
                let phase = (rng.next_u64() % 4) as f64 * std::f64::consts::FRAC_PI_2;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
