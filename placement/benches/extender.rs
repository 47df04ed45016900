//! Filter + prioritize over 5,000 nodes: in-process (JSON in, decision, JSON out: what one request
//! costs the service) and over loopback HTTP with a kept-alive connection (what kube-scheduler sees).
//! Prints p50/p99. Run: `cargo bench -p conrdma-placement --bench extender`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use conrdma_api::report::{NodeReport, PfReport, PoolReport, REPORT_VERSION};
use conrdma_placement::extender::{host_priorities_json, ExtenderArgs};
use conrdma_placement::store::{Settings, Store};
use conrdma_placement::{verbs, Config};
use serde_json::json;

const NODES: usize = 5000;

fn reports() -> Vec<NodeReport> {
    let mut x: u64 = 7;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    (0..NODES)
        .map(|i| {
            let line = [25_000, 100_000, 200_000][i % 3];
            let pfs = (0..2)
                .map(|j| {
                    let free = rnd(9) as u32;
                    PfReport {
                        name: format!("ens{j}"),
                        line_rate_mbps: line,
                        capacity_mbps: line,
                        guaranteed_mbps: rnd(line + 1),
                        pods: 8 - free,
                        vfs_total: 8,
                        vfs_free: free,
                    }
                })
                .collect();
            NodeReport {
                version: REPORT_VERSION,
                node: format!("node-{i:05}"),
                time_unix_ms: 0,
                pools: vec![PoolReport::from_pfs("default", pfs)],
            }
        })
        .collect()
}

fn body(names: &[String]) -> String {
    let mut pod = common::fixture("extender-args-node-names.json")["Pod"].clone();
    pod["metadata"]["annotations"]["rdma.conrdma.io/bandwidth"] = json!("25Gbps");
    json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string()
}

/// CPU time of this thread: what the work costs, whatever else the machine's cores are doing.
fn cpu_now() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

fn pct(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99), *v.last().unwrap_or(&Duration::ZERO))
}

