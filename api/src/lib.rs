//! What the cluster and the node agree on: bandwidth rates, pod requests, the allocation record,
//! the report schema with its endpoint paths, the work-conserving algorithm and the error classes
//! every wire maps. Pure: no node I/O, no async runtime, so the placement webhook links only this.

pub mod allocation;
pub mod conserve;
pub mod error;
pub mod network;
pub mod rate;
pub mod report;
pub mod request;
pub mod vf;

pub use allocation::AllocationRecord;
pub use error::{ApiError, ErrorClass};
pub use rate::Rate;
pub use request::Request;
pub use vf::{VfCounters, VfRate};

/// Prefix of every pod annotation ConRDMA reads or writes.
pub const ANNOTATION_PREFIX: &str = "rdma.conrdma.io/";
