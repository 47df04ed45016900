//! The report schema: what nodes and shims tell the placement webhook. One set of types, shared by
//! the NRI plugin (node reports), the shim (usage reports) and `conrdma-placement` (which reads both),
//! documented for other readers in `specs/reports/`.
//!
//! Every document carries `version` ([`REPORT_VERSION`]); a reader refuses versions it does not know
//! and fields it does not know, so a mismatch shows up as a clear 400 rather than as silently missing
//! data. Rates are whole Mbps like everywhere in ConRDMA, except the measured rates of usage reports,
//! which are fractional Mbps averaged over the report's window.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::rate::MAX_MBPS;
use crate::request::is_dns_label;

/// The schema version this build writes and reads.
pub const REPORT_VERSION: u32 = 1;

/// Where nodes POST their [`NodeReport`] on the placement webhook.
pub const NODE_REPORT_PATH: &str = "/v1/reports/node";

/// Where shims POST [`UsageBatch`]es on the placement webhook.
pub const USAGE_REPORT_PATH: &str = "/v1/reports/usage";

/// Why a report was refused: one line naming the field (as a JSON path) and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReport(pub String);

/// A node's RDMA picture, sent by the NRI plugin periodically and whenever an admission or release
/// changes it. Replaces the node's previous report whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub version: u32,
    /// The Kubernetes node name (what kube-scheduler calls the node).
    pub node: String,
    /// When the node built the report, milliseconds since the Unix epoch (informational: freshness is
    /// judged by the receiver's clock, so skew between hosts does not matter).
    pub time_unix_ms: u64,
    pub pools: Vec<PoolReport>,
}

/// One pool: the sums of its PFs' figures, and the PFs themselves (a pod gets one VF on one PF, so
/// only per-PF headroom decides whether a pod fits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolReport {
    pub pool: String,
    pub capacity_mbps: u64,
    pub guaranteed_mbps: u64,
    pub pods: u32,
    pub vfs_total: u32,
    pub vfs_free: u32,
    pub pfs: Vec<PfReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PfReport {
    /// PF netdev name.
    pub name: String,
    pub line_rate_mbps: u64,
    /// Line rate x admission ratio: the most that may be guaranteed on this PF.
    pub capacity_mbps: u64,
    /// Sum of the guarantees admitted on this PF.
    pub guaranteed_mbps: u64,
    pub pods: u32,
    pub vfs_total: u32,
    pub vfs_free: u32,
}

/// The pod a usage report is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What one pod's VF carried over one window, sent by the shim. The last report of a pod has
/// `final: true` and tells the receiver to forget the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub node: String,
    pub pod: PodId,
    pub pool: String,
    pub pf: String,
    pub vf: u32,
    pub guaranteed_mbps: u64,
    pub limit_mbps: u64,
    /// Average transmit rate over the window, Mbps.
    pub tx_mbps: f64,
    /// Average receive rate over the window, Mbps.
    pub rx_mbps: f64,
    pub window_start_unix_ms: u64,
    pub window_end_unix_ms: u64,
    #[serde(default, rename = "final")]
    pub is_final: bool,
}

/// The body of one usage POST: any number of reports, from one or several pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub version: u32,
    pub reports: Vec<UsageReport>,
}

fn bad(msg: String) -> InvalidReport {
    InvalidReport(msg)
}

fn check_version(version: u32) -> Result<(), InvalidReport> {
    if version != REPORT_VERSION {
        return Err(bad(format!(
            "version {version} is not supported; accepted: {REPORT_VERSION}"
        )));
    }
    Ok(())
}

/// Kubernetes object names (nodes, pods, namespaces): a DNS subdomain, 1-253 characters.
fn is_k8s_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A Linux netdev name: 1-15 bytes, no '/', ':' or whitespace.
fn is_netdev_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b':')
}

fn check_name(path: &str, value: &str, ok: bool, form: &str) -> Result<(), InvalidReport> {
    if ok {
        Ok(())
    } else {
        Err(bad(format!("{path} {value:?} is not {form}")))
    }
}

fn check_mbps(path: &str, mbps: u64) -> Result<(), InvalidReport> {
    if mbps > MAX_MBPS {
        return Err(bad(format!(
            "{path} {mbps} is above the largest rate {MAX_MBPS} Mbps"
        )));
    }
    Ok(())
}

const K8S_NAME: &str = "a Kubernetes name (1-253 lowercase letters, digits, '-' or '.')";
const POOL_NAME: &str = "a pool name (a DNS label)";
const PF_NAME: &str = "a netdev name (1-15 printable characters, no '/' or ':')";

