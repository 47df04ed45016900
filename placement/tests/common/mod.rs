//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 and a minimal HTTP/1.1
//! client over a real TCP connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use conrdma_api::report::{NodeReport, PfReport, PoolReport, REPORT_VERSION};
use conrdma_placement::{Config, Running};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub const TOKEN: &str = "node-token-0123456789";

pub struct Server {
    pub running: Running,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Starts the service on loopback with a tokens file holding [`TOKEN`]; `tune` adjusts the config.
pub async fn start(tune: impl FnOnce(&mut Config, &Path)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# test credentials\n{TOKEN}\nshim-token\n"),
    )
    .unwrap();
    let mut cfg = Config::with_tokens_file(&tokens);
    tune(&mut cfg, dir.path());
    let running = conrdma_placement::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let addr = running.addr;
    Server { running, addr, dir }
}

/// The runtime the benchmarks drive the server and their clients on: two workers, as many as this
/// machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request on a fresh connection.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    call_auth(
        addr,
        method,
        path,
        token.map(|t| format!("Bearer {t}")),
        body,
    )
    .await
}

/// One request with a raw `Authorization` header value.
pub async fn call_auth(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<String>,
    body: &str,
) -> Reply {
    let mut sender = handshake(addr).await;
    let resp = sender
        .send_request(request(method, path, authorization, body.to_string()))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        content_type,
    }
}

/// A kept-alive connection, as kube-scheduler's client and the shims hold one (the benchmarks).
pub struct Conn(SendRequest<Full<Bytes>>);

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn(handshake(addr).await)
    }

    /// POSTs `body` to `path`, with a bearer token if given; the reply must be 200.
    pub async fn post(&mut self, path: &str, token: Option<&str>, body: String) -> Bytes {
        let req = request("POST", path, token.map(|t| format!("Bearer {t}")), body);
        self.0.ready().await.unwrap();
        let resp = self.0.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    }
}

async fn handshake(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    // Small requests back to back: do not let Nagle hold them.
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(
    method: &str,
    path: &str,
    authorization: Option<String>,
    body: String,
) -> hyper::Request<Full<Bytes>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.body(Full::new(Bytes::from(body))).unwrap()
}

pub fn pf(
    name: &str,
    cap_gbps: u64,
    guaranteed_gbps: u64,
    vfs_total: u32,
    vfs_free: u32,
) -> PfReport {
    PfReport {
        name: name.into(),
        line_rate_mbps: cap_gbps * 1000,
        capacity_mbps: cap_gbps * 1000,
        guaranteed_mbps: guaranteed_gbps * 1000,
        pods: vfs_total - vfs_free,
        vfs_total,
        vfs_free,
    }
}

pub fn node_report(node: &str, pfs: Vec<PfReport>) -> NodeReport {
    NodeReport {
        version: REPORT_VERSION,
        node: node.into(),
        time_unix_ms: 1_700_000_000_000,
        pools: vec![PoolReport::from_pfs("default", pfs)],
    }
}

pub async fn post_node(addr: SocketAddr, r: &NodeReport) {
    let reply = call(
        addr,
        "POST",
        "/v1/reports/node",
        Some(TOKEN),
        &serde_json::to_string(r).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
