//! Slow and huge clients against the webhook on loopback, while kube-scheduler-shaped filter calls
//! go on: the slow ones lose their connection within the configured bounds, and the extender keeps
//! answering as fast as before.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: u64 = 1;
const REQUEST_TIMEOUT: u64 = 2;

/// Sequential filter calls on fresh connections, as a scheduler without keep-alive makes them.
async fn filter_latencies(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let args = fixture("extender-args-node-names.json").to_string();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = call(addr, "POST", "/filter", None, &args).await;
        assert_eq!(r.status, 200, "{}", r.body);
        v.push(t.elapsed());
    }
    v
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99) / 100 - 1]
}

/// A slow-loris client: starts a request and sends one more header line every 200 ms, never
/// finishing. Returns how long until the server closed the connection (None: still open at 6 s).
async fn slow_loris(addr: SocketAddr) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let t = Instant::now();
    s.write_all(b"POST /filter HTTP/1.1\r\nHost: conrdma\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    while t.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            return Some(t.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {} // an error response; the close follows
            Err(_) => {}
        }
    }
    None
}

/// A huge, trickling upload: announces 10 MB (within the body cap) and sends 1 KiB every 100 ms.
/// Returns the status line it got and when.
async fn trickle_upload(addr: SocketAddr) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    s.write_all(
        b"POST /filter HTTP/1.1\r\nHost: conrdma\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = [b' '; 1024];
    let mut buf = vec![0u8; 4096];
    while t.elapsed() < Duration::from_secs(8) {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            if n > 0 {
                let text = String::from_utf8_lossy(&buf[..n]);
                return (text.lines().next().unwrap_or("").to_string(), t.elapsed());
            }
            break;
        }
    }
    (String::new(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_huge_clients_lose_their_slot_and_do_not_starve_the_extender() {
    let s = start(|c, _| {
        c.header_read_timeout_seconds = HEADER_TIMEOUT;
        c.request_timeout_seconds = REQUEST_TIMEOUT;
        c.max_body_bytes = 32 << 20;
    })
    .await;
    post_node(
        s.addr,
        &node_report("worker-2", vec![pf("ens1f0", 100, 50, 8, 6)]),
    )
    .await;
    let before = p99(filter_latencies(s.addr, 100).await);

    let loris: Vec<_> = (0..200).map(|_| tokio::spawn(slow_loris(s.addr))).collect();
    let uploads: Vec<_> = (0..4)
        .map(|_| tokio::spawn(trickle_upload(s.addr)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = p99(filter_latencies(s.addr, 100).await);

    for l in loris {
        let closed = l
            .await
            .unwrap()
            .expect("a slow-loris connection was never closed");
        assert!(
            closed < Duration::from_secs(HEADER_TIMEOUT + 2),
            "closed only after {closed:?}"
        );
    }
    for u in uploads {
        let (status, after) = u.await.unwrap();
        assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
        assert!(
            after < Duration::from_secs(REQUEST_TIMEOUT + 2),
            "{after:?}"
        );
    }
    // The extender verbs kept their pace (generous: a loaded 2-core machine is noisy).
    assert!(
        during <= before * 3 + Duration::from_millis(50),
        "filter p99 {during:?} under attack vs {before:?} before"
    );
    println!(
        "filter p99 before {before:?}, during 200 slow-loris + 4 trickling uploads {during:?}"
    );
    s.running.stop().await.unwrap();
}
