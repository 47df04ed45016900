//! Node configuration: pools, admission ratio, rdma cgroup defaults. Read from TOML; unknown keys are
//! refused so a misspelt setting never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{NodeError, Result};
use crate::limiter::LimiterKind;
use conrdma_api::rate::Rate;
use conrdma_api::request::is_dns_label;

/// Pool that holds every PF not named by a configured pool.
pub const DEFAULT_POOL: &str = "default";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Fraction of each PF's line rate that may be guaranteed, in (0, 1].
    #[serde(default = "one")]
    pub admission_ratio: f64,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    /// Line rate for PFs whose driver does not report a speed (or to admit less than it reports).
    #[serde(default)]
    pub pf_speed: BTreeMap<String, String>,
    #[serde(default)]
    pub rdma_cgroup: RdmaCgroupDefaults,
    /// Where the host's cgroup filesystem is mounted (decides whether rdma.max can be set).
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// Seconds between sysfs rescans; discovery never runs on the CreateContainer path.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Root under which `sys/` is read; `/` unless a simulated NIC is used. A command-line flag
    /// wins; this key exists for pre-launched plugins, which containerd starts without arguments.
    #[serde(default)]
    pub sysfs_root: Option<PathBuf>,
    /// Where the ledger lives (flag wins, as for `sysfs_root`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Rate enforcement by the plugin itself, for pods that do not run under the ConRDMA shim.
    #[serde(default)]
    pub enforce: EnforceConfig,
    /// Where node reports go (the placement webhook); none are sent without it.
    #[serde(default)]
    pub placement: Option<PlacementConfig>,
    /// The work-conserving bandwidth controller (off unless enabled).
    #[serde(default)]
    pub conserve: ConserveConfig,
    /// containerd's CRI endpoint, asked which pods exist (the periodic sweep of the ledger).
    #[serde(default)]
    pub cri: CriConfig,
}

/// `[cri]`: how the plugin checks the ledger against the pods containerd holds, for pods whose
/// removal NRI does not relay (containerd forgets which pods it told plugins about when it
/// restarts, and 1.7 sends pre-launched plugins no Synchronize).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriConfig {
    /// containerd's gRPC socket, which serves CRI.
    #[serde(default = "default_cri_socket")]
    pub socket: PathBuf,
    /// Seconds between sweeps, 1 to 30; 0 turns the sweep off (a pod removed unseen then holds its
    /// VF until the plugin's next Synchronize).
    #[serde(default = "default_sweep_seconds")]
    pub sweep_seconds: u64,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            socket: default_cri_socket(),
            sweep_seconds: default_sweep_seconds(),
        }
    }
}

fn default_cri_socket() -> PathBuf {
    PathBuf::from("/run/containerd/containerd.sock")
}
fn default_sweep_seconds() -> u64 {
    10
}

/// `[conserve]`: the work-conserving bandwidth controller, which lends idle guaranteed bandwidth
/// by steering the max rates of allocated VFs (docs/conserve.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConserveConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Milliseconds between decisions (counters are sampled four times as often).
    #[serde(default = "default_conserve_interval")]
    pub interval_ms: u64,
    /// The max rates on a PF add up to at most line rate x headroom, in (0, 1] and at least the
    /// admission ratio (so every admitted guarantee fits).
    #[serde(default = "one")]
    pub headroom: f64,
    /// Pools it steers; absent: every pool.
    #[serde(default)]
    pub pools: Option<Vec<String>>,
    /// `netlink` or `simulated`; absent: the `[enforce]` limiter.
    #[serde(default, deserialize_with = "conserve_limiter")]
    pub limiter: Option<LimiterKind>,
    /// Intervals a VF must want less than its guarantee before the rest of it is lent.
    #[serde(default = "default_lend_after")]
    pub lend_after: u32,
    /// The smallest max rate set on an idle VF, Mbps.
    #[serde(default = "default_floor_mbps")]
    pub floor_mbps: u64,
    /// Where to serve the controller's Prometheus metrics (`GET /metrics`), e.g.
    /// `"127.0.0.1:9464"`; the plugin's `--metrics-listen` wins over it. The only way to get them
    /// from a plugin containerd pre-launches, which has no flags. Read when the node is set up.
    #[serde(default, deserialize_with = "metrics_addr")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `conserve.metrics_listen`, refused with its key and the accepted form (serde's own message for
/// a socket address names neither).
fn metrics_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "conserve.metrics_listen = {text:?} is not an IP:port address such as \"127.0.0.1:9464\""
        ))
    })
}

