//! ConRDMA's NRI plugin: reads a pod's `rdma.conrdma.io/*` annotations at container creation,
//! admits its bandwidth against the node's ledger, picks a VF and adjusts the container's OCI spec.
//! The binary only wires this library to the NRI socket.

pub mod adjust;
pub mod cgroup;
pub mod conserve;
pub mod error;
pub mod node;
pub mod plugin;
pub mod podnet;
pub mod report;
pub mod startup;
pub mod steering;
pub mod sweep;

pub use error::PluginError;
pub use node::NodeState;
pub use plugin::Plugin;
