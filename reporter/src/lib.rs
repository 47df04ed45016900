//! The webhook client shared by the NRI plugin (node reports) and the shim (usage reports): POST a
//! JSON body to the placement service with a bearer credential, over HTTP or HTTPS (optionally
//! trusting a cluster CA file), with a hard timeout. It is blocking on purpose: the shim is a
//! synchronous process, and the plugin calls it from a blocking task.
//!
//! The caller decides what to do with a failure; [`SendError::retryable`] says whether trying the
//! same body again later can help (network trouble, 5xx, 429) or not (the webhook refused it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("webhook {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("webhook {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Config(String),
}

impl SendError {
    /// Whether sending the same body again later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Unreachable { .. } => true,
            SendError::Status { status, .. } => *status == 429 || *status >= 500,
            SendError::Config(_) => false,
        }
    }
}

/// Where reports go and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL, e.g. `https://conrdma-placement.conrdma-system.svc:8443`.
    pub url: String,
    /// File holding the bearer token (read at every send, so a rotated secret is picked up).
    pub credential_file: Option<PathBuf>,
    /// PEM bundle to trust instead of the public web roots (the cluster CA).
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

pub struct Client {
    target: Target,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(target: Target) -> Result<Client, SendError> {
        if !(target.url.starts_with("http://") || target.url.starts_with("https://")) {
            return Err(SendError::Config(format!(
                "webhook url {:?} must start with http:// or https://",
                target.url
            )));
        }
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(target.timeout))
            // Status codes are answers, not transport errors: read them ourselves.
            .http_status_as_error(false)
            .max_redirects(0);
        if let Some(ca) = &target.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| SendError::Config(format!("reading CA file {}: {e}", ca.display())))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(SendError::Config(format!(
                    "CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            cfg = cfg.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(certs)))
                    .build(),
            );
        }
        Ok(Client {
            agent: cfg.build().into(),
            target,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// POSTs `body` as JSON to `<url><path>`; Ok on any 2xx.
    pub fn post_json<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<(), SendError> {
        let url = format!("{}{path}", self.target.url.trim_end_matches('/'));
        let bytes = serde_json::to_vec(body)
            .map_err(|e| SendError::Config(format!("encoding report: {e}")))?;
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(token) = read_token(self.target.credential_file.as_deref())? {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
        let mut resp = req.send(&bytes[..]).map_err(|e| SendError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Err(SendError::Status {
            url,
            status,
            body: body.trim().chars().take(300).collect(),
        })
    }
}

fn read_token(file: Option<&Path>) -> Result<Option<String>, SendError> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        SendError::Config(format!("reading credential file {}: {e}", file.display()))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SendError::Config(format!(
            "credential file {} is empty",
            file.display()
        )));
    }
    Ok(Some(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback that records the request and answers `status`.
    fn serve_once(status: u16) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line.to_ascii_lowercase().starts_with("content-length:") {
                    len = line[15..].trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let reason = "x";
            write!(s, "HTTP/1.1 {status} {reason}\r\ncontent-length: 6\r\nconnection: close\r\n\r\nnope\r\n").unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (url, h)
    }

    fn client(url: &str, token: Option<&Path>) -> Client {
        Client::new(Target {
            url: url.into(),
            credential_file: token.map(Path::to_path_buf),
            ca_file: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn posts_json_with_the_bearer_credential() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "s3cret\n").unwrap();
        let (url, h) = serve_once(204);
        client(&url, Some(&tok))
            .post_json("/v1/reports/node", &serde_json::json!({"a": 1}))
            .unwrap();
        let req = h.join().unwrap();
        assert!(req.starts_with("POST /v1/reports/node HTTP/1.1"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("authorization: bearer s3cret"),
            "{req}"
        );
        assert!(req.ends_with(r#"{"a":1}"#), "{req}");
    }

    #[test]
    fn statuses_say_whether_to_retry() {
        let (url, h) = serve_once(401);
        let e = client(&url, None).post_json("/x", &1).unwrap_err();
        h.join().unwrap();
        assert!(!e.retryable());
        assert!(e.to_string().contains("answered 401: nope"), "{e}");
        let (url, h) = serve_once(503);
        assert!(client(&url, None)
            .post_json("/x", &1)
            .unwrap_err()
            .retryable());
        h.join().unwrap();
        // Nothing listens on a just-closed port.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = client(&format!("http://127.0.0.1:{port}"), None)
            .post_json("/x", &1)
            .unwrap_err();
        assert!(e.retryable(), "{e}");
    }

    #[test]
    fn bad_config_is_refused_up_front() {
        let e = Client::new(Target {
            url: "ftp://x".into(),
            credential_file: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
        })
        .err()
        .unwrap();
        assert!(e
            .to_string()
            .contains("must start with http:// or https://"));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not pem").unwrap();
        let e = Client::new(Target {
            url: "https://x".into(),
            credential_file: None,
            ca_file: Some(ca),
            timeout: Duration::from_secs(1),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = client("http://127.0.0.1:1", Some(&dir.path().join("missing")))
            .post_json("/x", &1)
            .unwrap_err();
        assert!(e.to_string().contains("reading credential file"), "{e}");
    }
}
