//! What this node can hand out: discovery joined with the node config into pools of PFs, each with a
//! capacity and its allocatable VFs. Rebuilt on every rescan; the ledger holds no copy of it.

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::NodeConfig;
use crate::discovery::{CharDev, Node};
use conrdma_api::network::PoolNetwork;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub pools: Vec<PoolInv>,
    pub rdma_cm: Option<CharDev>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolInv {
    pub name: String,
    pub pfs: Vec<PfInv>,
    /// Set: pods with their own network namespace get the VF moved in, with an address.
    pub network: Option<PoolNetwork>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PfInv {
    pub name: String,
    pub pci: String,
    pub line_rate_mbps: u64,
    /// Line rate x admission ratio: the most that may be guaranteed on this PF.
    pub capacity_mbps: u64,
    pub numa_node: Option<i32>,
    pub vfs: Vec<VfInv>,
}

/// A VF that can be allocated: it has a netdev, an RDMA device and that device's uverbs node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfInv {
    pub index: u32,
    pub pci: String,
    pub netdev: String,
    pub rdma_device: String,
    pub uverbs: CharDev,
    /// Soft-RoCE: re-created on the netdev wherever the netdev goes.
    #[serde(default)]
    pub rdma_soft: bool,
}

impl Inventory {
    pub fn build(node: &Node, cfg: &NodeConfig) -> Inventory {
        let mut pools: Vec<PoolInv> = cfg
            .pools
            .iter()
            .map(|p| PoolInv {
                name: p.name.clone(),
                pfs: Vec::new(),
                network: p.network(),
            })
            .collect();
        for pf in &node.pfs {
            let Some(line) = cfg.speed_override(&pf.netdev).or(pf.speed_mbps) else {
                warn!(pf = %pf.netdev, "PF reports no link speed and has no pf_speed in the node config: not offered");
                continue;
            };
            let vfs: Vec<VfInv> = pf
                .vfs
                .iter()
                .filter_map(|vf| {
                    let (Some(netdev), Some(rdma)) = (&vf.netdev, &vf.rdma) else {
                        warn!(pf = %pf.netdev, vf = vf.index, "VF has no netdev or RDMA device: not offered");
                        return None;
                    };
                    let Some(uverbs) = &rdma.uverbs else {
                        warn!(pf = %pf.netdev, vf = vf.index, rdma = %rdma.name, "RDMA device has no uverbs node: not offered");
                        return None;
                    };
                    Some(VfInv {
                        index: vf.index,
                        pci: vf.pci.clone(),
                        netdev: netdev.clone(),
                        rdma_device: rdma.name.clone(),
                        uverbs: uverbs.clone(),
                        rdma_soft: rdma.soft,
                    })
                })
                .collect();
            let pool_name = cfg.pool_of(&pf.netdev);
            let inv = PfInv {
                name: pf.netdev.clone(),
                pci: pf.pci.clone(),
                line_rate_mbps: line,
                capacity_mbps: (line as f64 * cfg.admission_ratio).floor() as u64,
                numa_node: pf.numa_node,
                vfs,
            };
            match pools.iter_mut().find(|p| p.name == pool_name) {
                Some(p) => p.pfs.push(inv),
                None => pools.push(PoolInv {
                    name: pool_name.to_string(),
                    pfs: vec![inv],
                    network: None,
                }),
            }
        }
        for p in &cfg.pools {
            for pf in &p.pfs {
                if !node.pfs.iter().any(|d| &d.netdev == pf) {
                    warn!(pool = %p.name, pf = %pf, "configured PF not found on this node");
                }
            }
        }
        Inventory {
            pools,
            rdma_cm: node.rdma_cm.clone(),
        }
    }

    /// Puts back the VFs in `lent` (PF name, the VF as booked) that this scan missed: a VF
    /// netdev lent to a pod's network namespace is invisible in the host's sysfs, yet the VF is
    /// still this node's (its count, and its device numbers for the pod's next container).
    pub fn keep_lent<'a>(&mut self, lent: impl IntoIterator<Item = (&'a str, &'a VfInv)>) {
        for (pf_name, vf) in lent {
            let Some(pf) = self
                .pools
                .iter_mut()
                .flat_map(|p| p.pfs.iter_mut())
                .find(|p| p.name == pf_name)
            else {
                continue;
            };
            if !pf.vfs.iter().any(|v| v.index == vf.index) {
                pf.vfs.push(vf.clone());
                pf.vfs.sort_by_key(|v| v.index);
            }
        }
    }

    pub fn pool(&self, name: &str) -> Option<&PoolInv> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn pf(&self, name: &str) -> Option<(&PoolInv, &PfInv)> {
        self.pools.iter().find_map(|pool| {
            pool.pfs
                .iter()
                .find(|pf| pf.name == name)
                .map(|pf| (pool, pf))
        })
    }

    pub fn vf_count(&self) -> usize {
        self.pools
            .iter()
            .flat_map(|p| &p.pfs)
            .map(|pf| pf.vfs.len())
            .sum()
    }
}
