//! `conrdma-placement`: the cluster's RDMA bandwidth picture and a kube-scheduler extender on top of it.
//!
//! Nodes (the NRI plugin) and shims post reports; kube-scheduler calls `/filter` and `/prioritize`
//! with the upstream extender v1 JSON. The decision logic lives in [`store`] and is plain
//! synchronous code, so the HTTP handlers, the benchmarks and the placement simulator (in
//! `conrdma-sim`) all call the very same functions.

pub mod config;
pub mod error;
pub mod extender;
mod fits;
pub mod http;
pub mod metrics;
pub mod serve;
pub mod store;
pub mod verbs;

pub use config::{Config, Policy, UnknownNodes};
pub use error::{PlacementError, Result};
pub use serve::{run, start, Running};
pub use store::{Fit, Store, Why};
