//! The work-conserving controller in the NRI plugin, on a real containerd (2.x or 1.7: CONRDMA_CONTAINERD) with runc, pods run
//! by the ConRDMA shim (which sets each VF's rate at start and resets it at the end), over a
//! simulated SR-IOV NIC. The test plays the NIC's data path: a thread moves each VF's transmit
//! counter at `min(demand, max_tx_rate)`, rewriting the stats file atomically, so the controller
//! sees real counter deltas and the test steers demand.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conrdma_api::AllocationRecord;
use conrdma_e2e::{
    shim_dir, shim_runtime, simulate_nic, ChildGuard, Containerd, ContainerdOptions, PodSpec,
};
use conrdma_node::limiter::{RateLimiter, SimulatedLimiter, VfRate};

const HANDLER: &str = "conrdma";
const WAIT: Duration = Duration::from_secs(30);
const BW: &str = "rdma.conrdma.io/bandwidth";
const LIMIT: &str = "rdma.conrdma.io/bandwidth-limit";
const PF: &str = "ens1f0";
const LINE: u64 = 100_000;
const VFS: u32 = 4;
const INTERVAL_MS: u64 = 1000;

/// The simulated NIC's data path: every 5 ms each VF sends `min(demand, max_tx_rate)` (the line
/// when no max is set) and its `tx_bytes` grows by that much. It also keeps the highest sum of the
/// VFs' maxima it has seen (those set), to show the PF's bound held throughout.
struct Wire {
    demand: Arc<Vec<AtomicU64>>,
    peak_sum: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wire {
    fn start(nic: &Path) -> Wire {
        let demand: Arc<Vec<AtomicU64>> = Arc::new((0..VFS).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let peak_sum = Arc::new(AtomicU64::new(0));
        let (d, s, peak) = (demand.clone(), stop.clone(), peak_sum.clone());
        let limiter = SimulatedLimiter::new(nic);
        let thread = std::thread::spawn(move || {
            let mut bytes = [0f64; VFS as usize];
            let mut caps = [LINE; VFS as usize];
            let mut maxima = [0u64; VFS as usize];
            let mut last = Instant::now();
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
                let now = Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                for vf in 0..VFS {
                    let want = d[vf as usize].load(Ordering::SeqCst);
                    // A VF being removed can vanish under the read: the last cap read holds.
                    if let Ok(r) = limiter.get(PF, vf) {
                        caps[vf as usize] = if r.max_mbps == 0 { LINE } else { r.max_mbps };
                        maxima[vf as usize] = r.max_mbps;
                    }
                    let cap = caps[vf as usize];
                    bytes[vf as usize] += want.min(cap) as f64 * 1e6 / 8.0 * dt;
                    let dir = limiter.vf_dir(PF, vf);
                    let tmp = dir.join("stats.tmp");
                    let text = format!("tx_bytes: {}\nrx_bytes: 0\n", bytes[vf as usize] as u64);
                    if std::fs::write(&tmp, text).is_ok() {
                        let _ = std::fs::rename(&tmp, dir.join("stats"));
                    }
                }
                peak.fetch_max(maxima.iter().sum(), Ordering::SeqCst);
            }
        });
        Wire {
            demand,
            peak_sum,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, vf: u32, mbps: u64) {
        self.demand[vf as usize].store(mbps, Ordering::SeqCst);
    }

    fn peak_sum(&self) -> u64 {
        self.peak_sum.load(Ordering::SeqCst)
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Node {
    cd: Containerd,
    plugin: Option<ChildGuard>,
    sim: tempfile::TempDir,
}

impl Node {
    /// containerd with the `conrdma` handler on a 1-PF, 4-VF, 100G simulated NIC, and the plugin
    /// with `config` and metrics on an ephemeral port.
    async fn start(config: &str) -> Node {
        let sim = tempfile::tempdir().unwrap();
        let nic = sim.path().join("nic");
        simulate_nic(&nic, 1, VFS, "100G").unwrap();
        std::fs::write(sim.path().join("node.toml"), config).unwrap();
        let h = shim_runtime(HANDLER, &nic, &sim.path().join("runc"));
        let opts = ContainerdOptions {
            runtimes: vec![h],
            extra_path: vec![shim_dir().unwrap()],
            ..Default::default()
        };
        let mut cd = Containerd::start(opts).await.unwrap();
        let p = sim.path();
        let plugin = cd
            .start_nri_plugin([
                "--root".as_ref(),
                nic.as_os_str(),
                "--state-dir".as_ref(),
                p.join("state").as_os_str(),
                "--config".as_ref(),
                p.join("node.toml").as_os_str(),
                "--metrics-listen".as_ref(),
                "127.0.0.1:0".as_ref(),
            ])
            .await
            .unwrap();
        Node {
            cd,
            plugin: Some(plugin),
            sim,
        }
    }

    fn nic(&self) -> PathBuf {
        self.sim.path().join("nic")
    }

    /// The VF's rates.
    fn rate(&self, vf: u32) -> VfRate {
        SimulatedLimiter::new(self.nic()).get(PF, vf).unwrap()
    }

    fn plugin_log(&self) -> String {
        self.plugin.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    async fn pod(&self, name: &str, annotations: &[(&str, &str)]) -> (String, AllocationRecord) {
        let cri = self.cd.cri();
        let mut spec =
            PodSpec::new(name, "default", &format!("uid-{name}")).runtime_handler(HANDLER);
        for (k, v) in annotations {
            spec = spec.annotation(k, v);
        }
        let pod = cri.run_pod_spec(&spec).await.unwrap();
        let ctr = cri
            .run_container(&pod, "main", "", &["sleep", "3600"], &[])
            .await
            .unwrap();
        let v = cri.container_status_verbose(&ctr).await.unwrap();
        let rec = AllocationRecord::from_json(
            v["runtimeSpec"]["annotations"]["rdma.conrdma.io/allocation"]
                .as_str()
                .expect("allocation annotation"),
        )
        .unwrap();
        (pod, rec)
    }

    /// The address the plugin serves metrics on, from its log.
    fn metrics_addr(&self) -> String {
        let log = self.plugin_log();
        let line = log
            .lines()
            .find(|l| l.contains("serving metrics"))
            .unwrap_or_else(|| panic!("no metrics line in the plugin log:\n{log}"));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .to_string()
    }
}

/// The plugin's `/metrics` exposition; anything but a 200 fails the test.
fn scrape(addr: &str) -> String {
    let (status, text) = conrdma_e2e::webhook::get_text(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// `name{labels} value` lines of a Prometheus exposition whose labels contain `needle`.
fn metric(text: &str, name: &str, needle: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(needle))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

/// The tests here run one at a time: the reclaim is timed against one interval, and a second
/// containerd starting beside it on a 2-core CI machine can starve the controller for longer.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_guarantee_is_lent_and_taken_back_within_one_interval() {
    let _serial = SERIAL.lock().await;
    let n = Node::start(&format!(
        "[conserve]\nenabled = true\ninterval_ms = {INTERVAL_MS}\nlimiter = \"simulated\"\n"
    ))
    .await;
    let wire = Wire::start(&n.nic());
    let ann = [(BW, "50Gbps"), (LIMIT, "100Gbps")];

    // A sends as fast as it may from the start and, alone on the PF, is given the whole line.
    let (pod_a, a) = n.pod("busy", &ann).await;
    wire.set(a.vf, LINE);
    until("A to be given the idle line", WAIT, || {
        (n.rate(a.vf).max_mbps == LINE).then_some(())
    })
    .await;
    // B is started next to it and idles.
    let (pod_b, b) = n.pod("idle", &ann).await;
    assert_ne!(a.vf, b.vf);
    assert_eq!((a.guaranteed_mbps, a.limit_mbps), (50_000, 100_000));
    // Steered pods start at their guarantee, and the controller took back A's loan before B's
    // admission answered, so B's first rate fit (checked with the peak sum at the end).
    assert_eq!(
        (a.start_max_mbps, b.start_max_mbps),
        (Some(50_000), Some(50_000))
    );

    // B's idle guarantee is lent to A: A's max rises above its guarantee, B keeps a floor, and
    // the PF's sum stays within the line.
    let (ra, rb) = until("A's max to rise above its guarantee", WAIT, || {
        let (ra, rb) = (n.rate(a.vf), n.rate(b.vf));
        (ra.max_mbps > 90_000 && rb.max_mbps < 1_000).then_some((ra, rb))
    })
    .await;
    assert!(ra.max_mbps + rb.max_mbps <= LINE, "{ra} + {rb}");
    assert!(rb.max_mbps >= 1, "B still has a ceiling, not none");
    assert!(rb.min_mbps <= rb.max_mbps, "{rb}");
    let log = n.plugin_log();
    assert!(
        log.contains("steers this VF") && log.contains(&pod_a),
        "plugin log lacks the controller's lines with pod ids:\n{log}"
    );

    // What it did is in the metrics.
    let addr = n.metrics_addr();
    let pod_a_label = format!("pod_id=\"{pod_a}\"");
    let pod_b_label = format!("pod_id=\"{pod_b}\"");
    // One scrape of a decision that lends (the controller decides again every interval, so a
    // scrape taken right after the rate check may show the next one).
    let text = until("the metrics to show A's loan", WAIT, || {
        let text = scrape(&addr);
        (metric(&text, "conrdma_conserve_vf_max_mbps", &pod_a_label)? > 90_000.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "conrdma_conserve_vf_guarantee_mbps", &pod_a_label),
        Some(50_000.0)
    );
    assert!(metric(&text, "conrdma_conserve_vf_borrowed_mbps", &pod_a_label).unwrap() > 40_000.0);
    assert!(metric(&text, "conrdma_conserve_vf_lent_mbps", &pod_b_label).unwrap() > 49_000.0);
    let measured = metric(&text, "conrdma_conserve_vf_measured_mbps", &pod_a_label).unwrap();
    assert!(measured >= 45_000.0, "A measured {measured}:\n{text}");
    assert!(
        metric(&text, "conrdma_conserve_pf_max_sum_mbps", "pf=\"ens1f0\"").unwrap() <= 100_000.0
    );

    // B gets busy: within one interval A is back at its guarantee and B has its own.
    let t0 = Instant::now();
    wire.set(b.vf, LINE);
    let took = until("A's max to fall back to its guarantee", WAIT, || {
        (n.rate(a.vf).max_mbps <= 50_000).then(|| t0.elapsed())
    })
    .await;
    let (ra, rb) = (n.rate(a.vf), n.rate(b.vf));
    println!("loan taken back in {took:?}: A {ra}, B {rb}");
    assert!(
        took <= Duration::from_millis(INTERVAL_MS),
        "took {took:?}, more than one interval"
    );
    let rb = until(
        "B's max to reach its guarantee",
        Duration::from_millis(500),
        || {
            let rb = n.rate(b.vf);
            (rb.max_mbps >= 50_000).then_some(rb)
        },
    )
    .await;
    assert_eq!((ra.max_mbps, rb.max_mbps), (50_000, 50_000));
    assert_eq!(rb.min_mbps, 50_000);
    // Both busy: nothing changes over the next intervals.
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
    assert_eq!(
        (n.rate(a.vf).max_mbps, n.rate(b.vf).max_mbps),
        (50_000, 50_000)
    );

    // B goes: the shim resets its VF and the controller leaves it alone; A may take the line.
    let cri = n.cd.cri();
    cri.stop_and_remove_pod(&pod_b).await.unwrap();
    wire.set(b.vf, 0);
    until("B's VF to be reset", WAIT, || {
        (n.rate(b.vf) == VfRate::NONE).then_some(())
    })
    .await;
    until("A to get B's share", WAIT, || {
        (n.rate(a.vf).max_mbps == LINE).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
    assert_eq!(
        n.rate(b.vf),
        VfRate::NONE,
        "the controller let go of B's VF"
    );
    let text = scrape(&addr);
    assert!(!text.contains(&pod_b_label), "B's rows are gone:\n{text}");

    cri.stop_and_remove_pod(&pod_a).await.unwrap();
    assert!(
        wire.peak_sum() <= LINE,
        "the PF's maxima added up to {} Mbps at some point, over its {LINE} Mbps line",
        wire.peak_sum()
    );
    drop(wire);
    n.cd.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_left_off_are_not_touched() {
    let _serial = SERIAL.lock().await;
    // The controller is on, but only for a pool this PF is not in.
    let n = Node::start(
        "[[pool]]\nname = \"gold\"\npfs = [\"ens9f0\"]\n[conserve]\nenabled = true\ninterval_ms = 200\nlimiter = \"simulated\"\npools = [\"gold\"]\n",
    )
    .await;
    let wire = Wire::start(&n.nic());
    let ann = [(BW, "50Gbps"), (LIMIT, "100Gbps")];
    let (pod_a, a) = n.pod("busy", &ann).await;
    wire.set(a.vf, LINE);
    let (pod_b, b) = n.pod("idle", &ann).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        n.rate(a.vf),
        VfRate::new(50_000, 100_000),
        "the shim's rate"
    );
    assert_eq!(n.rate(b.vf), VfRate::new(50_000, 100_000));
    let text = scrape(&n.metrics_addr());
    assert!(!text.contains("conrdma_conserve_vf_max_mbps{"), "{text}");
    let others: HashMap<u32, VfRate> = (0..VFS)
        .filter(|v| *v != a.vf && *v != b.vf)
        .map(|v| (v, n.rate(v)))
        .collect();
    assert!(others.values().all(|r| *r == VfRate::NONE), "{others:?}");
    let cri = n.cd.cri();
    cri.stop_and_remove_pod(&pod_a).await.unwrap();
    cri.stop_and_remove_pod(&pod_b).await.unwrap();
    drop(wire);
    n.cd.shutdown().await.unwrap();
}
