//! The printed comparison.

use super::{Mode, Outcome, SimConfig, NIC_MIX};

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
