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

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Which implementation this is ([`LimiterKind::as_str`] for the two built here), for logs.
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

/// Which limiter a config asks for: `limiter = "netlink"` (real PFs) or `"simulated"` (the
/// simulated NIC's files under a sysfs root).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LimiterKind {
    #[default]
    Netlink,
    Simulated,
}

impl LimiterKind {
    pub const ALL: [LimiterKind; 2] = [LimiterKind::Netlink, LimiterKind::Simulated];

    /// The name configs use (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            LimiterKind::Netlink => "netlink",
            LimiterKind::Simulated => "simulated",
        }
    }

    /// The accepted names, quoted, for refusals: `"netlink", "simulated"`.
    pub fn accepted() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|k| format!("{:?}", k.as_str()))
            .collect();
        names.join(", ")
    }

    /// The limiter of this kind on a node whose sysfs is under `root` (where a simulated NIC is).
    pub fn spec(self, root: &Path) -> LimiterSpec {
        match self {
            LimiterKind::Netlink => LimiterSpec::Netlink,
            LimiterKind::Simulated => LimiterSpec::Simulated {
                root: root.to_path_buf(),
            },
        }
    }
}

impl std::fmt::Display for LimiterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LimiterKind {
    type Err = String;

    /// Refused with the name and the accepted ones; callers put the config key in front.
    fn from_str(s: &str) -> std::result::Result<LimiterKind, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of {}", Self::accepted()))
    }
}

/// A node's rate limiters, one per [`LimiterKind`], so every user on the node (admission, the
/// work-conserving controller) shares one instance of the kind its config names. Tests give one
/// limiter for every kind, to watch what reaches the "hardware".
#[derive(Clone)]
pub struct Limiters {
    netlink: Arc<dyn RateLimiter>,
    simulated: Arc<dyn RateLimiter>,
}

impl Limiters {
    /// The real ones; a simulated NIC lives under `root`. Building either is cheap (no socket
    /// or file is opened until a call).
    pub fn new(root: &Path) -> Limiters {
        Limiters {
            netlink: LimiterKind::Netlink.spec(root).build().into(),
            simulated: LimiterKind::Simulated.spec(root).build().into(),
        }
    }

    /// `limiter` whichever kind is asked for.
    pub fn only(limiter: Arc<dyn RateLimiter>) -> Limiters {
        Limiters {
            netlink: limiter.clone(),
            simulated: limiter,
        }
    }

    pub fn get(&self, kind: LimiterKind) -> &Arc<dyn RateLimiter> {
        match kind {
            LimiterKind::Netlink => &self.netlink,
            LimiterKind::Simulated => &self.simulated,
        }
    }
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field("netlink", &self.netlink.kind())
            .field("simulated", &self.simulated.kind())
            .finish()
    }
}

/// Which limiter to build, with what it needs: the resolved form of a [`LimiterKind`].
/// Serialisable so a process can record what it used and a later cleanup can build the same one.
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

    #[test]
    fn kinds_are_named_as_in_configs() {
        for k in LimiterKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("{:?}", k.as_str()));
            assert_eq!(serde_json::from_str::<LimiterKind>(&json).unwrap(), k);
            assert_eq!(k.as_str().parse::<LimiterKind>().unwrap(), k);
            assert_eq!(k.spec(Path::new("/r")).build().kind(), k.as_str());
        }
        assert_eq!(
            "tc".parse::<LimiterKind>().unwrap_err(),
            r#""tc" is not one of "netlink", "simulated""#
        );
        let sim = Limiters::new(Path::new("/r"));
        assert_eq!(sim.get(LimiterKind::Simulated).kind(), "simulated");
        assert_eq!(sim.get(LimiterKind::Netlink).kind(), "netlink");
    }
}
