//! ConRDMA's domain library: everything the node plugin, the shim and the placement webhook share.
//!
//! No async runtime and no containerd or HTTP types live here, so every piece can be tested with
//! plain real I/O under a temporary root.

pub mod allocation;
pub mod config;
pub mod conserve;
pub mod crash;
pub mod discovery;
pub mod error;
pub mod inventory;
pub mod ledger;
pub mod limiter;
pub mod netns;
pub mod network;
pub mod private_fs;
pub mod rate;
pub mod rdma_netlink;
pub mod report;
pub mod request;
pub mod simulate;

pub use allocation::AllocationRecord;
pub use config::NodeConfig;
pub use discovery::{discover, CharDev, Node, Pf, RdmaDevice, Vf};
pub use error::{CoreError, Result};
pub use inventory::Inventory;
pub use ledger::{Ledger, PodRef};
pub use rate::Rate;
pub use request::Request;

/// Prefix of every pod annotation ConRDMA reads or writes.
pub const ANNOTATION_PREFIX: &str = "rdma.conrdma.io/";
