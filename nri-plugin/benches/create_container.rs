//! CreateContainer handling inside the plugin, 64 VFs on 4 PFs: admission + ledger write + spec
//! adjustment for a pod's first container, the lookup path for its second container, and the
//! pass-through for a pod without ConRDMA annotations. Prints p50/p99/max per path and state dir,
//! and once more with the work-conserving controller steering every pool, where admitting a pod
//! waits for the controller's round that makes room for it (the runtime's start rate is written
//! after each admission, outside the timed region, as the shim would).
//!
//! Run: cargo bench -p conrdma-nri-plugin --bench create_container

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conrdma_api::rate::Rate;
use conrdma_node::limiter::{RateLimiter, SimulatedLimiter};
use conrdma_node::simulate::{build, Binding, SimOptions};
use conrdma_node::NodeConfig;
use conrdma_nri::{Container, CreateContainerRequest, PodSandbox};
use conrdma_nri_plugin::{conserve, NodeState, Plugin};

const ROUNDS: usize = 40;

fn request(pod: usize, ctr: &str, annotate: bool) -> CreateContainerRequest {
    let mut p = PodSandbox::new();
    p.id = format!("sandbox-{pod:06}");
    p.uid = format!("uid-{pod}");
    p.namespace = "bench".into();
    p.name = format!("pod-{pod}");
    if annotate {
        p.annotations
            .insert("rdma.conrdma.io/bandwidth".into(), "1.5Gbps".into());
        p.annotations
            .insert("rdma.conrdma.io/bandwidth-limit".into(), "4Gbps".into());
    }
    p.annotations
        .insert("io.kubernetes.pod.name".into(), p.name.clone());
    let mut c = Container::new();
    c.id = format!("ctr-{pod}-{ctr}");
    c.pod_sandbox_id = p.id.clone();
    c.name = ctr.into();
    let mut r = CreateContainerRequest::new();
    r.pod = Some(p).into();
    r.container = Some(c).into();
    r
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, v: &mut [Duration]) {
    let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
    println!(
        "{name:<44} n={:<5} p50={:>7.1}us p99={:>7.1}us max={:>7.1}us",
        v.len(),
        us(p50),
        us(p99),
        us(max)
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn run(state_parent: &Path, label: &str, steered: bool) {
    let sys = tempfile::tempdir_in(state_parent).unwrap();
    let opts = SimOptions {
        pfs: 4,
        vfs_per_pf: 16,
        speed: Rate::parse("100G").unwrap(),
        binding: Binding::Pci,
        mknod: false,
    };
    build(sys.path(), &opts).unwrap();
    let state = tempfile::tempdir_in(state_parent).unwrap();
    let cfg = if steered {
        NodeConfig::from_toml(
            "[conserve]\nenabled = true\nlimiter = \"simulated\"\n",
            "bench",
        )
        .unwrap()
    } else {
        NodeConfig::default()
    };
    let node = Arc::new(NodeState::open(sys.path(), state.path(), cfg).unwrap());
    let limiter = SimulatedLimiter::new(sys.path());
    if steered {
        // Runs until the process exits.
        conserve::spawn(node.clone()).unwrap();
    }
    let plugin = Plugin::new(node.clone());
    let (mut first, mut second, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut pod = 0;
    for _ in 0..ROUNDS {
        // Fill all 64 VFs, then free them, so every admission searches a realistically busy ledger.
        let start_pod = pod;
        for _ in 0..64 {
            let t = Instant::now();
            let resp = plugin.create(&request(pod, "main", true)).unwrap();
            first.push(t.elapsed());
            assert!(resp.adjust.is_some());
            if steered {
                let held = node.held();
                let h = held
                    .iter()
                    .find(|h| h.pod.uid == format!("uid-{pod}"))
                    .unwrap();
                let r = &h.record;
                limiter.set(&r.pf, r.vf, r.start_rate()).unwrap();
            }
            let t = Instant::now();
            plugin.create(&request(pod, "sidecar", true)).unwrap();
            second.push(t.elapsed());
            let t = Instant::now();
            plugin
                .create(&request(pod + 1_000_000, "main", false))
                .unwrap();
            plain.push(t.elapsed());
            pod += 1;
        }
        for p in start_pod..pod {
            node.release(&format!("sandbox-{p:06}")).unwrap();
        }
    }
    report(
        &format!("first container (admit + ledger write) [{label}]"),
        &mut first,
    );
    report(&format!("second container (lookup) [{label}]"), &mut second);
    report(&format!("pod without annotations [{label}]"), &mut plain);
}

fn main() {
    println!("CreateContainer handling, 64 VFs on 4 PFs, {ROUNDS} fill/drain rounds");
    let disk = std::env::temp_dir();
    let tmpfs = Some(Path::new("/dev/shm")).filter(|p| p.is_dir());
    if let Some(t) = tmpfs {
        run(t, "state on tmpfs", false);
    }
    run(&disk, "state on disk", false);
    run(tmpfs.unwrap_or(&disk), "steered by [conserve]", true);
}
