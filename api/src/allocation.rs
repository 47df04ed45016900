//! The allocation record: the one JSON value the NRI plugin writes (as the container annotation
//! `rdma.conrdma.io/allocation`) and the shim, `crictl inspect` and tests read. Decisions are data:
//! nothing downstream recomputes them.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::vf::VfRate;

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
    /// What happened to the rdma cgroup limits: the `rdma.max` value set, or why none was set.
    #[serde(default)]
    pub rdma_cgroup: RdmaCgroupLimit,
    /// The maximum the runtime sets when the pod starts, where the node's work-conserving
    /// controller steers the pool: the guarantee (1 Mbps for a best-effort pod), for which the
    /// controller has already made room on the PF before the plugin answered, so the PF's sum of
    /// maxima stays within its bound; the controller raises it from there. Absent: the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_max_mbps: Option<u64>,
    /// The VF's address inside the pod (`10.77.0.12/24`), where its pool has a network section
    /// and the pod its own network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The VF's interface name inside the pod (`rdma0`), with `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// The pod's rdma cgroup limit, decided once at admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", from = "RdmaCgroupWire")]
pub enum RdmaCgroupLimit {
    /// The `rdma.max` value set on the pod's containers: `mlx5_3 hca_handle=2 hca_object=max`.
    Set { max: String },
    /// No limit was set, and why (nothing asked, or the host cannot take one).
    NotSet { reason: String },
}

impl Default for RdmaCgroupLimit {
    fn default() -> Self {
        RdmaCgroupLimit::NotSet {
            reason: String::new(),
        }
    }
}

impl RdmaCgroupLimit {
    /// The `rdma.max` value, where one was set.
    pub fn max(&self) -> Option<&str> {
        match self {
            RdmaCgroupLimit::Set { max } => Some(max),
            RdmaCgroupLimit::NotSet { .. } => None,
        }
    }
}

/// Reads the tagged form and the string earlier releases wrote into ledgers and annotations: the
/// `rdma.max` value, or `not set: <reason>`, or empty.
#[derive(Deserialize)]
#[serde(untagged)]
enum RdmaCgroupWire {
    Tagged(RdmaCgroupTagged),
    Legacy(String),
}

#[derive(Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum RdmaCgroupTagged {
    Set { max: String },
    NotSet { reason: String },
}

impl From<RdmaCgroupWire> for RdmaCgroupLimit {
    fn from(w: RdmaCgroupWire) -> Self {
        match w {
            RdmaCgroupWire::Tagged(RdmaCgroupTagged::Set { max }) => RdmaCgroupLimit::Set { max },
            RdmaCgroupWire::Tagged(RdmaCgroupTagged::NotSet { reason }) => {
                RdmaCgroupLimit::NotSet { reason }
            }
            RdmaCgroupWire::Legacy(s) => match s.strip_prefix("not set: ") {
                Some(reason) => RdmaCgroupLimit::NotSet {
                    reason: reason.to_string(),
                },
                None if s.is_empty() => RdmaCgroupLimit::default(),
                None => RdmaCgroupLimit::Set { max: s },
            },
        }
    }
}

impl AllocationRecord {
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The rate the runtime sets at the pod's start: the guarantee as minimum, and as maximum
    /// `start_max_mbps` where the controller steers the VF, else the limit.
    pub fn start_rate(&self) -> VfRate {
        VfRate::new(
            self.guaranteed_mbps,
            self.start_max_mbps.unwrap_or(self.limit_mbps),
        )
    }

    pub fn from_json(text: &str) -> Result<Self, ApiError> {
        serde_json::from_str(text).map_err(|e| ApiError::InvalidAnnotation {
            key: crate::request::KEY_ALLOCATION.into(),
            value: text.chars().take(120).collect(),
            reason: e.to_string(),
            accepted: "the JSON object written by the ConRDMA NRI plugin".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record as a plugin of the previous release wrote it, with `start_max_mbps` added.
    fn rec(start_max_mbps: Option<u64>) -> AllocationRecord {
        let mut r = AllocationRecord::from_json(
            r#"{"pool":"default","pf":"ens1f0","vf":2,"vf_pci":"0000:3b:00.3","rdma_device":"mlx5_3",
                "netdev":"ens1f0v2","guaranteed_mbps":10000,"limit_mbps":25000,
                "uverbs":"/dev/infiniband/uverbs3","rdma_cgroup":""}"#,
        )
        .unwrap();
        assert_eq!(r.start_max_mbps, None);
        r.start_max_mbps = start_max_mbps;
        r
    }

    #[test]
    fn rdma_cgroup_is_tagged_and_earlier_strings_still_read() {
        let set = RdmaCgroupLimit::Set {
            max: "mlx5_3 hca_handle=2 hca_object=max".into(),
        };
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(
            json,
            r#"{"state":"set","max":"mlx5_3 hca_handle=2 hca_object=max"}"#
        );
        assert_eq!(serde_json::from_str::<RdmaCgroupLimit>(&json).unwrap(), set);
        let legacy =
            |s: &str| serde_json::from_value::<RdmaCgroupLimit>(serde_json::json!(s)).unwrap();
        assert_eq!(legacy("mlx5_3 hca_handle=2 hca_object=max"), set);
        assert_eq!(
            legacy("not set: cgroup v1 host"),
            RdmaCgroupLimit::NotSet {
                reason: "cgroup v1 host".into()
            }
        );
        assert_eq!(legacy(""), RdmaCgroupLimit::default());
        assert_eq!(rec(None).rdma_cgroup.max(), None);
    }

    #[test]
    fn starts_at_the_limit_unless_steered() {
        assert_eq!(rec(None).start_rate(), VfRate::new(10_000, 25_000));
        assert_eq!(rec(Some(10_000)).start_rate(), VfRate::new(10_000, 10_000));
    }

    #[test]
    fn start_max_is_written_only_when_set_and_old_records_still_read() {
        let plain = rec(None).to_json();
        assert!(!plain.contains("start_max_mbps"), "{plain}");
        assert_eq!(AllocationRecord::from_json(&plain).unwrap(), rec(None));
        let steered = rec(Some(10_000)).to_json();
        assert!(steered.contains("\"start_max_mbps\":10000"), "{steered}");
        assert_eq!(
            AllocationRecord::from_json(&steered).unwrap(),
            rec(Some(10_000))
        );
    }
}