/// `conserve.limiter`, refused with its key and the accepted names.
fn conserve_limiter<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<LimiterKind>, D::Error> {
    limiter_kind(d, "conserve.limiter").map(Some)
}

/// `enforce.limiter`, as [`conserve_limiter`].
fn enforce_limiter<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<LimiterKind, D::Error> {
    limiter_kind(d, "enforce.limiter")
}

/// serde's own message for an unknown variant does not name the key (toml's `message()` drops
/// the path), so the name is parsed here and the refusal says `key = "x" is not one of ...`.
fn limiter_kind<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &str,
) -> std::result::Result<LimiterKind, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|reason| serde::de::Error::custom(format!("{key} = {reason}")))
}

impl Default for ConserveConfig {
    fn default() -> Self {
        ConserveConfig {
            enabled: false,
            interval_ms: default_conserve_interval(),
            headroom: 1.0,
            pools: None,
            limiter: None,
            lend_after: default_lend_after(),
            floor_mbps: default_floor_mbps(),
            metrics_listen: None,
        }
    }
}

fn default_conserve_interval() -> u64 {
    1000
}
fn default_lend_after() -> u32 {
    conrdma_api::conserve::Tuning::default().lend_after
}
fn default_floor_mbps() -> u64 {
    conrdma_api::conserve::Tuning::default().floor_mbps
}

impl ConserveConfig {
    /// Whether the controller steers the VFs of this pool.
    pub fn controls(&self, pool: &str) -> bool {
        self.enabled
            && self
                .pools
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p == pool))
    }

    pub fn tuning(&self) -> conrdma_api::conserve::Tuning {
        conrdma_api::conserve::Tuning {
            headroom: self.headroom,
            lend_after: self.lend_after,
            floor_mbps: self.floor_mbps,
            ..Default::default()
        }
    }
}

/// `[placement]`: the webhook that receives this node's reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// Base URL, e.g. `https://conrdma-placement.conrdma-system.svc:8443`.
    pub url: String,
    /// File holding the bearer token.
    pub credential_file: Option<PathBuf>,
    /// PEM bundle to trust for https (the cluster CA).
    pub ca_file: Option<PathBuf>,
    /// The Kubernetes node name; default: $NODE_NAME, else the host name.
    pub node_name: Option<String>,
    /// Seconds between reports (one is also sent at every admission and release).
    #[serde(default = "default_report_interval")]
    pub interval_seconds: u64,
}

fn default_report_interval() -> u64 {
    30
}

/// `[enforce]`: whether the NRI plugin sets VF rates for pods the ConRDMA shim does not run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforceConfig {
    #[serde(default)]
    pub enabled: bool,
    /// `netlink` (real PFs) or `simulated` (the simulated NIC under `sysfs_root`).
    #[serde(default, deserialize_with = "enforce_limiter")]
    pub limiter: LimiterKind,
    /// Runtime handlers whose pods the ConRDMA shim enforces; the plugin leaves those alone.
    #[serde(default = "default_shim_handlers")]
    pub shim_runtime_handlers: Vec<String>,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        EnforceConfig {
            enabled: false,
            limiter: LimiterKind::default(),
            shim_runtime_handlers: default_shim_handlers(),
        }
    }
}

fn default_shim_handlers() -> Vec<String> {
    vec!["conrdma".to_string()]
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub pfs: Vec<String>,
    /// `[pool.network]`: move each pod's VF into the pod's network namespace with an address.
    #[serde(default)]
    pub network: Option<conrdma_api::network::NetworkConfig>,
}

impl PoolConfig {
    /// The validated network section (checked when the config was loaded).
    pub fn network(&self) -> Option<conrdma_api::network::PoolNetwork> {
        self.network
            .as_ref()
            .and_then(|n| n.validate(&self.name).ok())
    }
}

/// Node defaults for the rdma cgroup, used when a pod sets no `hca-handles`/`hca-objects`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdmaCgroupDefaults {
    pub hca_handles: Option<u32>,
    pub hca_objects: Option<u32>,
}

