//! The shim's settings: the runtime's `options` table in containerd's config, which CRI hands to
//! the shim as TOML text (`runtimeoptions.v1.Options.config_body`) on `start`'s stdin and in every
//! task Create. Unknown keys are refused, so a misspelt setting fails the pod's start with a clear
//! message instead of silently running without limits or reports.
//!
//! ```toml
//! [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.conrdma.options]
//! webhook_url = "https://conrdma-placement.conrdma-system.svc:8443"   # POSTs go to <url>/v1/reports/usage
//! ca_file = "/etc/conrdma/ca.pem"
//! credential_file = "/etc/conrdma/shim-token"
//! report_interval = "10s"
//! limiter = "netlink"          # or "simulated" with sysfs_root
//! SystemdCgroup = true         # runc options pass through to the runc shim
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use conrdma_node::limiter::LimiterSpec;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

pub const DEFAULT_SPOOL_DIR: &str = "/run/conrdma/shim/spool";
pub const DEFAULT_SPOOL_MAX: usize = 10_000;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Shorter windows would be mostly noise and load the webhook for nothing.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const RUNC_SHIM: &str = "containerd-shim-runc-v2";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    webhook_url: Option<String>,
    credential_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    report_interval: Option<toml::Value>,
    node_name: Option<String>,
    spool_dir: Option<PathBuf>,
    spool_max_reports: Option<usize>,
    limiter: Option<String>,
    sysfs_root: Option<PathBuf>,
    runc_shim: Option<PathBuf>,
    task_api: Option<i64>,
    // runc's own options (containerd's names for containerd.runc.v1.Options), passed through.
    #[serde(rename = "NoPivotRoot")]
    no_pivot_root: Option<bool>,
    #[serde(rename = "NoNewKeyring")]
    no_new_keyring: Option<bool>,
    #[serde(rename = "ShimCgroup")]
    shim_cgroup: Option<String>,
    #[serde(rename = "IoUid")]
    io_uid: Option<u32>,
    #[serde(rename = "IoGid")]
    io_gid: Option<u32>,
    #[serde(rename = "BinaryName")]
    binary_name: Option<String>,
    #[serde(rename = "Root")]
    root: Option<String>,
    #[serde(rename = "SystemdCgroup")]
    systemd_cgroup: Option<bool>,
    #[serde(rename = "CriuImagePath")]
    criu_image_path: Option<String>,
    #[serde(rename = "CriuWorkPath")]
    criu_work_path: Option<String>,
}

/// Where and how usage reports go. The bundle record (`crate::pod::RateState`) keeps these whole,
/// so the `delete` command after a crash sends the final report exactly as the shim would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSettings {
    /// The placement webhook's base URL (reports go to `<url>/v1/reports/usage`).
    pub url: String,
    pub credential_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    pub node: String,
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    #[serde(default = "default_spool_max")]
    pub spool_max: usize,
}

impl ReportSettings {
    /// Settings for `url` as the node's options would give them, defaults for the rest.
    pub fn new(url: String, node: String) -> ReportSettings {
        ReportSettings {
            url,
            credential_file: None,
            ca_file: None,
            interval: DEFAULT_INTERVAL,
            node,
            spool_dir: default_spool_dir(),
            spool_max: DEFAULT_SPOOL_MAX,
        }
    }
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from(DEFAULT_SPOOL_DIR)
}

fn default_spool_max() -> usize {
    DEFAULT_SPOOL_MAX
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// None: no webhook configured, no reports.
    pub reports: Option<ReportSettings>,
    pub limiter: LimiterSpec,
    /// The runc options to give the runc shim (None: send it none, it uses its defaults).
    pub runc: Option<RuncOptions>,
    /// Explicit path of the runc shim binary; None = look it up.
    pub runc_shim: Option<PathBuf>,
    /// The task API version `start` reports (`task_api`, 2 or 3). None: by the calling
    /// containerd, 2 (a plain address) to 1.7 and 3 to 2.x (see `crate::bootstrap`).
    pub task_api: Option<i32>,
    /// The TOML text these settings came from (handed to the server process verbatim).
    pub source: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reports: None,
            limiter: LimiterSpec::Netlink,
            runc: None,
            runc_shim: None,
            task_api: None,
            source: String::new(),
        }
    }
}

