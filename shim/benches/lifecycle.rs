//! The ConRDMA shim vs containerd's stock runc shim, in one containerd run, interleaved so machine
//! drift hits both:
//! - container lifecycle: CreateContainer + StartContainer + StopContainer + RemoveContainer of a
//!   bandwidth pod's container (the one whose Create makes the shim set the VF rate), the pod
//!   set up and torn down outside the timed region;
//! - pod lifecycle: RunPodSandbox + create/start that container + StopPodSandbox +
//!   RemovePodSandbox (includes launching the proxy and its runc child, and the reset);
//! - memory: VmRSS of the proxy processes with several pods running (what the shim adds per pod;
//!   the runc child it runs is the same process the stock runtime would run).
//!
//! Both runtimes get the NRI plugin and the same annotations. Run as root:
//!   cargo build --release -p conrdma-shim -p conrdma-nri-plugin -p conrdmactl
//!   cargo bench -p conrdma-shim --bench lifecycle [-- SAMPLES]
//! (without release binaries the debug ones from `cargo build --workspace --bins` are used.)

use std::process::Command;
use std::time::{Duration, Instant};

use conrdma_e2e::containerd::shim_pids;
use conrdma_e2e::{
    shim_dir, shim_runtime, simulate_nic, workspace_bin, Containerd, ContainerdOptions, Cri,
    PodSpec,
};

const SHIM: &str = "containerd-shim-conrdma-v1";
const BW: (&str, &str) = ("rdma.conrdma.io/bandwidth", "1Gbps");

async fn pod(cri: &Cri, name: &str, handler: &str) -> String {
    let spec = PodSpec::new(name, "bench", &format!("uid-{name}"))
        .runtime_handler(handler)
        .annotation(BW.0, BW.1);
    cri.run_pod_spec(&spec).await.expect("pod")
}

async fn container_cycle(cri: &Cri, pod_id: &str) -> Duration {
    let t = Instant::now();
    let c = cri
        .create_container(pod_id, "main", "", &["sleep", "3600"], &[])
        .await
        .expect("create");
    cri.start_container(&c).await.expect("start");
    cri.stop_container(&c, 0).await.expect("stop");
    cri.remove_container(&c).await.expect("remove");
    t.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (ms(v[v.len() / 2]), mean, ms(v[(v.len() * 9) / 10]))
}

fn kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (VmRSS, RssAnon, Pss) in KiB: RSS counts the binary's pages every proxy shares; Pss splits
/// shared pages among their users; RssAnon is the process's own memory.
fn mem_kib(pid: i32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some((
        kib(&status, "VmRSS:")?,
        kib(&status, "RssAnon:").unwrap_or(0),
        kib(&rollup, "Pss:").unwrap_or(0),
    ))
}

/// Median of per-pair ratios b/a.
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| ms(*y) / ms(*x)).collect();
    r.sort_by(|x, y| x.total_cmp(y));
    r[r.len() / 2]
}

/// Prints one timed step of both runtimes (`a` runc, `b` conrdma) and their ratios.
fn compare(step: &str, a: &mut [Duration], b: &mut [Duration]) {
    let pr = paired_ratio(a, b);
    let (ra, rb) = (stats(a), stats(b));
    println!("{:<41}median  mean  p90", format!("{step} (ms)"));
    println!("  runc shim      {:7.1} {:6.1} {:6.1}", ra.0, ra.1, ra.2);
    println!("  conrdma shim   {:7.1} {:6.1} {:6.1}", rb.0, rb.1, rb.2);
    println!(
        "  ratio conrdma/runc: median {:.3}, mean {:.3}, median of paired ratios {pr:.3}",
        rb.0 / ra.0,
        rb.1 / ra.1
    );
}

