//! The workload a seed yields; identical for both modes.

use super::{SimConfig, DEMAND, NIC_MIX};
use crate::Rng;

#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Arrival time, s.
    pub arrive: f64,
    pub ask_mbps: u64,
    /// Lifetime, s.
    pub lifetime: f64,
}

/// Poisson arrivals sized so the offered guaranteed bandwidth is `load` x the cluster's capacity.
pub fn workload(cfg: &SimConfig) -> Vec<PodSpec> {
    let mut rng = Rng::new(cfg.seed);
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
            let mut pick = rng.below(total_w as usize).unwrap_or(0) as u32;
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