impl Settings {
    pub fn from_toml(text: &str) -> Result<Settings> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            ShimError::Config(format!(
                "{}; accepted keys: webhook_url, credential_file, ca_file, report_interval, node_name, spool_dir, spool_max_reports, limiter, sysfs_root, runc_shim, task_api and runc's NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid, IoGid, BinaryName, Root, SystemdCgroup, CriuImagePath, CriuWorkPath",
                one_line(&e.to_string())
            ))
        })?;
        let limiter = match (raw.limiter.as_deref(), raw.sysfs_root) {
            (None | Some("netlink"), None) => LimiterSpec::Netlink,
            (None | Some("netlink"), Some(_)) => {
                return Err(ShimError::Config(
                    "sysfs_root is only used with limiter = \"simulated\"".into(),
                ))
            }
            (Some("simulated"), Some(root)) => LimiterSpec::Simulated { root },
            (Some("simulated"), None) => {
                return Err(ShimError::Config(
                    "limiter = \"simulated\" needs sysfs_root (the simulated NIC's root)".into(),
                ))
            }
            (Some(other), _) => {
                return Err(ShimError::Config(format!(
                    "limiter {other:?} is not known; accepted: \"netlink\", \"simulated\""
                )))
            }
        };
        let reports = match raw.webhook_url {
            None => {
                if raw.credential_file.is_some() || raw.report_interval.is_some() {
                    return Err(ShimError::Config(
                        "credential_file and report_interval need webhook_url".into(),
                    ));
                }
                None
            }
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ShimError::Config(format!(
                        "webhook_url {url:?} must start with http:// or https:// (the placement service's base URL)"
                    )));
                }
                let mut r = ReportSettings::new(url, node_name(raw.node_name)?);
                r.credential_file = raw.credential_file;
                r.ca_file = raw.ca_file;
                if let Some(v) = &raw.report_interval {
                    r.interval = parse_interval(v)?;
                }
                if let Some(dir) = raw.spool_dir {
                    r.spool_dir = dir;
                }
                r.spool_max = raw.spool_max_reports.unwrap_or(r.spool_max).max(1);
                Some(r)
            }
        };
        let mut runc = RuncOptions::new();
        let mut any = false;
        macro_rules! pass {
            ($field:ident) => {
                if let Some(v) = raw.$field {
                    runc.$field = v;
                    any = true;
                }
            };
        }
        pass!(no_pivot_root);
        pass!(no_new_keyring);
        pass!(shim_cgroup);
        pass!(io_uid);
        pass!(io_gid);
        pass!(binary_name);
        pass!(root);
        pass!(systemd_cgroup);
        pass!(criu_image_path);
        pass!(criu_work_path);
        Ok(Settings {
            reports,
            limiter,
            runc: any.then_some(runc),
            runc_shim: raw.runc_shim,
            task_api: match raw.task_api {
                None => None,
                Some(v @ (2 | 3)) => Some(v as i32),
                Some(v) => {
                    return Err(ShimError::Config(format!(
                        "task_api = {v} is not a task API version; accepted: 2 (containerd 1.7 and 2.x) or 3 (2.x only)"
                    )))
                }
            },
            source: text.to_string(),
        })
    }

    /// The runc shim binary: `runc_shim` if set, else `containerd-shim-runc-v2` beside containerd
    /// (`publish_binary`), then from `PATH`, then beside this binary.
    pub fn runc_shim_path(&self, publish_binary: &str) -> Result<PathBuf> {
        if let Some(p) = &self.runc_shim {
            return Ok(p.clone());
        }
        // Beside the containerd that launched us first: its runc shim speaks its task API
        // version (a 1.7 shim found first in PATH would not serve a 2.x containerd well).
        let mut dirs: Vec<PathBuf> = Path::new(publish_binary)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        if let Some(p) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&p));
        }
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            dirs.push(d);
        }
        dirs.into_iter()
            .map(|d| d.join(RUNC_SHIM))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                ShimError::Config(format!(
                    "{RUNC_SHIM} not found beside containerd or in PATH; install it or set runc_shim"
                ))
            })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whole seconds (`10` or `"10"`) or a humantime duration (`"10s"`, `"500ms"`, `"2m"`,
/// `"1m 30s"`); at least 100 ms.
pub fn parse_interval(v: &toml::Value) -> Result<Duration> {
    let d = match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        toml::Value::String(s) => {
            let s = s.trim();
            // humantime wants a unit; a bare number has always meant seconds here.
            match s.parse::<u64>() {
                Ok(n) => Some(Duration::from_secs(n)),
                Err(_) => humantime::parse_duration(s).ok(),
            }
        }
        _ => None,
    };
    d.filter(|d| *d >= MIN_INTERVAL).ok_or_else(|| {
        ShimError::Config(format!(
            "report_interval {v} is not a duration; accepted: whole seconds or a string like \"10s\", \"500ms\", \"1m 30s\" (at least 100ms)"
        ))
    })
}

