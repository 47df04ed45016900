//! Report ingestion over loopback HTTP on this machine's cores (server and senders share them):
//! node reports one per request, and usage reports in batches as the shim sends them. Prints
//! reports/s. Run: `cargo bench -p conrdma-placement --bench ingest`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conrdma_api::report::{PodId, UsageBatch, UsageReport};

const CONNECTIONS: usize = 4;
const RUN: Duration = Duration::from_secs(5);

async fn blast(
    addr: std::net::SocketAddr,
    path: &'static str,
    bodies: Arc<Vec<String>>,
    per_body: u64,
) -> (u64, u64) {
    let requests = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (bodies, requests) = (bodies.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = common::Conn::open(addr).await;
            let mut i = c;
            while Instant::now() < deadline {
                let body = bodies[i % bodies.len()].clone();
                conn.post(path, Some(common::TOKEN), body).await;
                requests.fetch_add(1, Ordering::Relaxed);
                i += CONNECTIONS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = requests.load(Ordering::Relaxed);
    (n, n * per_body)
}

fn main() {
    common::runtime().block_on(async {
        let s = common::start(|_, _| {}).await;
        let nodes: Vec<String> = (0..1000)
            .map(|i| {
                serde_json::to_string(&common::node_report(
                    &format!("node-{i:04}"),
                    vec![common::pf("ens0", 100, 40, 8, 5), common::pf("ens1", 100, 10, 8, 7)],
                ))
                .unwrap()
            })
            .collect();
        let (req, n) = blast(s.addr, "/v1/reports/node", Arc::new(nodes), 1).await;
        println!(
            "node reports, 1 per request, {CONNECTIONS} connections: {:>8.0} reports/s ({} in {:?})",
            n as f64 / RUN.as_secs_f64(),
            req,
            RUN
        );
        for batch in [1usize, 20, 100] {
            let bodies: Vec<String> = (0..200)
                .map(|b| {
                    let reports = (0..batch)
                        .map(|k| UsageReport {
                            node: format!("node-{:04}", (b * batch + k) % 1000),
                            pod: PodId {
                                namespace: "ml".into(),
                                name: format!("pod-{b}-{k}"),
                                uid: format!("uid-{b}-{k}"),
                            },
                            pool: "default".into(),
                            pf: "ens0".into(),
                            vf: k as u32 % 8,
                            guaranteed_mbps: 10_000,
                            limit_mbps: 25_000,
                            tx_mbps: 9_876.5,
                            rx_mbps: 321.25,
                            window_start_unix_ms: 1_732_441_190_000,
                            window_end_unix_ms: 1_732_441_200_000 + b as u64,
                            is_final: false,
                        })
                        .collect();
                    serde_json::to_string(&UsageBatch::new(reports)).unwrap()
                })
                .collect();
            let (req, n) = blast(s.addr, "/v1/reports/usage", Arc::new(bodies), batch as u64).await;
            println!(
                "usage reports, {batch:>3} per request, {CONNECTIONS} connections: {:>8.0} reports/s ({:.0} requests/s)",
                n as f64 / RUN.as_secs_f64(),
                req as f64 / RUN.as_secs_f64()
            );
        }
        s.running.stop().await.unwrap();
    });
}
