//! The work-conserving controller against static rates and the ideal, on one PF with N VFs and
//! seeded demand traces (binary `conrdma-sim`).
//!
//! The NIC is modelled in 50 ms ticks: in each, a VF sends `min(demand, max_tx_rate)`, and when
//! that adds up to more than the line the line is shared max-min fairly (no `min_tx_rate`, as on
//! most drivers). The controller runs as the node daemon runs it: it reads every VF's byte counter
//! four times per interval ([`RateMeter`](conrdma_api::conserve::RateMeter)), decides every
//! interval from the peak window rates, and decides at once when a lender runs at its lowered cap
//! ([`reclaim_due`](conrdma_api::conserve::reclaim_due)). Policies:
//! - `static max = guarantee` (the floor for a best-effort VF);
//! - `static max = limit` (what the shim sets without the controller);
//! - `controller`: [`Controller`](conrdma_api::conserve::Controller);
//! - `ideal max-min`: [`ideal`](conrdma_api::conserve::ideal), recomputed every tick with the true
//!   demands.
//!
//! A VF misses its guarantee in an interval when it sent less than `min(demand, guarantee)` over
//! that interval (beyond 1% slack); misses are counted per VF and interval. Reclaim is the longest
//! time, in intervals, that any VF was held below `min(demand, guarantee)` without a break (in
//! ticks: a lender whose demand returns is short until its loan is back). The last line printed is `controller:
//! utilisation U of ideal, guarantee misses M% of intervals, reclaim R intervals`, over all
//! scenarios, for comparing runs.
//!
//! One concern per module: [`args`] (flags), [`trace`] (the VF set and demand traces), [`run`]
//! (the NIC model and one policy over one trace), [`stats`] (what a run counts), [`report`] (all
//! scenarios and policies, and the printed tables).

pub mod args;
pub mod report;
pub mod run;
pub mod stats;
pub mod trace;

pub use args::{Args, ScenarioArg};
pub use report::{simulate, Report};
pub use run::{run, serve, Policy};
pub use stats::Stats;
pub use trace::{trace, vf_set, Clock, Scenario, Trace, Vf};

/// The NIC model's time step.
pub const TICK_MS: u64 = 50;
/// Counter samples per interval (as in the node daemon).
pub const SAMPLES: u64 = 4;
