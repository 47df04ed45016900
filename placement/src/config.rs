//! The webhook's configuration file (TOML). Unknown keys are refused, so a misspelt setting never
//! silently falls back to a default; every error is one line naming the file and the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{PlacementError, Result};

/// How `/prioritize` ranks nodes that can admit the pod. See `docs/placement.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Prefer the PF the pod fills most tightly: keeps large gaps open for large pods.
    #[default]
    BestFit,
    /// Prefer the PF with the largest share of its capacity still free after the pod.
    Spread,
    /// Prefer the pool whose measured traffic (usage reports) is the smallest share of its capacity.
    LeastMeasuredUsage,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::BestFit => "best-fit",
            Policy::Spread => "spread",
            Policy::LeastMeasuredUsage => "least-measured-usage",
        }
    }
}

/// What a node without a fresh report is to the extender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownNodes {
    /// Filtered out (in `FailedAndUnresolvableNodes`) for pods that ask for RDMA.
    #[default]
    Exclude,
    /// Passed through; scored in the middle of the range. The node's plugin still admits or refuses.
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// File of bearer credentials accepted on the report endpoints, one per line (`#` comments).
    pub tokens_file: PathBuf,
    /// A node whose last report is older than this is unknown.
    #[serde(default = "default_ttl")]
    pub node_ttl_seconds: u64,
    #[serde(default)]
    pub unknown_nodes: UnknownNodes,
    #[serde(default)]
    pub policy: Policy,
    /// Highest score `/prioritize` returns. kube-scheduler's extender API defines
    /// MaxExtenderPriority = 10 and multiplies extender scores by 100/10; keep 10 unless a scheduler
    /// is known to expect another range.
    #[serde(default = "default_max_score")]
    pub max_score: i64,
    /// Nodes silent for this long are dropped from memory (and from /metrics).
    #[serde(default = "default_forget")]
    pub forget_after_seconds: u64,
    /// Largest request body accepted (filter requests with full Node objects can be large).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Open connections served at once; more wait in the listen backlog. Each costs a file
    /// descriptor, so keep it below the process's limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client must finish sending a request's headers within this long (also the TLS
    /// handshake), or its connection is closed: slow-loris clients cannot hold slots.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_seconds: u64,
    /// A request must be read and answered within this long, or it gets 408 and its connection
    /// is closed: a slow body cannot hold a slot either.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// Serve HTTPS with these files; plain HTTP without.
    pub tls: Option<TlsFiles>,
}

fn default_ttl() -> u64 {
    60
}
fn default_max_score() -> i64 {
    10
}
fn default_forget() -> u64 {
    3600
}
fn default_max_body() -> usize {
    64 << 20
}
fn default_max_connections() -> usize {
    512
}
fn default_header_timeout() -> u64 {
    5
}
fn default_request_timeout() -> u64 {
    10
}

impl Config {
    /// A config with defaults and the given tokens file (for tests and embedding).
    pub fn with_tokens_file(tokens_file: impl Into<PathBuf>) -> Config {
        Config {
            tokens_file: tokens_file.into(),
            node_ttl_seconds: default_ttl(),
            unknown_nodes: UnknownNodes::default(),
            policy: Policy::default(),
            max_score: default_max_score(),
            forget_after_seconds: default_forget(),
            max_body_bytes: default_max_body(),
            max_connections: default_max_connections(),
            header_read_timeout_seconds: default_header_timeout(),
            request_timeout_seconds: default_request_timeout(),
            tls: None,
        }
    }

    /// Parses and checks a config; relative paths are taken relative to `base_dir`.
    pub fn from_toml(text: &str, origin: &str, base_dir: &Path) -> Result<Config> {
        let err = |reason: String| PlacementError::Config {
            origin: origin.to_string(),
            reason,
        };
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| err(e.message().replace('\n', " ")))?;
        if cfg.node_ttl_seconds == 0 {
            return Err(err("node_ttl_seconds must be at least 1".into()));
        }
        if cfg.forget_after_seconds < cfg.node_ttl_seconds {
            return Err(err(format!(
                "forget_after_seconds {} is below node_ttl_seconds {}",
                cfg.forget_after_seconds, cfg.node_ttl_seconds
            )));
        }
        if !(1..=100).contains(&cfg.max_score) {
            return Err(err(format!(
                "max_score {} is not from 1 to 100 (kube-scheduler's extender range is 0-10)",
                cfg.max_score
            )));
        }
        if cfg.max_body_bytes < 1024 {
            return Err(err("max_body_bytes must be at least 1024".into()));
        }
        if !(1..=65_536).contains(&cfg.max_connections) {
            return Err(err(format!(
                "max_connections {} is not from 1 to 65536",
                cfg.max_connections
            )));
        }
        for (key, v) in [
            (
                "header_read_timeout_seconds",
                cfg.header_read_timeout_seconds,
            ),
            ("request_timeout_seconds", cfg.request_timeout_seconds),
        ] {
            if !(1..=300).contains(&v) {
                return Err(err(format!("{key} {v} is not from 1 to 300")));
            }
        }
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        abs(&mut cfg.tokens_file);
        if let Some(tls) = cfg.tls.as_mut() {
            abs(&mut tls.cert);
            abs(&mut tls.key);
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PlacementError::io("reading", path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, &path.display().to_string(), base)
    }

