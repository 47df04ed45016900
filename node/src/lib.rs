//! ConRDMA's node library: everything that touches a node, each piece behind a root path or a
//! trait so tests run real I/O under a temporary root. The cluster-side vocabulary (rates, requests,
//! records, reports, the controller's algorithm) is `conrdma-api`, re-exported here as `api`.

pub mod config;
pub mod crash;
pub mod discovery;
pub mod error;
pub mod inventory;
pub mod ledger;
pub mod limiter;
pub mod netns;
pub mod private_fs;
pub mod rdma_netlink;
pub mod report;
pub mod simulate;

pub use conrdma_api as api;

pub use config::NodeConfig;
pub use discovery::{discover, CharDev, Node, Pf, RdmaDevice, Vf};
pub use error::{NodeError, Result};
pub use inventory::Inventory;
pub use ledger::{Ledger, PodRef};
