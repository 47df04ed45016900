//! What a VF is set to and what it carried: the words the limiter, the controller, allocation records
//! and usage reports share.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A VF's transmit rates, Mbps. 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VfRate {
    pub min_mbps: u64,
    pub max_mbps: u64,
}

impl VfRate {
    /// No guarantee and no ceiling: what a limiter's reset sets.
    pub const NONE: VfRate = VfRate {
        min_mbps: 0,
        max_mbps: 0,
    };

    pub fn new(min_mbps: u64, max_mbps: u64) -> VfRate {
        VfRate { min_mbps, max_mbps }
    }
}

impl fmt::Display for VfRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "min_tx_rate {} Mbps, max_tx_rate {} Mbps",
            self.min_mbps, self.max_mbps
        )
    }
}

/// Bytes a VF has carried since its counters started (they only grow, except across a driver
/// reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfCounters {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}