    pub fn node_ttl(&self) -> Duration {
        Duration::from_secs(self.node_ttl_seconds)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    pub fn forget_after(&self) -> Duration {
        Duration::from_secs(self.forget_after_seconds)
    }
}

/// The accepted bearer credentials.
#[derive(Clone)]
pub struct Tokens(Vec<Vec<u8>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} credentials)", self.0.len())
    }
}

impl Tokens {
    pub fn parse(text: &str, origin: &str) -> Result<Tokens> {
        let tokens: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if let Some(t) = tokens
            .iter()
            .find(|t| t.iter().any(u8::is_ascii_whitespace))
        {
            return Err(PlacementError::Config {
                origin: origin.to_string(),
                reason: format!(
                    "a credential line contains whitespace ({} bytes); put one credential per line",
                    t.len()
                ),
            });
        }
        if tokens.is_empty() {
            return Err(PlacementError::Config {
                origin: origin.to_string(),
                reason: "no credentials in the tokens file: every report would be refused".into(),
            });
        }
        Ok(Tokens(tokens))
    }

    pub fn load(path: &Path) -> Result<Tokens> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PlacementError::io("reading", path, e))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// Whether `presented` is one of the credentials; compares without early exit on content.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut found = false;
        for t in &self.0 {
            found |= constant_time_eq(t, presented);
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let c =
            Config::from_toml("tokens_file = \"tokens\"\n", "t.toml", Path::new("/etc/x")).unwrap();
        assert_eq!(c.tokens_file, PathBuf::from("/etc/x/tokens"));
        assert_eq!(c.node_ttl_seconds, 60);
        assert_eq!(c.policy, Policy::BestFit);
        assert_eq!(c.unknown_nodes, UnknownNodes::Exclude);
        assert_eq!(c.max_score, 10);
        let c = Config::from_toml(
            "tokens_file = \"/t\"\npolicy = \"least-measured-usage\"\nunknown_nodes = \"neutral\"\nmax_score = 100\n[tls]\ncert = \"c.pem\"\nkey = \"/k.pem\"\n",
            "t.toml",
            Path::new("/d"),
        )
        .unwrap();
        assert_eq!(c.policy, Policy::LeastMeasuredUsage);
        assert_eq!(c.unknown_nodes, UnknownNodes::Neutral);
        let tls = c.tls.unwrap();
        assert_eq!(
            (tls.cert, tls.key),
            (PathBuf::from("/d/c.pem"), PathBuf::from("/k.pem"))
        );
    }

    #[test]
    fn errors_are_one_line_and_name_the_problem() {
        for (text, want) in [
            (
                "tokens_file = \"t\"\nnode_ttl = 5\n",
                "unknown field `node_ttl`",
            ),
            ("tokens_file = \"t\"\npolicy = \"fastest\"\n", "fastest"),
            ("", "missing field `tokens_file`"),
            ("tokens_file = \"t\"\nnode_ttl_seconds = 0\n", "at least 1"),
            ("tokens_file = \"t\"\nmax_score = 0\n", "max_score 0"),
            (
                "tokens_file = \"t\"\nmax_connections = 0\n",
                "max_connections 0",
            ),
            (
                "tokens_file = \"t\"\nheader_read_timeout_seconds = 0\n",
                "header_read_timeout_seconds 0",
            ),
        ] {
            let e = Config::from_toml(text, "c.toml", Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("c.toml"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn tokens() {
        let t = Tokens::parse("# nodes\nabc\n\n  def  \n", "f").unwrap();
        assert!(t.accepts(b"abc") && t.accepts(b"def"));
        assert!(!t.accepts(b"ab") && !t.accepts(b"") && !t.accepts(b"# nodes"));
        assert!(Tokens::parse("# none\n", "f").is_err());
        assert!(Tokens::parse("a b\n", "f").is_err());
    }
}
