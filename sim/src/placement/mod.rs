//! A deterministic placement simulator: one seeded workload scheduled (a) by VF count only, as
//! kube-scheduler does with the SR-IOV device plugin's extended resource, and (b) through the
//! placement webhook's `/filter` and `/prioritize` (the very functions in
//! [`conrdma_placement::verbs`]), so the two can be compared on the pods that get the bandwidth
//! they asked for (binary `conrdma-placement-sim`).
//!
//! Model (also in `docs/placement.md`):
//! - nodes in a repeating mix of 25, 100 and 200 Gbit/s NICs, `pfs_per_node` PFs each with
//!   `vfs_per_pf` VFs; capacity = line rate (admission ratio 1);
//! - pods arrive as a Poisson process sized so the offered guaranteed bandwidth is `load` x the
//!   cluster's capacity; each asks one guarantee from a fixed spread (1 to 100 Gbit/s) and lives
//!   an exponential lifetime;
//! - a pod that cannot be placed waits (retried every `retry_s`, like kube-scheduler's
//!   unschedulable queue) and gives up after `patience_s`;
//! - (a) picks the node with most free VFs and, on it, the PF with most free VFs; nothing checks
//!   bandwidth. (b) calls filter then prioritize over all nodes and picks the top score (ties at
//!   random, as kube-scheduler does); the node then admits like the NRI plugin's ledger (the PF with
//!   the most headroom that fits). Node reports reach the webhook as soon as a node changes.
//! - a PF is over-committed when its guarantees exceed its capacity; every pod on it at such a
//!   moment has its bandwidth not met. A placed pod whose PF never over-commits during its life has
//!   its bandwidth met.
//!
//! One concern per module: [`workload`] (the seeded pods), [`cluster`] (nodes, PFs, the VF-count
//! choice and the node's own admission), [`run`] (the event loop and the webhook's choice),
//! [`table`] (the printed comparison).

pub mod cluster;
pub mod run;
pub mod table;
pub mod workload;

use conrdma_placement::Policy;

pub use run::simulate;
pub use table::table;

/// Parameters of one simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub pfs_per_node: usize,
    pub vfs_per_pf: u32,
    /// Offered guaranteed bandwidth as a multiple of the cluster's capacity.
    pub load: f64,
    pub pods: usize,
    pub mean_lifetime_s: f64,
    pub retry_s: f64,
    pub patience_s: f64,
    pub policy: Policy,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            nodes: 200,
            pfs_per_node: 2,
            vfs_per_pf: 16,
            load: 1.0,
            pods: 20_000,
            mean_lifetime_s: 600.0,
            retry_s: 10.0,
            patience_s: 300.0,
            policy: Policy::BestFit,
        }
    }
}

/// Line rates of the node mix, Mbps: node i gets `NIC_MIX[i % 3]` on every PF.
pub const NIC_MIX: [u64; 3] = [25_000, 100_000, 200_000];
/// Guarantees pods ask for (Mbps) and their weights (percent).
pub const DEMAND: [(u64, u32); 6] = [
    (1_000, 20),
    (5_000, 25),
    (10_000, 25),
    (25_000, 15),
    (50_000, 10),
    (100_000, 5),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// (a) kube-scheduler counting VFs (the SR-IOV device plugin's extended resource).
    VfCount,
    /// (b) kube-scheduler with the placement webhook as extender.
    Webhook,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::VfCount => "VF count only",
            Mode::Webhook => "ConRDMA webhook",
        }
    }
}

/// What happened to the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub arrived: usize,
    pub placed: usize,
    /// Placed pods whose PF never had more guaranteed than its capacity while they ran.
    pub met: usize,
    pub not_met: usize,
    /// Pods that waited `patience_s` without being placed.
    pub gave_up: usize,
    /// Pods the chosen node refused (the webhook's picture was wrong); 0 with immediate reports.
    pub refused_at_node: usize,
    pub overcommitted_pfs: usize,
    pub total_pfs: usize,
    /// Guaranteed bandwidth of pods whose bandwidth was met, integrated over the arrival horizon,
    /// as a percentage of the cluster's capacity over the same time.
    pub delivered_share_pct: u64,
}

/// Both modes and the ratio of pods placed with their bandwidth met, (b) over (a).
pub fn compare(cfg: &SimConfig) -> (Outcome, Outcome, f64) {
    let a = simulate(cfg, Mode::VfCount);
    let b = simulate(cfg, Mode::Webhook);
    let ratio = if a.met == 0 {
        f64::INFINITY
    } else {
        b.met as f64 / a.met as f64
    };
    (a, b, ratio)
}
