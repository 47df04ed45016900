//! HTTPS with rustls when the config names a certificate and key.

mod common;

use std::sync::Arc;

use conrdma_placement::config::TlsFiles;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let s = common::start(|cfg, dir| {
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
        cfg.tls = Some(TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        });
    })
    .await;
    assert!(s.running.tls);

    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (method, path, body, want) in [
        ("GET", "/healthz", "", 200),
        ("POST", "/v1/reports/node", "{}", 401),
    ] {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path}");
        let _ = resp.into_body().collect().await.unwrap();
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/healthz")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(sender.send_request(req).await.is_err());
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn bad_tls_files_fail_at_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), "t\n").unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("tls.key"), "").unwrap();
    let mut cfg = conrdma_placement::Config::with_tokens_file(dir.path().join("tokens"));
    cfg.tls = Some(TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    });
    let err = match conrdma_placement::start("127.0.0.1:0".parse().unwrap(), cfg).await {
        Ok(_) => panic!("started with a bogus certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("tls: ") && err.contains("tls.crt"), "{err}");
    assert!(!err.contains('\n'));
}
