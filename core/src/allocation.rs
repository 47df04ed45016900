//! The allocation record: the one JSON value the NRI plugin writes (as the container annotation
//! `rdma.conrdma.io/allocation`) and the shim, `crictl inspect` and tests read. Decisions are data:
//! nothing downstream recomputes them.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRecord {
    pub pool: String,
    /// PF netdev name.
    pub pf: String,
    /// VF index on the PF (the number netlink's VF attributes use).
    pub vf: u32,
    pub vf_pci: String,
    pub rdma_device: String,
    pub netdev: String,
    /// Admitted share; 0 for a best-effort pod that asked only for a limit or a pool.
    pub guaranteed_mbps: u64,
    /// Ceiling the VF is held to (the shim or plugin enforces it as max_tx_rate).
    pub limit_mbps: u64,
    /// The uverbs node handed to the containers, e.g. `/dev/infiniband/uverbs3`.
    pub uverbs: String,
    /// What happened to the rdma cgroup limits: the `rdma.max` line set, or why none was set.
    #[serde(default)]
    pub rdma_cgroup: String,
}

impl AllocationRecord {
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, CoreError> {
        serde_json::from_str(text).map_err(|e| CoreError::InvalidAnnotation {
            key: crate::request::KEY_ALLOCATION.into(),
            value: text.chars().take(120).collect(),
            reason: e.to_string(),
            accepted: "the JSON object written by the ConRDMA NRI plugin".into(),
        })
    }
}
