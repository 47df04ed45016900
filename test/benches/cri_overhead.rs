//! CRI create+start+remove of a bandwidth-requesting pod's container on a real containerd, with the
//! ConRDMA NRI plugin connected vs without it, interleaved in one run so machine drift hits both.
//! Each sample: CreateContainer + StartContainer + StopContainer + RemoveContainer of the pod's
//! first container (the one the plugin admits); the pod's sandbox is set up and torn down outside
//! the timed region.
//!
//! Run (as root, after `cargo build --workspace --bins`):
//!   cargo bench -p conrdma-e2e --bench cri_overhead [-- SAMPLES] [plain|unlisted]
//! `plain` runs pods without ConRDMA annotations (the cost of having the plugin connected at all);
//! `unlisted` admits the pod but lists another container in `rdma.conrdma.io/containers`, so the
//! measured container gets no devices (the cost of admission alone, without the adjustment).

use std::time::{Duration, Instant};

use conrdma_e2e::timing::stats;
use conrdma_e2e::{simulate_nic, Containerd, ContainerdOptions, Cri};

fn mode() -> &'static str {
    match std::env::args()
        .skip(1)
        .find(|a| a == "plain" || a == "unlisted")
        .as_deref()
    {
        Some("plain") => "plain",
        Some("unlisted") => "unlisted",
        _ => "requesting",
    }
}

/// Total and per-phase (create, start, stop, remove) durations of one sample.
async fn sample(cri: &Cri, image: &str, i: usize, tag: &str) -> (Duration, [Duration; 4]) {
    let name = format!("bench-{tag}-{i}");
    let ann: Vec<(&str, &str)> = match mode() {
        "plain" => vec![],
        "unlisted" => vec![
            ("rdma.conrdma.io/bandwidth", "1Gbps"),
            ("rdma.conrdma.io/containers", "other"),
        ],
        _ => vec![("rdma.conrdma.io/bandwidth", "1Gbps")],
    };
    let pod = cri
        .run_pod(&name, "bench", &format!("uid-{name}"), &ann)
        .await
        .expect("pod");
    let t = Instant::now();
    let c = cri
        .create_container(&pod, "main", image, &["sleep", "3600"], &[])
        .await
        .expect("create");
    let t1 = t.elapsed();
    cri.start_container(&c).await.expect("start");
    let t2 = t.elapsed();
    cri.stop_container(&c, 0).await.expect("stop");
    let t3 = t.elapsed();
    cri.remove_container(&c).await.expect("remove");
    let d = t.elapsed();
    cri.stop_and_remove_pod(&pod).await.expect("remove pod");
    (d, [t1, t2 - t1, t3 - t2, d - t3])
}

#[tokio::main]
async fn main() {
    let samples = conrdma_e2e::timing::samples_arg(30);
    let work = tempfile::tempdir().expect("tempdir");
    let nic = work.path().join("nic");
    simulate_nic(&nic, 4, 16, "100G").expect("simulate-nic");

    let mut with = Containerd::start(ContainerdOptions::default())
        .await
        .expect("containerd");
    let without = Containerd::start(ContainerdOptions::default())
        .await
        .expect("containerd");
    // The ledger lives on tmpfs as on a node (/run/conrdma/nri), where fsync costs microseconds.
    let state = tempfile::tempdir_in("/dev/shm").expect("tmpfs state dir");
    let _plugin = with
        .start_plugin_on(&nic, state.path(), &[])
        .await
        .expect("plugin connected");

    println!(
        "containerd: {}",
        with.version().unwrap_or_else(|e| format!("unknown ({e})"))
    );
    let (cw, co) = (with.cri(), without.cri());
    // Warm-up: first runs pay for snapshot and shim start-up caches.
    for i in 0..3 {
        sample(&cw, with.image(), 1000 + i, "warm").await;
        sample(&co, without.image(), 1000 + i, "warm").await;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut pa, mut pb): (Vec<[Duration; 4]>, Vec<[Duration; 4]>) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // Alternate which goes first so ordering effects cancel out.
        let mut run_with = async || {
            let (d, p) = sample(&cw, with.image(), i, "with").await;
            a.push(d);
            pa.push(p);
        };
        if i % 2 == 0 {
            run_with().await;
            let (d, p) = sample(&co, without.image(), i, "without").await;
            b.push(d);
            pb.push(p);
        } else {
            let (d, p) = sample(&co, without.image(), i, "without").await;
            b.push(d);
            pb.push(p);
            run_with().await;
        }
    }
    let (am, amean, a90) = stats(a);
    let (bm, bmean, b90) = stats(b);
    println!(
        "CRI create+start+stop+remove, {} pod, {samples} samples each (interleaved)",
        mode()
    );
    println!("with ConRDMA NRI plugin    p50={am:7.1}ms mean={amean:7.1}ms p90={a90:7.1}ms");
    println!("without plugin (NRI on)    p50={bm:7.1}ms mean={bmean:7.1}ms p90={b90:7.1}ms");
    println!(
        "ratio with/without         p50={:.3} mean={:.3}",
        am / bm,
        amean / bmean
    );
    for (k, phase) in ["create", "start", "stop", "remove"].iter().enumerate() {
        let (x, y) = (
            stats(pa.iter().map(|p| p[k]).collect()).0,
            stats(pb.iter().map(|p| p[k]).collect()).0,
        );
        println!("  {phase:<7} p50 with={x:7.1}ms without={y:7.1}ms");
    }
    drop(_plugin);
    with.shutdown().await.expect("shutdown");
    without.shutdown().await.expect("shutdown");
}