impl NodeReport {
    /// Checks everything a reader relies on; the message names the offending field.
    pub fn validate(&self) -> Result<(), InvalidReport> {
        check_version(self.version)?;
        check_name("node", &self.node, is_k8s_name(&self.node), K8S_NAME)?;
        let mut pools = HashSet::new();
        let mut pfs = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = format!("pools[{i}]");
            check_name(
                &format!("{at}.pool"),
                &pool.pool,
                is_dns_label(&pool.pool),
                POOL_NAME,
            )?;
            if !pools.insert(pool.pool.as_str()) {
                return Err(bad(format!("{at}.pool {:?} appears twice", pool.pool)));
            }
            let mut sum = PoolReport::from_pfs(&pool.pool, Vec::new());
            for (j, pf) in pool.pfs.iter().enumerate() {
                let at = format!("{at}.pfs[{j}]");
                check_name(
                    &format!("{at}.name"),
                    &pf.name,
                    is_netdev_name(&pf.name),
                    PF_NAME,
                )?;
                if !pfs.insert(pf.name.as_str()) {
                    return Err(bad(format!("{at}.name {:?} appears twice", pf.name)));
                }
                check_mbps(&format!("{at}.line_rate_mbps"), pf.line_rate_mbps)?;
                check_mbps(&format!("{at}.capacity_mbps"), pf.capacity_mbps)?;
                check_mbps(&format!("{at}.guaranteed_mbps"), pf.guaranteed_mbps)?;
                if pf.vfs_free > pf.vfs_total {
                    return Err(bad(format!(
                        "{at}.vfs_free {} is above vfs_total {}",
                        pf.vfs_free, pf.vfs_total
                    )));
                }
                sum.add(pf);
            }
            for (field, got, want) in [
                ("capacity_mbps", pool.capacity_mbps, sum.capacity_mbps),
                ("guaranteed_mbps", pool.guaranteed_mbps, sum.guaranteed_mbps),
                ("pods", pool.pods.into(), sum.pods.into()),
                ("vfs_total", pool.vfs_total.into(), sum.vfs_total.into()),
                ("vfs_free", pool.vfs_free.into(), sum.vfs_free.into()),
            ] {
                if got != want {
                    return Err(bad(format!(
                        "{at}.{field} {got} is not the sum over its pfs ({want})"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl PoolReport {
    /// A pool whose totals are the sums over `pfs`.
    pub fn from_pfs(pool: &str, pfs: Vec<PfReport>) -> PoolReport {
        let mut p = PoolReport {
            pool: pool.to_string(),
            capacity_mbps: 0,
            guaranteed_mbps: 0,
            pods: 0,
            vfs_total: 0,
            vfs_free: 0,
            pfs: Vec::new(),
        };
        for pf in &pfs {
            p.add(pf);
        }
        p.pfs = pfs;
        p
    }

    fn add(&mut self, pf: &PfReport) {
        self.capacity_mbps = self.capacity_mbps.saturating_add(pf.capacity_mbps);
        self.guaranteed_mbps = self.guaranteed_mbps.saturating_add(pf.guaranteed_mbps);
        self.pods = self.pods.saturating_add(pf.pods);
        self.vfs_total = self.vfs_total.saturating_add(pf.vfs_total);
        self.vfs_free = self.vfs_free.saturating_add(pf.vfs_free);
    }
}

impl PfReport {
    /// Guaranteed bandwidth this PF can still admit.
    pub fn headroom_mbps(&self) -> u64 {
        self.capacity_mbps.saturating_sub(self.guaranteed_mbps)
    }
}

impl UsageReport {
    pub fn validate(&self) -> Result<(), InvalidReport> {
        check_name("node", &self.node, is_k8s_name(&self.node), K8S_NAME)?;
        check_name(
            "pod.namespace",
            &self.pod.namespace,
            is_k8s_name(&self.pod.namespace),
            K8S_NAME,
        )?;
        check_name(
            "pod.name",
            &self.pod.name,
            is_k8s_name(&self.pod.name),
            K8S_NAME,
        )?;
        check_name(
            "pod.uid",
            &self.pod.uid,
            !self.pod.uid.is_empty()
                && self.pod.uid.len() <= 128
                && self.pod.uid.bytes().all(|c| c.is_ascii_graphic()),
            "a pod UID (1-128 printable characters)",
        )?;
        check_name("pool", &self.pool, is_dns_label(&self.pool), POOL_NAME)?;
        check_name("pf", &self.pf, is_netdev_name(&self.pf), PF_NAME)?;
        check_mbps("guaranteed_mbps", self.guaranteed_mbps)?;
        check_mbps("limit_mbps", self.limit_mbps)?;
        for (field, v) in [("tx_mbps", self.tx_mbps), ("rx_mbps", self.rx_mbps)] {
            if !(v.is_finite() && (0.0..=MAX_MBPS as f64).contains(&v)) {
                return Err(bad(format!(
                    "{field} {v} is not a rate from 0 to {MAX_MBPS} Mbps"
                )));
            }
        }
        if self.window_end_unix_ms < self.window_start_unix_ms {
            return Err(bad(format!(
                "window_end_unix_ms {} is before window_start_unix_ms {}",
                self.window_end_unix_ms, self.window_start_unix_ms
            )));
        }
        Ok(())
    }
}

impl UsageBatch {
    pub fn new(reports: Vec<UsageReport>) -> UsageBatch {
        UsageBatch {
            version: REPORT_VERSION,
            reports,
        }
    }

    /// Checks the version and every report; the message names the first bad one as `reports[i]`.
    pub fn validate(&self) -> Result<(), InvalidReport> {
        check_version(self.version)?;
        for (i, r) in self.reports.iter().enumerate() {
            r.validate()
                .map_err(|e| bad(format!("reports[{i}].{}", e.0)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(name: &str, cap: u64, g: u64, total: u32, free: u32) -> PfReport {
        PfReport {
            name: name.into(),
            line_rate_mbps: cap,
            capacity_mbps: cap,
            guaranteed_mbps: g,
            pods: total - free,
            vfs_total: total,
            vfs_free: free,
        }
    }

    fn node() -> NodeReport {
        NodeReport {
            version: REPORT_VERSION,
            node: "worker-1".into(),
            time_unix_ms: 1_700_000_000_000,
            pools: vec![PoolReport::from_pfs(
                "default",
                vec![
                    pf("ens1f0", 100_000, 30_000, 8, 6),
                    pf("ens1f1", 25_000, 0, 8, 8),
                ],
            )],
        }
    }

    fn usage() -> UsageReport {
        UsageReport {
            node: "worker-1".into(),
            pod: PodId {
                namespace: "default".into(),
                name: "trainer-0".into(),
                uid: "0b0c5a4e-1111-2222-3333-444455556666".into(),
            },
            pool: "default".into(),
            pf: "ens1f0".into(),
            vf: 3,
            guaranteed_mbps: 10_000,
            limit_mbps: 25_000,
            tx_mbps: 8_123.5,
            rx_mbps: 120.25,
            window_start_unix_ms: 1_700_000_000_000,
            window_end_unix_ms: 1_700_000_010_000,
            is_final: false,
        }
    }

    #[test]
    fn node_report_round_trips_and_validates() {
        let r = node();
        r.validate().unwrap();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"version\":1"));
        let back: NodeReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.pools[0].capacity_mbps, 125_000);
        assert_eq!(r.pools[0].vfs_free, 14);
        assert_eq!(r.pools[0].pfs[0].headroom_mbps(), 70_000);
    }

    #[test]
    fn node_report_refusals_name_the_field() {
        type Mutation = Box<dyn Fn(&mut NodeReport)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.version = 2), "version 2"),
            (
                Box::new(|r| r.node = "Worker_1".into()),
                "node \"Worker_1\"",
            ),
            (Box::new(|r| r.pools[0].pool = "A".into()), "pools[0].pool"),
            (
                Box::new(|r| r.pools[0].pfs[1].name = "ens1f0".into()),
                "pools[0].pfs[1].name \"ens1f0\" appears twice",
            ),
            (
                Box::new(|r| r.pools[0].pfs[0].vfs_free = 9),
                "pools[0].pfs[0].vfs_free 9 is above vfs_total 8",
            ),
            (
                Box::new(|r| r.pools[0].guaranteed_mbps = 1),
                "pools[0].guaranteed_mbps 1 is not the sum",
            ),
            (
                Box::new(|r| r.pools[0].pfs[0].capacity_mbps = MAX_MBPS + 1),
                "pools[0].pfs[0].capacity_mbps",
            ),
        ];
        for (mutate, want) in cases {
            let mut r = node();
            mutate(&mut r);
            let err = r.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let unknown = r#"{"version":1,"node":"n","time_unix_ms":1,"pools":[],"extra":1}"#;
        let err = serde_json::from_str::<NodeReport>(unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn usage_batch_round_trips_and_validates() {
        let b = UsageBatch::new(vec![usage()]);
        b.validate().unwrap();
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains("\"final\":false"), "{text}");
        let back: UsageBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(back, b);
        let mut bad = b.clone();
        bad.reports.push(usage());
        bad.reports[1].tx_mbps = f64::NAN;
        assert!(bad
            .validate()
            .unwrap_err()
            .0
            .starts_with("reports[1].tx_mbps"));
        let mut bad = b.clone();
        bad.reports[0].window_end_unix_ms = 1;
        assert!(bad.validate().unwrap_err().0.contains("window_end_unix_ms"));
        let mut bad = b;
        bad.reports[0].pod.uid = String::new();
        assert!(bad.validate().unwrap_err().0.contains("pod.uid"));
    }
}
