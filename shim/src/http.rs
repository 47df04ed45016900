//! A minimal HTTP/1.1 client for one thing: POSTing a JSON body with a bearer credential and
//! reading the status. One connection per request (`Connection: close`), hard timeouts, no
//! redirects. Plain `http://` only; put a TLS-terminating proxy (or the placement service's
//! plain listener) in front for anything else.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'.
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let accepted = "accepted: http://host[:port]/path";
        let rest = if let Some(r) = text.strip_prefix("http://") {
            r
        } else if text.starts_with("https://") {
            return Err(format!(
                "webhook_url {text:?}: https is not supported by the shim; use the placement service's plain http listener on the cluster network ({accepted})"
            ));
        } else {
            return Err(format!(
                "webhook_url {text:?} must start with http:// or https:// ({accepted})"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!(
                "webhook_url {text:?} must not carry user info; use credential_file"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("webhook_url {text:?}: unclosed '[' ({accepted})"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok(),
                None if after.is_empty() => Some(80),
                None => None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()),
                None => (authority.to_string(), Some(80)),
            }
        };
        let port = port.ok_or_else(|| format!("webhook_url {text:?}: bad port ({accepted})"))?;
        if host.is_empty() {
            return Err(format!("webhook_url {text:?} has no host ({accepted})"));
        }
        Ok(Url {
            host,
            port,
            path: path.to_string(),
        })
    }

    fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// The server's answer: status and (the start of) its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// POSTs `body` as JSON. Err = no HTTP answer (connect, timeout, garbage).
pub fn post_json(
    url: &Url,
    bearer: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", url.host))?
        .collect();
    let mut last = format!("{} resolves to no address", url.host);
    let mut stream = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    let mut s = stream.ok_or(last)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: conrdma-shim\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.host_header(),
        body.len()
    );
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .and_then(|_| s.flush())
        .map_err(|e| format!("sending to {}:{}: {e}", url.host, url.port))?;
    // Read the answer (bounded: we need the status and a little of the body for logs).
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if Instant::now() >= deadline {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 16 * 1024 {
                    break;
                }
            }
            Err(e) if buf.is_empty() => {
                return Err(format!(
                    "reading the answer of {}:{}: {e}",
                    url.host, url.port
                ))
            }
            Err(_) => break,
        }
    }
    parse_answer(&buf)
}

/// Status from the status line; body = whatever follows the headers (first 512 bytes).
pub fn parse_answer(buf: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match (version.starts_with("HTTP/1."), status) {
        (true, Some(status)) => {
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.chars().take(512).collect::<String>())
                .unwrap_or_default();
            Ok(Answer {
                status,
                body: body.trim().to_string(),
            })
        }
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            line.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        let u = Url::parse("http://placement.kube-system:8080/v1/reports/usage").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("placement.kube-system", 8080, "/v1/reports/usage")
        );
        assert_eq!(u.host_header(), "placement.kube-system:8080");
        let u = Url::parse("http://[::1]/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(u.host_header(), "[::1]");
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        for bad in [
            "ftp://x",
            "http://:80/",
            "http://h:x/",
            "http://u:p@h/",
            "https://h/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers() {
        let a =
            parse_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\noops\n").unwrap();
        assert_eq!((a.status, a.body.as_str()), (400, "oops"));
        assert!(parse_answer(b"garbage").is_err());
    }

    #[test]
    fn posts_to_a_real_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("{\"a\":1}") {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/v1/reports/usage")).unwrap();
        let a = post_json(&url, Some("s3cret"), b"{\"a\":1}", Duration::from_secs(5)).unwrap();
        assert_eq!(a.status, 202);
        let req = server.join().unwrap();
        assert!(
            req.starts_with("POST /v1/reports/usage HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("Authorization: Bearer s3cret\r\n"), "{req}");
        assert!(req.contains("Content-Length: 7\r\n"), "{req}");
        // Nobody listening: a prompt error, not a hang.
        drop(TcpListener::bind("127.0.0.1:0"));
        let dead = Url::parse("http://127.0.0.1:1/").unwrap();
        assert!(post_json(&dead, None, b"{}", Duration::from_secs(2)).is_err());
    }
}