fn one() -> f64 {
    1.0
}
fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_refresh() -> u64 {
    30
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            admission_ratio: 1.0,
            pools: Vec::new(),
            pf_speed: BTreeMap::new(),
            rdma_cgroup: RdmaCgroupDefaults::default(),
            cgroup_root: default_cgroup_root(),
            refresh_seconds: default_refresh(),
            sysfs_root: None,
            state_dir: None,
            enforce: EnforceConfig::default(),
            placement: None,
            conserve: ConserveConfig::default(),
            cri: CriConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Parses and validates; `origin` names the source (a path, or "NRI Configure") in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<NodeConfig> {
        let bad = |reason: String| NodeError::Config {
            origin: origin.to_string(),
            reason,
        };
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        if !(cfg.admission_ratio > 0.0 && cfg.admission_ratio <= 1.0) {
            return Err(bad(format!(
                "admission_ratio = {} is out of range: use a number in (0, 1]",
                cfg.admission_ratio
            )));
        }
        let mut seen_pf: BTreeMap<&str, &str> = BTreeMap::new();
        let mut seen_pool = std::collections::BTreeSet::new();
        for pool in &cfg.pools {
            if !is_dns_label(&pool.name) {
                return Err(bad(format!(
                    "pool name {:?} is not a DNS label (lowercase letters, digits, '-')",
                    pool.name
                )));
            }
            if !seen_pool.insert(pool.name.as_str()) {
                return Err(bad(format!("pool {:?} is defined twice", pool.name)));
            }
            if let Some(n) = &pool.network {
                n.validate(&pool.name).map_err(bad)?;
            }
            for pf in &pool.pfs {
                if let Some(other) = seen_pf.insert(pf, &pool.name) {
                    return Err(bad(format!(
                        "PF {pf:?} is in both pool {other:?} and pool {:?}",
                        pool.name
                    )));
                }
            }
        }
        if let Some(p) = &cfg.placement {
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return Err(bad(format!(
                    "placement.url = {:?} must start with http:// or https://",
                    p.url
                )));
            }
            if p.interval_seconds == 0 {
                return Err(bad("placement.interval_seconds must be at least 1".into()));
            }
        }
        let c = &cfg.conserve;
        if !(c.headroom > 0.0 && c.headroom <= 1.0) || c.headroom < cfg.admission_ratio {
            return Err(bad(format!(
                "conserve.headroom = {} is out of range: use a number in (0, 1] no smaller than admission_ratio = {}",
                c.headroom, cfg.admission_ratio
            )));
        }
        if !(100..=3_600_000).contains(&c.interval_ms) {
            return Err(bad(format!(
                "conserve.interval_ms = {} is out of range: use 100 to 3600000",
                c.interval_ms
            )));
        }
        if c.floor_mbps == 0 {
            return Err(bad(
                "conserve.floor_mbps must be at least 1 (0 would mean no limit)".into(),
            ));
        }
        for p in c.pools.iter().flatten() {
            if p != DEFAULT_POOL && !seen_pool.contains(p.as_str()) {
                return Err(bad(format!(
                    "conserve.pools names {p:?}, which is neither a [[pool]] nor {DEFAULT_POOL:?}"
                )));
            }
        }
        if cfg.cri.sweep_seconds > 30 {
            return Err(bad(format!(
                "cri.sweep_seconds = {} is out of range: use 1 to 30, or 0 to turn the sweep off",
                cfg.cri.sweep_seconds
            )));
        }
        for (pf, speed) in &cfg.pf_speed {
            Rate::parse(speed).map_err(|e| bad(format!("pf_speed.{pf}: {e}")))?;
        }
        for (key, v) in [
            ("hca_handles", cfg.rdma_cgroup.hca_handles),
            ("hca_objects", cfg.rdma_cgroup.hca_objects),
        ] {
            if v.is_some_and(|n| n == 0 || n > i32::MAX as u32) {
                return Err(bad(format!(
                    "rdma_cgroup.{key} must be a whole number from 1 to 2147483647"
                )));
            }
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NodeError::io("reading node config", path, e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The limiter the work-conserving controller steers through: `[conserve] limiter`, else
    /// `[enforce] limiter`.
    pub fn conserve_limiter(&self) -> LimiterKind {
        self.conserve.limiter.unwrap_or(self.enforce.limiter)
    }

    /// The pool a PF belongs to.
    pub fn pool_of(&self, pf: &str) -> &str {
        self.pools
            .iter()
            .find(|p| p.pfs.iter().any(|n| n == pf))
            .map_or(DEFAULT_POOL, |p| p.name.as_str())
    }

    /// Configured speed override for a PF, in Mbps (validated at load).
    pub fn speed_override(&self, pf: &str) -> Option<u64> {
        self.pf_speed
            .get(pf)
            .and_then(|s| Rate::parse(s).ok())
            .map(Rate::mbps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(
            NodeConfig::from_toml("", "t").unwrap(),
            NodeConfig::default()
        );
    }

    #[test]
    fn pools_and_overrides() {
        let c = NodeConfig::from_toml(
            "admission_ratio = 0.9\n[[pool]]\nname = \"fabric-a\"\npfs = [\"ens1f0\"]\n[pf_speed]\nens1f1 = \"25G\"\n[rdma_cgroup]\nhca_handles = 8\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.pool_of("ens1f0"), "fabric-a");
        assert_eq!(c.pool_of("ens1f1"), DEFAULT_POOL);
        assert_eq!(c.speed_override("ens1f1"), Some(25_000));
        assert_eq!(c.rdma_cgroup.hca_handles, Some(8));
    }

    #[test]
    fn conserve_is_off_by_default_and_switchable_per_pool() {
        let c = NodeConfig::default().conserve;
        assert!(!c.controls(DEFAULT_POOL));
        let cfg = NodeConfig::from_toml(
            "admission_ratio = 0.9\n[[pool]]\nname = \"fabric-a\"\npfs = [\"ens1f0\"]\n[conserve]\nenabled = true\npools = [\"fabric-a\"]\ninterval_ms = 250\nheadroom = 0.95\nlimiter = \"simulated\"\n",
            "t",
        )
        .unwrap();
        let c = &cfg.conserve;
        assert!(c.controls("fabric-a") && !c.controls(DEFAULT_POOL));
        assert_eq!((c.interval_ms, c.tuning().headroom), (250, 0.95));
        assert_eq!(cfg.conserve_limiter(), LimiterKind::Simulated);
        assert_eq!(
            NodeConfig::default().conserve_limiter(),
            LimiterKind::Netlink
        );
        let all = NodeConfig::from_toml("[conserve]\nenabled = true", "t").unwrap();
        assert!(all.conserve.controls(DEFAULT_POOL) && all.conserve.controls("x"));
        let m = NodeConfig::from_toml("[conserve]\nmetrics_listen = \"127.0.0.1:9464\"", "t");
        assert_eq!(
            m.unwrap().conserve.metrics_listen,
            Some(([127, 0, 0, 1], 9464).into())
        );
    }

    #[test]
    fn refusals_are_one_line_and_name_the_problem() {
        for (text, needle) in [
            ("admission_ratio = 1.5", "admission_ratio"),
            ("admision_ratio = 0.5", "admision_ratio"),
            ("[[pool]]\nname = \"A\"\npfs = []", "DNS label"),
            (
                "[[pool]]\nname = \"a\"\npfs = [\"x\"]\n[[pool]]\nname = \"b\"\npfs = [\"x\"]",
                "both pool",
            ),
            ("[pf_speed]\nx = \"fast\"", "pf_speed.x"),
            ("[rdma_cgroup]\nhca_objects = 0", "hca_objects"),
            ("[conserve]\nheadroom = 1.2", "conserve.headroom"),
            (
                "[conserve]\nmetrics_listen = \"localhost\"",
                "metrics_listen",
            ),
            (
                "admission_ratio = 0.9\n[conserve]\nheadroom = 0.8",
                "no smaller than admission_ratio",
            ),
            ("[conserve]\ninterval_ms = 5", "conserve.interval_ms"),
            ("[conserve]\nfloor_mbps = 0", "conserve.floor_mbps"),
            ("[conserve]\nlimiter = \"tc\"", "conserve.limiter"),
            ("[enforce]\nlimiter = \"tc\"", "enforce.limiter"),
            (
                "[conserve]\npools = [\"gold\"]",
                "conserve.pools names \"gold\"",
            ),
            ("[conserve]\nenable = true", "enable"),
            ("[cri]\nsweep_seconds = 60", "cri.sweep_seconds = 60"),
            ("[cri]\nsweep = 5", "sweep"),
            (
                "[[pool]]\nname = \"a\"\npfs = [\"x\"]\n[pool.network]\nsubnet = \"10.0.0.0/33\"",
                "network.subnet",
            ),
            (
                "[[pool]]\nname = \"a\"\npfs = [\"x\"]\n[pool.network]\nsubnet = \"10.0.0.0/24\"\nmask = 1",
                "mask",
            ),
        ] {
            let e = NodeConfig::from_toml(text, "node.toml")
                .expect_err(text)
                .to_string();
            assert!(e.contains(needle) && e.contains("node.toml"), "{e}");
            assert!(!e.trim_end().contains('\n'), "{e}");
        }
    }
}