/// The node name reports carry: `node_name`, else `$NODE_NAME`, else the host name (lowercased).
fn node_name(configured: Option<String>) -> Result<String> {
    let name = configured
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(ShimError::Config(
            "no node name: set node_name (or NODE_NAME in containerd's environment)".into(),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table() {
        let s = Settings::from_toml(
            r#"
            webhook_url = "http://127.0.0.1:8080"
            credential_file = "/etc/conrdma/token"
            report_interval = "250ms"
            node_name = "Worker-1"
            spool_dir = "/tmp/spool"
            spool_max_reports = 50
            limiter = "simulated"
            sysfs_root = "/tmp/nic"
            SystemdCgroup = true
            Root = "/run/x"
            "#,
        )
        .unwrap();
        let r = s.reports.unwrap();
        assert_eq!(r.interval, Duration::from_millis(250));
        assert_eq!(r.node, "worker-1");
        assert_eq!(r.spool_max, 50);
        assert_eq!(
            s.limiter,
            LimiterSpec::Simulated {
                root: "/tmp/nic".into()
            }
        );
        let runc = s.runc.unwrap();
        assert!(runc.systemd_cgroup);
        assert_eq!(runc.root, "/run/x");
    }

    #[test]
    fn empty_table_is_netlink_without_reports() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.limiter, LimiterSpec::Netlink);
        assert!(s.reports.is_none() && s.runc.is_none());
    }

    #[test]
    fn refusals_are_clear() {
        for (text, needle) in [
            ("webhok_url = \"x\"", "unknown field `webhok_url`"),
            ("limiter = \"simulated\"", "needs sysfs_root"),
            ("limiter = \"tc\"", "accepted: \"netlink\", \"simulated\""),
            ("sysfs_root = \"/x\"", "only used with limiter"),
            ("report_interval = 5", "need webhook_url"),
            ("webhook_url = \"ftp://x\"", "http:// or https://"),
            (
                "webhook_url = \"http://h/\"\nreport_interval = \"5 fortnights\"",
                "not a duration",
            ),
            (
                "task_api = 4",
                "accepted: 2 (containerd 1.7 and 2.x) or 3 (2.x only)",
            ),
            (
                "webhook_url = \"http://h/\"\nreport_interval = \"10ms\"",
                "at least 100ms",
            ),
        ] {
            let e = Settings::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn intervals() {
        let secs = Duration::from_secs;
        for (v, want) in [
            (toml::Value::Integer(3), secs(3)),
            ("3".into(), secs(3)),
            ("2m".into(), secs(120)),
            ("10 s".into(), secs(10)),
            (" 500ms ".into(), Duration::from_millis(500)),
            ("1m 30s".into(), secs(90)),
            ("1.5s".into(), Duration::from_millis(1_500)),
            ("100ms".into(), Duration::from_millis(100)),
        ] {
            assert_eq!(parse_interval(&v).unwrap(), want, "{v}");
        }
        for v in [
            toml::Value::Integer(0),
            toml::Value::Integer(-5),
            toml::Value::Float(1.0),
            "".into(),
            "0".into(),
            "99ms".into(),
            "ms".into(),
            "10 parsecs".into(),
        ] {
            let e = parse_interval(&v).unwrap_err().to_string();
            assert!(
                e.starts_with("conrdma: runtime options: report_interval"),
                "{e}"
            );
            assert!(
                e.contains("accepted: whole seconds or a string like"),
                "{e}"
            );
        }
    }
}
