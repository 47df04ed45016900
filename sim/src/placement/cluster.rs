//! The simulated cluster: nodes and their PFs, what a node reports, the VF-count scheduler's
//! choice (a) and the node's own admission.

use std::cmp::Reverse;
use std::collections::HashMap;

use conrdma_api::report::{NodeReport, PfReport, PoolReport, REPORT_VERSION};

use super::{SimConfig, NIC_MIX};
use crate::Rng;

#[derive(Debug, Clone)]
pub struct SimPf {
    pub name: String,
    pub capacity: u64,
    pub guaranteed: u64,
    pub vfs_free: u32,
    /// The pods on this PF, by index into the workload.
    pub pods: Vec<usize>,
    pub overcommitted: bool,
}

#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub pfs: Vec<SimPf>,
}

impl SimNode {
    pub fn vfs_free(&self) -> u32 {
        self.pfs.iter().map(|p| p.vfs_free).sum()
    }

    /// The node report the NRI plugin would send.
    pub fn report(&self, vfs_per_pf: u32) -> NodeReport {
        let pfs = self
            .pfs
            .iter()
            .map(|p| PfReport {
                name: p.name.clone(),
                line_rate_mbps: p.capacity,
                capacity_mbps: p.capacity,
                guaranteed_mbps: p.guaranteed,
                pods: p.pods.len() as u32,
                vfs_total: vfs_per_pf,
                vfs_free: p.vfs_free,
            })
            .collect();
        NodeReport {
            version: REPORT_VERSION,
            node: self.name.clone(),
            time_unix_ms: 0,
            pools: vec![PoolReport::from_pfs("default", pfs)],
        }
    }
}

/// Where a pod runs: (node, PF) indices.
pub type Spot = (usize, usize);

pub struct Cluster {
    pub nodes: Vec<SimNode>,
    /// Node names, in node order (what kube-scheduler passes the extender).
    pub names: Vec<String>,
    pub index: HashMap<String, usize>,
    vfs_per_pf: u32,
}

impl Cluster {
    /// Empty nodes in the [`NIC_MIX`].
    pub fn new(cfg: &SimConfig) -> Cluster {
        let nodes: Vec<SimNode> = (0..cfg.nodes)
            .map(|i| SimNode {
                name: format!("node-{i:03}"),
                pfs: (0..cfg.pfs_per_node)
                    .map(|j| SimPf {
                        name: format!("ens{j}"),
                        capacity: NIC_MIX[i % NIC_MIX.len()],
                        guaranteed: 0,
                        vfs_free: cfg.vfs_per_pf,
                        pods: Vec::new(),
                        overcommitted: false,
                    })
                    .collect(),
            })
            .collect();
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let index = names.iter().cloned().zip(0..).collect();
        Cluster {
            nodes,
            names,
            index,
            vfs_per_pf: cfg.vfs_per_pf,
        }
    }

    pub fn report(&self, n: usize) -> NodeReport {
        self.nodes[n].report(self.vfs_per_pf)
    }

    /// (a): the node with the most free VFs (ties at random), and on it the PF with the most free
    /// VFs; bandwidth is not looked at.
    pub fn by_vf_count(&self, ties: &mut Rng) -> Option<Spot> {
        let best = self.nodes.iter().map(SimNode::vfs_free).max().unwrap_or(0);
        if best == 0 {
            return None;
        }
        let tied: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].vfs_free() == best)
            .collect();
        let n = tied[ties.below(tied.len())?];
        let pfs = &self.nodes[n].pfs;
        let pf = (0..pfs.len())
            .max_by_key(|&j| (pfs[j].vfs_free, Reverse(j)))
            .unwrap_or(0);
        Some((n, pf))
    }

    /// The node's own admission, as the NRI plugin's ledger does it: the PF with the most headroom
    /// that fits and has a free VF; ties to fewer pods.
    pub fn admission(&self, n: usize, ask: u64) -> Option<usize> {
        let pfs = &self.nodes[n].pfs;
        (0..pfs.len())
            .filter(|&j| {
                let f = &pfs[j];
                f.vfs_free > 0 && f.capacity.saturating_sub(f.guaranteed) >= ask
            })
            .max_by_key(|&j| {
                let f = &pfs[j];
                (f.capacity - f.guaranteed, Reverse(f.pods.len()), Reverse(j))
            })
    }

    /// Puts pod `p` asking `ask` on a spot; when that over-commits the PF, the pods now on it.
    pub fn place(&mut self, (n, j): Spot, p: usize, ask: u64) -> Option<&[usize]> {
        let pf = &mut self.nodes[n].pfs[j];
        pf.guaranteed += ask;
        pf.vfs_free -= 1;
        pf.pods.push(p);
        if pf.guaranteed > pf.capacity {
            pf.overcommitted = true;
            return Some(&pf.pods);
        }
        None
    }

    /// Takes pod `p` asking `ask` off its spot.
    pub fn release(&mut self, (n, j): Spot, p: usize, ask: u64) {
        let pf = &mut self.nodes[n].pfs[j];
        pf.guaranteed -= ask;
        pf.vfs_free += 1;
        pf.pods.retain(|&q| q != p);
    }

    fn pfs(&self) -> impl Iterator<Item = &SimPf> {
        self.nodes.iter().flat_map(|n| n.pfs.iter())
    }

    /// PFs that were ever over-committed.
    pub fn overcommitted_pfs(&self) -> usize {
        self.pfs().filter(|p| p.overcommitted).count()
    }

    pub fn capacity(&self) -> u64 {
        self.pfs().map(|p| p.capacity).sum()
    }
}
