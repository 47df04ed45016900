//! What moving the VF netdev into the pod adds to a pod's start, on a real containerd with a
//! CNI bridge: RunPodSandbox + CreateContainer + StartContainer of the pod's first container,
//! for pods with their own network namespace in a pool with a network section (the VF moves in,
//! gets an address, comes up) vs the same pods in a pool without one (admitted, VF left on the
//! host), interleaved in one run so machine drift hits both. Teardown is outside the timed region.
//!
//! Run (as root, after `cargo build --workspace --bins`):
//!   cargo bench -p conrdma-e2e --bench pod_network [-- SAMPLES]

use std::time::{Duration, Instant};

use conrdma_e2e::standin::Fabric;
use conrdma_e2e::timing::stats;
use conrdma_e2e::{simulate_nic, CniBridge, Containerd, ContainerdOptions, Cri, PodSpec};

// One pool whose VFs move into pods, one whose VFs stay on the host.
const CONFIG: &str = concat!(
    "[[pool]]\n",
    "name = \"moved\"\n",
    "pfs = [\"ens1f0\"]\n",
    "[pool.network]\n",
    "subnet = \"10.77.0.0/24\"\n",
    "[[pool]]\n",
    "name = \"kept\"\n",
    "pfs = [\"ens1f1\"]\n",
);

/// (RunPodSandbox, CreateContainer, StartContainer) of one pod in `pool`.
async fn sample(cri: &Cri, image: &str, i: usize, pool: &str) -> [Duration; 3] {
    let name = format!("bench-{pool}-{i}");
    let spec = PodSpec::new(&name, "bench", &format!("uid-{name}"))
        .own_netns()
        .annotation("rdma.conrdma.io/pool", pool)
        .annotation("rdma.conrdma.io/bandwidth", "1Gbps");
    let t = Instant::now();
    let pod = cri.run_pod_spec(&spec).await.expect("pod");
    let t1 = t.elapsed();
    let c = cri
        .create_container(&pod, "main", image, &["sleep", "3600"], &[])
        .await
        .expect("create");
    let t2 = t.elapsed();
    cri.start_container(&c).await.expect("start");
    let t3 = t.elapsed();
    cri.stop_and_remove_pod(&pod).await.expect("remove pod");
    [t1, t2 - t1, t3 - t2]
}

#[tokio::main]
async fn main() {
    let samples = conrdma_e2e::timing::samples_arg(30);
    let work = tempfile::tempdir().expect("tempdir");
    let nic = work.path().join("nic");
    simulate_nic(&nic, 2, 4, "100G").expect("simulate-nic");
    let _fabric =
        Fabric::new(&["ens1f0v0", "ens1f0v1", "ens1f0v2", "ens1f0v3"]).expect("stand-ins");
    let config = work.path().join("node.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let mut cd = Containerd::start(ContainerdOptions {
        cni_bridge: Some(CniBridge {
            bridge: "crdbrbench".into(),
            subnet: "10.88.250.0/24".into(),
        }),
        ..Default::default()
    })
    .await
    .expect("containerd");
    // The ledger lives on tmpfs as on a node (/run/conrdma/nri).
    let state = tempfile::tempdir_in("/dev/shm").expect("tmpfs state dir");
    let plugin = cd
        .start_plugin_on(
            &nic,
            state.path(),
            &["--config".as_ref(), config.as_os_str()],
        )
        .await
        .expect("plugin connected");
    println!(
        "containerd: {}",
        cd.version().unwrap_or_else(|e| format!("unknown ({e})"))
    );
    let cri = cd.cri();
    for i in 0..3 {
        sample(&cri, cd.image(), 1000 + i, "moved").await;
        sample(&cri, cd.image(), 1000 + i, "kept").await;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // Alternate which goes first so ordering effects cancel out.
        if i % 2 == 0 {
            a.push(sample(&cri, cd.image(), i, "moved").await);
            b.push(sample(&cri, cd.image(), i, "kept").await);
        } else {
            b.push(sample(&cri, cd.image(), i, "kept").await);
            a.push(sample(&cri, cd.image(), i, "moved").await);
        }
    }
    let total = |v: &[[Duration; 3]]| v.iter().map(|p| p[0] + p[1] + p[2]).collect::<Vec<_>>();
    let (am, amean, a90) = stats(total(&a));
    let (bm, bmean, b90) = stats(total(&b));
    println!("RunPodSandbox + first container create+start, own netns, {samples} samples each (interleaved)");
    println!("VF moved into the pod   p50={am:7.1}ms mean={amean:7.1}ms p90={a90:7.1}ms");
    println!("VF left on the host     p50={bm:7.1}ms mean={bmean:7.1}ms p90={b90:7.1}ms");
    println!(
        "ratio moved/kept        p50={:.3} mean={:.3}",
        am / bm,
        amean / bmean
    );
    for (k, phase) in ["RunPodSandbox", "CreateContainer", "StartContainer"]
        .iter()
        .enumerate()
    {
        let (x, _, _) = stats(a.iter().map(|p| p[k]).collect());
        let (y, _, _) = stats(b.iter().map(|p| p[k]).collect());
        println!("  {phase:<15} p50 moved={x:7.1}ms kept={y:7.1}ms");
    }
    // The plugin logs how long each move took (rtnetlink, and RDMA netlink for rxe).
    let moves: Vec<Duration> = plugin
        .log()
        .lines()
        .filter(|l| l.contains("VF netdev moved into the pod"))
        .filter_map(|l| l.split("move_us=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .map(Duration::from_micros)
        .collect();
    let n = moves.len();
    let (m50, mmean, m90) = stats(moves);
    println!(
        "moves logged by the plugin: {n} (expected {}); the move itself p50={m50:.2}ms mean={mmean:.2}ms p90={m90:.2}ms",
        samples + 3
    );
    drop(plugin);
    cd.shutdown().await.expect("shutdown");
}
