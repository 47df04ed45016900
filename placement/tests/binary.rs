//! The `conrdma-placement` binary: flags, config errors, serving, and stopping on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_conrdma-placement");

#[test]
fn bad_config_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "tokens_file = \"tokens\"\npolicy = \"fastest\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("conrdma-placement: invalid config "),
        "{err}"
    );
    assert!(
        err.contains("fastest") && err.trim_end().lines().count() == 1,
        "{err}"
    );

    // A missing tokens file is named too.
    std::fs::write(&cfg, "tokens_file = \"missing\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("missing"), "{err}");

    // --config is required.
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("{}\n", common::TOKEN)).unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "tokens_file = \"tokens\"\nnode_ttl_seconds = 30\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The relative tokens path was resolved against the config's directory, and the log names the
    // bound address.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Keep draining stderr to the end so the child never writes into a closed pipe.
    let log = std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut all = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = l.find("addr=") {
                if let (Some(tx), Some(a)) = (tx.take(), l[at + 5..].split_whitespace().next()) {
                    let _ = tx.send(a.to_string());
                }
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let addr = rx.await.expect("listening line");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let r = common::call(addr, "GET", "/healthz", None, "").await;
    assert_eq!(r.status, 200);
    let report = common::node_report("worker-1", vec![common::pf("ens1f0", 100, 0, 8, 8)]);
    common::post_node(addr, &report).await;

    // kill(1), as an orchestrator's stop would: the webhook's crates stay free of node syscalls.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("did not stop within 5s of SIGTERM");
    })
    .await
    .unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
}
