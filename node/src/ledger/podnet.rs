//! Where a pod's VF netdev is, for pods whose VF moves into their network namespace.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Held;
use crate::inventory::VfInv;

/// A VF netdev lent to a pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    /// The pod's network namespace (the nsfs file containerd bind-mounts).
    pub netns: PathBuf,
    pub phase: NetPhase,
    /// The netdev's MTU on the host before the move, put back on return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mtu: Option<u32>,
    /// The uverbs node of the Soft-RoCE device re-created in the pod (it replaces the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_uverbs: Option<crate::discovery::CharDev>,
    /// The VF as discovered when it was booked: the host's sysfs stops showing it once its
    /// netdev is in the pod, and a restarted plugin still needs it.
    pub vf: VfInv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetPhase {
    /// Address booked; the move may have started (or been cut short by a crash).
    Booked,
    /// In the pod, addressed and up.
    InPod,
    /// Back on the host under its own name: the VF may go to the next pod once the booking is
    /// released.
    Returned,
}

impl Held {
    /// Whether the VF netdev may be anywhere but home, so the booking must not be released yet.
    pub fn net_out(&self) -> bool {
        self.net
            .as_ref()
            .is_some_and(|n| n.phase != NetPhase::Returned)
    }
}
