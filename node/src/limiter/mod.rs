//! VF rate limiting: one trait, two implementations.
//!
//! - [`netlink::NetlinkLimiter`] talks to the kernel like `ip link set <pf> vf <n> min_tx_rate ..
//!   max_tx_rate ..` does (RTM_SETLINK with IFLA_VF_RATE on the PF) and reads rates and per-VF
//!   counters back from the PF's VF info list.
//! - [`simulated::SimulatedLimiter`] keeps the rates in the files the simulated NIC (and mlx5's
//!   legacy SR-IOV sysfs) has per VF: `<root>/sys/class/net/<pf>/device/sriov/<vf>/{min_tx_rate,
//!   max_tx_rate,stats}`, so tests and other processes can watch and drive the "hardware".
//!
//! Rates are whole Mbps; 0 means "no limit" (max) or "no guarantee" (min), as in the kernel API.
//! Every operation is idempotent: setting the same rate twice or resetting a reset VF is fine.
//!
//! Drivers differ in what they accept: mlx5 takes both a minimum and a maximum, igb refuses any
//! minimum with EINVAL. [`RateLimiter::set`] therefore retries with the maximum alone when the
//! minimum is refused, and says so in [`Applied`] instead of failing: the ceiling still holds,
//! and the caller records that the guarantee is not enforced in hardware.

pub mod netlink;
pub mod simulated;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorClass, NodeError, Result};

pub use netlink::NetlinkLimiter;
pub use simulated::SimulatedLimiter;

/// The rate and counter types are the cluster's vocabulary too (allocation records, reports).
pub use conrdma_api::vf::{VfCounters, VfRate};

/// Refuses a minimum above a non-zero maximum (no driver accepts it) and values that do not
/// fit the kernel's 32-bit fields.
pub(crate) fn check_rate(rate: VfRate, pf: &str, vf: u32) -> Result<()> {
    if rate.max_mbps != 0 && rate.min_mbps > rate.max_mbps {
        return Err(limiter_error(
            pf,
            vf,
            format!(
                "min_tx_rate {} Mbps is above max_tx_rate {} Mbps",
                rate.min_mbps, rate.max_mbps
            ),
            ErrorClass::InvalidInput,
        ));
    }
    for (name, v) in [
        ("min_tx_rate", rate.min_mbps),
        ("max_tx_rate", rate.max_mbps),
    ] {
        if v > u64::from(u32::MAX) {
            return Err(limiter_error(
                pf,
                vf,
                format!("{name} {v} Mbps does not fit the kernel's 32-bit rate"),
                ErrorClass::InvalidInput,
            ));
        }
    }
    Ok(())
}

/// What [`RateLimiter::set`] actually left on the VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub requested: VfRate,
    /// The rates now in force (read back where the implementation can).
    pub applied: VfRate,
    /// False when a minimum was asked for but the driver refused it, so the guarantee is not
    /// enforced in hardware (the maximum still is). True when no minimum was asked for.
    pub min_enforced: bool,
    /// Why the minimum was dropped, for logs and records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Sets and reads one VF's rates and counters on a PF.
pub trait RateLimiter: Send + Sync {
    /// Which implementation this is ("netlink", "simulated"), for logs.
    fn kind(&self) -> &'static str;

    /// Sets the VF's rates. Where the driver refuses the minimum, sets the maximum alone and
    /// returns `min_enforced: false`; any other refusal is an error naming PF, VF and cause.
    fn set(&self, pf: &str, vf: u32, rate: VfRate) -> Result<Applied>;

    /// The rates currently in force.
    fn get(&self, pf: &str, vf: u32) -> Result<VfRate>;

    /// The VF's byte counters.
    fn counters(&self, pf: &str, vf: u32) -> Result<VfCounters>;

    /// Removes both limits. Idempotent.
    fn reset(&self, pf: &str, vf: u32) -> Result<()> {
        self.set(pf, vf, VfRate::NONE).map(|_| ())
    }
}

/// Which limiter to build, as written in configs (`limiter = "netlink"` or `"simulated"` with a
/// `sysfs_root`). Serialisable so a process can record what it used and a later cleanup can
/// build the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LimiterSpec {
    Netlink,
    Simulated { root: PathBuf },
}

impl LimiterSpec {
    pub fn build(&self) -> Box<dyn RateLimiter> {
        match self {
            LimiterSpec::Netlink => Box::new(NetlinkLimiter::new()),
            LimiterSpec::Simulated { root } => Box::new(SimulatedLimiter::new(root)),
        }
    }
}

pub(crate) fn limiter_error(pf: &str, vf: u32, reason: String, class: ErrorClass) -> NodeError {
    NodeError::Limiter {
        pf: pf.to_string(),
        vf,
        reason,
        class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_checks() {
        check_rate(VfRate::new(0, 0), "p", 0).unwrap();
        check_rate(VfRate::new(10, 0), "p", 0).unwrap();
        check_rate(VfRate::new(10, 20), "p", 0).unwrap();
        let e = check_rate(VfRate::new(30, 20), "ens1f0", 3).unwrap_err();
        assert_eq!(e.class(), ErrorClass::InvalidInput);
        let text = e.to_string();
        assert!(
            text.contains("ens1f0 vf 3") && text.contains("min_tx_rate 30 Mbps is above"),
            "{text}"
        );
        assert!(check_rate(VfRate::new(0, 1 << 33), "p", 0).is_err());
    }

    #[test]
    fn spec_round_trips() {
        let s = LimiterSpec::Simulated {
            root: PathBuf::from("/tmp/nic"),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"kind":"simulated","root":"/tmp/nic"}"#);
        assert_eq!(serde_json::from_str::<LimiterSpec>(&text).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<LimiterSpec>(r#"{"kind":"netlink"}"#).unwrap(),
            LimiterSpec::Netlink
        );
        assert_eq!(LimiterSpec::Netlink.build().kind(), "netlink");
    }
}