fn argv0(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|raw| {
            raw.split(|b| *b == 0)
                .next()
                .map(|s| String::from_utf8_lossy(s).into_owned())
        })
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let shim = workspace_bin(SHIM).expect("shim binary");
    let sim = tempfile::tempdir().unwrap();
    let nic = sim.path().join("nic");
    simulate_nic(&nic, 2, 16, "100G").unwrap();
    std::fs::write(sim.path().join("node.toml"), "").unwrap();
    let h = shim_runtime("conrdma", &nic, &sim.path().join("runc"));
    let opts = ContainerdOptions {
        runtimes: vec![h],
        extra_path: vec![shim_dir().unwrap()],
        ..Default::default()
    };
    let mut cd = Containerd::start(opts).await.expect("containerd");
    let mark = cd.log_mark();
    let mut plugin = Command::new(workspace_bin("conrdma-nri-plugin").unwrap());
    plugin
        .arg("--socket")
        .arg(cd.nri_socket())
        .arg("--root")
        .arg(&nic)
        .arg("--state-dir")
        .arg(sim.path().join("state"))
        .arg("--config")
        .arg(sim.path().join("node.toml"))
        .arg("--cri-socket")
        .arg(cd.socket());
    let _plugin = cd.spawn_process("nri-plugin", &mut plugin).unwrap();
    cd.wait_for_plugin_since(mark, "10-conrdma", Duration::from_secs(20))
        .await
        .unwrap();
    let cri = cd.cri();
    println!(
        "containerd: {}",
        cd.version().unwrap_or_else(|e| format!("unknown ({e})"))
    );
    println!("shim binary: {}", shim.display());
    println!("samples per runtime: {samples} (interleaved)");

    // Warm-up: one of each.
    for (i, h) in ["runc", "conrdma"].iter().enumerate() {
        let p = pod(&cri, &format!("warm-{i}"), h).await;
        container_cycle(&cri, &p).await;
        cri.stop_and_remove_pod(&p).await.unwrap();
    }

    // Container lifecycle in a running pod.
    let runc_pod = pod(&cri, "ctr-runc", "runc").await;
    let our_pod = pod(&cri, "ctr-conrdma", "conrdma").await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // ABBA order, so neither runtime always runs first.
        if i % 2 == 0 {
            a.push(container_cycle(&cri, &runc_pod).await);
            b.push(container_cycle(&cri, &our_pod).await);
        } else {
            b.push(container_cycle(&cri, &our_pod).await);
            a.push(container_cycle(&cri, &runc_pod).await);
        }
    }
    cri.stop_and_remove_pod(&runc_pod).await.unwrap();
    cri.stop_and_remove_pod(&our_pod).await.unwrap();
    compare("container create+start+stop+remove", &mut a, &mut b);

    // Whole pod lifecycle.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let order = if i % 2 == 0 {
            [("runc", &mut a), ("conrdma", &mut b)]
        } else {
            [("conrdma", &mut b), ("runc", &mut a)]
        };
        for (h, v) in order {
            let t = Instant::now();
            let p = pod(&cri, &format!("pod-{h}-{i}"), h).await;
            let c = cri
                .run_container(&p, "main", "", &["sleep", "3600"], &[])
                .await
                .expect("container");
            let _ = c;
            cri.stop_and_remove_pod(&p).await.unwrap();
            v.push(t.elapsed());
        }
    }
    compare("pod run+container+stop+remove", &mut a, &mut b);

    // Memory with K pods of each runtime running.
    const K: usize = 8;
    let mut pods = Vec::new();
    for i in 0..K {
        for h in ["runc", "conrdma"] {
            let p = pod(&cri, &format!("mem-{h}-{i}"), h).await;
            cri.run_container(&p, "main", "", &["sleep", "3600"], &[])
                .await
                .expect("container");
            pods.push(p);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let addr = cd.paths().grpc_socket.to_string_lossy().into_owned();
    let pids = shim_pids(&addr);
    let (mut proxy, mut child, mut stock) = (Vec::new(), Vec::new(), Vec::new());
    for p in pids {
        let a0 = argv0(p);
        let args = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let Some(kib) = mem_kib(p) else { continue };
        if a0.ends_with(SHIM) {
            proxy.push(kib);
        } else if args.contains("-conrdma") {
            child.push(kib);
        } else {
            stock.push(kib);
        }
    }
    let avg = |v: &[(u64, u64, u64)], f: fn(&(u64, u64, u64)) -> u64| {
        v.iter().map(f).sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0
    };
    let line = |name: &str, v: &[(u64, u64, u64)]| {
        println!(
            "  {name:<30} VmRSS {:5.2}  RssAnon {:5.2}  Pss {:5.2}  (max VmRSS {:.2}) [{}]",
            avg(v, |m| m.0),
            avg(v, |m| m.1),
            avg(v, |m| m.2),
            v.iter().map(|m| m.0).max().unwrap_or(0) as f64 / 1024.0,
            v.len()
        )
    };
    println!("memory with {K} pods per runtime (MiB per process, averages)");
    line("conrdma proxy (added per pod)", &proxy);
    line("its runc child", &child);
    line("stock runc shim", &stock);
    for p in pods {
        cri.stop_and_remove_pod(&p).await.unwrap();
    }
    cd.shutdown().await.unwrap();
}
