//! The node's figures per pool and PF, computed once from the inventory and the ledger's records:
//! node reports, `conrdmactl status` and the ledger's own usage all read this.

use std::collections::{HashMap, HashSet};

use conrdma_api::report::{NodeReport, PfReport, PoolReport, REPORT_VERSION};
use conrdma_api::AllocationRecord;

use crate::inventory::Inventory;

/// Each pool's capacity, guaranteed sum, pods and free VFs, per PF and summed. Records on PFs the
/// inventory no longer has are not counted.
pub fn pool_reports<'a>(
    inv: &Inventory,
    held: impl IntoIterator<Item = &'a AllocationRecord>,
) -> Vec<PoolReport> {
    let mut load: HashMap<&str, (u64, u32, HashSet<u32>)> = HashMap::new();
    for rec in held {
        let e = load.entry(rec.pf.as_str()).or_default();
        e.0 = e.0.saturating_add(rec.guaranteed_mbps);
        e.1 += 1;
        e.2.insert(rec.vf);
    }
    inv.pools
        .iter()
        .map(|pool| {
            let pfs = pool
                .pfs
                .iter()
                .map(|pf| {
                    let (guaranteed, pods, taken) = load
                        .get(pf.name.as_str())
                        .map(|(g, n, t)| {
                            (
                                *g,
                                *n,
                                pf.vfs.iter().filter(|v| t.contains(&v.index)).count(),
                            )
                        })
                        .unwrap_or((0, 0, 0));
                    PfReport {
                        name: pf.name.clone(),
                        line_rate_mbps: pf.line_rate_mbps,
                        capacity_mbps: pf.capacity_mbps,
                        guaranteed_mbps: guaranteed,
                        pods,
                        vfs_total: pf.vfs.len() as u32,
                        vfs_free: (pf.vfs.len() - taken) as u32,
                    }
                })
                .collect();
            PoolReport::from_pfs(&pool.name, pfs)
        })
        .collect()
}

/// The node report the plugin sends to the placement webhook.
pub fn node_report<'a>(
    node: &str,
    time_unix_ms: u64,
    inv: &Inventory,
    held: impl IntoIterator<Item = &'a AllocationRecord>,
) -> NodeReport {
    NodeReport {
        version: REPORT_VERSION,
        node: node.to_string(),
        time_unix_ms,
        pools: pool_reports(inv, held),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_inventory_counts_per_pf() {
        use crate::discovery::CharDev;
        use crate::inventory::{PfInv, PoolInv, VfInv};
        let vf = |i: u32| VfInv {
            index: i,
            pci: format!("0000:3b:00.{i}"),
            netdev: format!("v{i}"),
            rdma_device: format!("mlx5_{i}"),
            uverbs: CharDev {
                name: format!("uverbs{i}"),
                major: 231,
                minor: i as i64,
            },
            rdma_soft: false,
        };
        let pfinv = |name: &str, cap: u64| PfInv {
            name: name.into(),
            pci: String::new(),
            line_rate_mbps: cap,
            capacity_mbps: cap / 2,
            numa_node: None,
            vfs: (0..4).map(vf).collect(),
        };
        let inv = Inventory {
            pools: vec![PoolInv {
                name: "default".into(),
                pfs: vec![pfinv("a", 100_000), pfinv("b", 25_000)],
                network: None,
            }],
            rdma_cm: None,
        };
        let rec = |pf: &str, vf: u32, g: u64| AllocationRecord {
            pool: "default".into(),
            pf: pf.into(),
            vf,
            vf_pci: String::new(),
            rdma_device: String::new(),
            netdev: String::new(),
            guaranteed_mbps: g,
            limit_mbps: g,
            uverbs: String::new(),
            rdma_cgroup: Default::default(),
            start_max_mbps: None,
            address: None,
            ifname: None,
        };
        let held = [rec("a", 0, 10_000), rec("a", 2, 5_000), rec("gone", 0, 1)];
        let r = node_report("worker-1", 5, &inv, held.iter());
        r.validate().unwrap();
        let pool = &r.pools[0];
        assert_eq!(
            (pool.capacity_mbps, pool.guaranteed_mbps, pool.pods),
            (62_500, 15_000, 2)
        );
        assert_eq!((pool.vfs_total, pool.vfs_free), (8, 6));
        assert_eq!(pool.pfs[0].headroom_mbps(), 35_000);
        assert_eq!((pool.pfs[1].guaranteed_mbps, pool.pfs[1].vfs_free), (0, 4));
    }
}
