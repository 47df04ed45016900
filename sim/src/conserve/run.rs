//! The NIC model and one policy over one trace.

use conrdma_api::conserve::{ideal, reclaim_due, water_fill, Controller, Observation, RateMeter};

use super::{Args, Stats, Trace, Vf, SAMPLES, TICK_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    StaticGuarantee,
    StaticLimit,
    Controller,
    Ideal,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::StaticGuarantee,
        Policy::StaticLimit,
        Policy::Controller,
        Policy::Ideal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::StaticGuarantee => "static max = guarantee",
            Policy::StaticLimit => "static max = limit",
            Policy::Controller => "controller",
            Policy::Ideal => "ideal max-min",
        }
    }
}

/// What the NIC lets each VF send: `min(demand, max)`, shared max-min fairly when over the line.
pub fn serve(line: u64, demand: &[u64], max: &[u64]) -> Vec<u64> {
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

/// Runs one policy over one trace; `ideal_served` is the ideal's total for the same trace.
pub fn run(policy: Policy, vfs: &[Vf], args: &Args, trace: &Trace, ideal_served: u128) -> Stats {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_shares_the_line_max_min_when_oversubscribed() {
        assert_eq!(serve(100, &[80, 80], &[0, 0]), vec![50, 50]);
        assert_eq!(serve(100, &[80, 10], &[60, 0]), vec![60, 10]);
        assert_eq!(serve(100, &[80, 80, 10], &[90, 90, 90]), vec![45, 45, 10]);
    }
}