fn show(what: &str, v: Vec<Duration>) {
    let n = v.len();
    let (p50, p99, max) = pct(v);
    println!(
        "{what:<58} n={n:<5} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() {
    let reports = reports();
    let names: Vec<String> = reports.iter().map(|r| r.node.clone()).collect();
    let body = body(&names);
    println!(
        "filter+prioritize over {NODES} nodes (2 PFs each, nodeCacheCapable bodies of {} KiB)",
        body.len() / 1024
    );

    // In process: exactly what the handlers do, minus the socket.
    let cfg = Config::with_tokens_file("/dev/null");
    let mut store = Store::new(Settings::from(&cfg));
    let now = Instant::now();
    for r in &reports {
        store.put_node(r.clone(), now, 0);
    }
    let mut samples = Vec::new();
    let mut cpu = Vec::new();
    let mut passed = 0;
    let (mut parse, mut decide, mut encode) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..600 {
        let c0 = cpu_now();
        let t = Instant::now();
        let args: ExtenderArgs = serde_json::from_str(&body).unwrap();
        let tp = Instant::now();
        let f = verbs::filter(&store, args, Instant::now()).unwrap();
        let td = Instant::now();
        let out = f.to_json().unwrap();
        let (t1, c1) = (Instant::now(), cpu_now());
        if i >= 100 {
            parse += tp - t;
            decide += td - tp;
            encode += t1 - td;
        }
        // Building the prioritize body is the scheduler's work, not ours: not timed.
        let kept = f.node_names.unwrap_or_default();
        passed = kept.len();
        let pbody = serde_json::to_vec(&json!({"Pod": {"metadata": {"annotations": {"rdma.conrdma.io/bandwidth": "25Gbps"}}}, "NodeNames": kept})).unwrap();
        let (t2, c2) = (Instant::now(), cpu_now());
        let args: ExtenderArgs = serde_json::from_slice(&pbody).unwrap();
        let p = verbs::prioritize(&store, args, Instant::now()).unwrap();
        let out2 = host_priorities_json(&p).unwrap();
        let d = (t1 - t) + t2.elapsed();
        let c = (c1 - c0) + (cpu_now() - c2);
        std::hint::black_box((out, out2));
        if i >= 100 {
            samples.push(d);
            cpu.push(c);
        }
    }
    // The same with caches flushed between requests (a scheduler calls now and then, not in a loop).
    let mut junk = vec![0u8; 64 << 20];
    let mut cold = Vec::new();
    for i in 0..60u8 {
        for b in junk.iter_mut().step_by(64) {
            *b = b.wrapping_add(i);
        }
        let t = Instant::now();
        let args: ExtenderArgs = serde_json::from_str(&body).unwrap();
        let f = verbs::filter(&store, args, Instant::now()).unwrap();
        std::hint::black_box(f.to_json().unwrap());
        cold.push(t.elapsed());
    }
    std::hint::black_box(&junk);
    show("in-process, cold caches: parse + filter + encode", cold);
    println!(
        "({passed} of {NODES} nodes pass the filter for a 25Gbps pod; filter mean: parse {:.3} ms, decide {:.3} ms, encode {:.3} ms)",
        parse.as_secs_f64() * 2.0,
        decide.as_secs_f64() * 2.0,
        encode.as_secs_f64() * 2.0
    );
    show(
        "in-process: parse + filter + prioritize + encode (wall)",
        samples,
    );
    show(
        "in-process: parse + filter + prioritize + encode (CPU)",
        cpu,
    );

    // Full Node objects (nodeCacheCapable: false): realistic ~2.5 KiB objects, passed back unchanged.
    let node = common::fixture("extender-args-nodes.json")["Nodes"]["items"][0].clone();
    let items: Vec<_> = names
        .iter()
        .map(|n| {
            let mut o = node.clone();
            o["metadata"]["name"] = json!(n);
            o
        })
        .collect();
    let mut pod = common::fixture("extender-args-node-names.json")["Pod"].clone();
    pod["metadata"]["annotations"]["rdma.conrdma.io/bandwidth"] = json!("25Gbps");
    let full = json!({"Pod": pod, "Nodes": {"metadata": {}, "items": items}, "NodeNames": null})
        .to_string();
    let mut samples = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        let args: ExtenderArgs = serde_json::from_str(&full).unwrap();
        let f = verbs::filter(&store, args, Instant::now()).unwrap();
        std::hint::black_box(f.to_json().unwrap());
        samples.push(t.elapsed());
    }
    show(
        &format!(
            "in-process: filter, full Node objects ({} MiB body)",
            full.len() >> 20
        ),
        samples,
    );

    // Over loopback HTTP, one kept-alive connection, as kube-scheduler's client does.
    common::runtime().block_on(async {
        let s = common::start(|_, _| {}).await;
        for r in &reports {
            common::post_node(s.addr, r).await;
        }
        let mut conn = common::Conn::open(s.addr).await;
        let (mut both, mut filter_only) = (Vec::new(), Vec::new());
        for i in 0..400 {
            let t = Instant::now();
            let f = conn.post("/filter", None, body.clone()).await;
            let tf = t.elapsed();
            let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
            let pbody = json!({"Pod": {"metadata": {"annotations": {"rdma.conrdma.io/bandwidth": "25Gbps"}}}, "NodeNames": v["NodeNames"]}).to_string();
            let t2 = Instant::now();
            std::hint::black_box(conn.post("/prioritize", None, pbody).await);
            if i >= 50 {
                filter_only.push(tf);
                both.push(tf + t2.elapsed());
            }
        }
        show("loopback HTTP: POST /filter", filter_only);
        show("loopback HTTP: POST /filter + POST /prioritize", both);
        // The service's own view (handler time, from its latency histogram).
        let m = common::call(s.addr, "GET", "/metrics", None, "").await.body;
        for ep in ["filter", "prioritize"] {
            let get = |suffix: &str| -> f64 {
                let key = format!("conrdma_placement_request_duration_seconds_{suffix}{{endpoint=\"{ep}\"}} ");
                m.lines()
                    .find_map(|l| l.strip_prefix(&key))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(f64::NAN)
            };
            println!(
                "server-side handler time for /{ep:<10}: mean {:.3} ms over {} requests",
                get("sum") / get("count") * 1e3,
                get("count")
            );
        }
        s.running.stop().await.unwrap();
    });
}
