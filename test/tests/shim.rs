//! The ConRDMA runtime shim (`containerd-shim-conrdma-v1`, a task API v2/v3 proxy over the stock runc
//! shim) on a real containerd (2.x or 1.7: CONRDMA_CONTAINERD) with runc, driven through CRI like a kubelet, with the NRI
//! plugin as an external plugin and a simulated SR-IOV NIC whose per-VF rate files the shim's
//! simulated limiter writes. Usage reports go to a small HTTP receiver inside the test.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conrdma_api::report::{UsageBatch, UsageReport};
use conrdma_api::AllocationRecord;
use conrdma_e2e::containerd::shim_pids;
use conrdma_e2e::{
    shim_runtime, simulate_nic, workspace_bin, ChildGuard, Containerd, ContainerdLine,
    ContainerdOptions, PodSpec, RuntimeHandler,
};
use conrdma_node::limiter::{RateLimiter, SimulatedLimiter, VfRate};

const PLUGIN: &str = "10-conrdma";
const HANDLER: &str = "conrdma";
const SHIM: &str = "containerd-shim-conrdma-v1";
const WAIT: Duration = Duration::from_secs(20);
const BW: &str = "rdma.conrdma.io/bandwidth";
const LIMIT: &str = "rdma.conrdma.io/bandwidth-limit";
const TOKEN: &str = "shim-test-credential";

/// A test HTTP receiver for usage reports: records every POST; answers 503 while `down`.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, UsageBatch)>>>,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU16::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, d, r, s) = (got.clone(), down.clone(), refused.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body) = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let head = text[..i].to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break (head, buf[i + 4..i + 4 + len].to_vec());
                        }
                    }
                };
                if head.is_empty() {
                    continue;
                }
                if d.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = c.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
                    );
                    continue;
                }
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let auth = format!("{path} {auth}");
                let batch: UsageBatch = serde_json::from_slice(&body).expect("a usage batch");
                batch.validate().expect("valid reports");
                g.lock().unwrap().push((auth, batch));
                let _ = c.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
            }
        });
        Receiver {
            port,
            got,
            down,
            refused,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn reports(&self) -> Vec<UsageReport> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.reports.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Node {
    cd: Containerd,
    plugin: Option<ChildGuard>,
    sim: tempfile::TempDir,
}

impl Node {
    /// containerd with the `conrdma` handler (simulated limiter on a 1-PF, 4-VF NIC), reports to
    /// `webhook` when given.
    async fn start(webhook: Option<&str>) -> Node {
        let sim = tempfile::tempdir().unwrap();
        let nic = sim.path().join("nic");
        simulate_nic(&nic, 1, 4, "100G").unwrap();
        std::fs::write(sim.path().join("node.toml"), "").unwrap();
        std::fs::write(sim.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let mut h = shim_runtime(HANDLER, &nic, &sim.path().join("runc"));
        let o = &mut h.options;
        if let Some(url) = webhook {
            o.insert("webhook_url".into(), url.into());
            o.insert(
                "credential_file".into(),
                sim.path()
                    .join("token")
                    .to_string_lossy()
                    .into_owned()
                    .into(),
            );
            o.insert("report_interval".into(), "300ms".into());
            o.insert("node_name".into(), "node-1".into());
            o.insert(
                "spool_dir".into(),
                sim.path()
                    .join("spool")
                    .to_string_lossy()
                    .into_owned()
                    .into(),
            );
        }
        // The same runtime with a misspelt option, to see how that fails.
        let mut typo = RuntimeHandler::new("conrdma-typo", "io.containerd.conrdma.v1");
        typo.options
            .insert("webhok_url".into(), "http://127.0.0.1:1".into());
        let shim_dir = workspace_bin(SHIM).unwrap().parent().unwrap().to_path_buf();
        let opts = ContainerdOptions {
            runtimes: vec![h, typo],
            extra_path: vec![shim_dir],
            ..Default::default()
        };
        let cd = Containerd::start(opts).await.unwrap();
        Node {
            cd,
            plugin: None,
            sim,
        }
    }

    fn nic(&self) -> PathBuf {
        self.sim.path().join("nic")
    }

    fn vf(&self, rec: &AllocationRecord) -> VfRate {
        SimulatedLimiter::new(self.nic())
            .get(&rec.pf, rec.vf)
            .unwrap()
    }

    async fn start_plugin(&mut self) {
        let mark = self.cd.log_mark();
        let mut cmd = Command::new(workspace_bin("conrdma-nri-plugin").unwrap());
        cmd.arg("--socket")
            .arg(self.cd.nri_socket())
            .arg("--root")
            .arg(self.nic())
            .arg("--state-dir")
            .arg(self.sim.path().join("state"))
            .arg("--config")
            .arg(self.sim.path().join("node.toml"));
        self.plugin = Some(self.cd.spawn_process("nri-plugin", &mut cmd).unwrap());
        self.cd
            .wait_for_plugin_since(mark, PLUGIN, WAIT)
            .await
            .unwrap();
    }

    /// A pod under the conrdma handler with one long-running container.
    async fn pod(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> Result<(String, String), tonic::Status> {
        let cri = self.cd.cri();
        let mut spec =
            PodSpec::new(name, "default", &format!("uid-{name}")).runtime_handler(HANDLER);
        for (k, v) in annotations {
            spec = spec.annotation(k, v);
        }
        cri.run_pod_with_sleeper(&spec).await
    }

    async fn allocation(&self, ctr: &str) -> Option<AllocationRecord> {
        let v = self.cd.cri().container_status_verbose(ctr).await.unwrap();
        v["runtimeSpec"]["annotations"]["rdma.conrdma.io/allocation"]
            .as_str()
            .map(|s| AllocationRecord::from_json(s).unwrap())
    }

    /// Our proxy processes (not their runc children).
    fn proxies(&self) -> Vec<i32> {
        let addr = self.cd.paths().grpc_socket.to_string_lossy().into_owned();
        shim_pids(&addr)
            .into_iter()
            .filter(|p| argv0(*p).is_some_and(|a| a.ends_with(SHIM)))
            .collect()
    }

    fn runc_children(&self) -> Vec<i32> {
        let addr = self.cd.paths().grpc_socket.to_string_lossy().into_owned();
        shim_pids(&addr)
            .into_iter()
            .filter(|p| argv0(*p).is_some_and(|a| a.ends_with("containerd-shim-runc-v2")))
            .collect()
    }
}

fn argv0(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    raw.split(|b| *b == 0)
        .next()
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec(cd: &Containerd, ctr: &str, cmd: &[&str]) -> (i32, String) {
    let (code, out, _) = cd
        .cri()
        .exec_sync(ctr, cmd, Duration::from_secs(10))
        .await
        .unwrap();
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_under_the_shim_with_its_vf_held_to_the_limit() {
    let mut n = Node::start(None).await;
    n.start_plugin().await;
    let (pod, ctr) = n
        .pod("trainer", &[(BW, "2Gbps"), (LIMIT, "5G")])
        .await
        .unwrap();
    let rec = n.allocation(&ctr).await.expect("allocation annotation");
    assert_eq!((rec.guaranteed_mbps, rec.limit_mbps), (2_000, 5_000));

    // The pod runs normally: exec, output, env from the plugin.
    let (code, out) = exec(
        &n.cd,
        &ctr,
        &["sh", "-c", "echo hello; echo $CONRDMA_LIMIT_MBPS"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "hello\n5000\n"));
    let (code, _) = exec(&n.cd, &ctr, &["sh", "-c", "exit 3"]).await;
    assert_eq!(code, 3, "exit codes pass through");

    // While it runs, the VF is held to the allocation.
    assert_eq!(n.vf(&rec), VfRate::new(2_000, 5_000));
    let others: Vec<VfRate> = (0..4)
        .filter(|v| *v != rec.vf)
        .map(|v| SimulatedLimiter::new(n.nic()).get(&rec.pf, v).unwrap())
        .collect();
    assert!(others.iter().all(|r| *r == VfRate::NONE), "{others:?}");

    // The start handshake each line expects: 1.7 the plain address (task API v2), 2.x version 3
    // (the shim tells them apart by -bundle), unless CONRDMA_SHIM_TASK_API forces a version.
    let bundle =
        n.cd.paths()
            .state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(&pod);
    let forced = conrdma_e2e::conrdma::forced_task_api();
    match n.cd.line() {
        ContainerdLine::Is17 => {
            let addr = std::fs::read_to_string(bundle.join("address")).unwrap();
            assert!(addr.starts_with("unix:///"), "{addr}");
        }
        ContainerdLine::Is2x => {
            let boot: serde_json::Value =
                serde_json::from_slice(&std::fs::read(bundle.join("bootstrap.json")).unwrap())
                    .unwrap();
            assert_eq!(boot["version"], forced.unwrap_or(3), "{boot}");
        }
    }

    // One proxy and one runc shim for the whole pod, also with a second container.
    let c2 =
        n.cd.cri()
            .run_container(&pod, "sidecar", "", &["sleep", "3600"], &[])
            .await
            .unwrap();
    assert_eq!(
        exec(&n.cd, &c2, &["echo", "two"]).await,
        (0, "two\n".into())
    );
    assert_eq!(n.proxies().len(), 1, "one proxy per pod");
    assert_eq!(n.runc_children().len(), 1, "one runc shim per pod");
    let proxy = n.proxies()[0];
    let oom = std::fs::read_to_string(format!("/proc/{proxy}/oom_score_adj")).unwrap();
    let cd_oom =
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", n.cd.pid().unwrap())).unwrap();
    let want = (cd_oom.trim().parse::<i32>().unwrap() + 1).min(1000);
    assert_eq!(
        oom.trim().parse::<i32>().unwrap(),
        want,
        "shim OOM score = containerd's + 1"
    );

    // Removing a container leaves the pod's rate alone; removing the pod resets it.
    let cri = n.cd.cri();
    cri.stop_container(&c2, 0).await.unwrap();
    cri.remove_container(&c2).await.unwrap();
    assert_eq!(n.vf(&rec), VfRate::new(2_000, 5_000));

    // A plain pod under the same handler runs and touches no VF.
    let (plain, pc) = n.pod("plain", &[]).await.unwrap();
    assert_eq!(exec(&n.cd, &pc, &["echo", "ok"]).await, (0, "ok\n".into()));
    assert_eq!(n.proxies().len(), 2);
    cri.stop_and_remove_pod(&plain).await.unwrap();

    cri.stop_and_remove_pod(&pod).await.unwrap();
    assert_eq!(n.vf(&rec), VfRate::NONE, "reset after removal");
    eventually("the proxies to exit", WAIT, || {
        n.proxies().is_empty().then_some(())
    })
    .await;
    assert!(n.runc_children().is_empty());
    let log = n.cd.log();
    assert!(
        log.contains("VF rate set"),
        "shim log missing from containerd's log"
    );
    assert!(log.contains("VF rate reset: the pod is gone"));
    n.cd.shutdown().await.unwrap();
}

/// Every running task holds one blocking Wait on the proxy; on containerd 2.x all of a pod's tasks
/// share one connection, so the proxy must keep serving other calls however many are waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_many_containers_is_served_to_the_end() {
    let mut n = Node::start(None).await;
    n.start_plugin().await;
    let (pod, first) = n.pod("wide", &[(BW, "1Gbps")]).await.unwrap();
    let cri = n.cd.cri();
    let mut ctrs = vec![first];
    for i in 1..8 {
        let c = tokio::time::timeout(
            WAIT,
            cri.run_container(&pod, &format!("c{i}"), "", &["sleep", "3600"], &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("container c{i} not started in time"))
        .unwrap();
        ctrs.push(c);
    }
    for c in &ctrs {
        let (code, out) = tokio::time::timeout(WAIT, exec(&n.cd, c, &["echo", "up"]))
            .await
            .expect("exec answered in time");
        assert_eq!((code, out.as_str()), (0, "up\n"));
    }
    assert_eq!(n.proxies().len(), 1, "one proxy for the whole pod");
    tokio::time::timeout(WAIT, cri.stop_and_remove_pod(&pod))
        .await
        .expect("pod removed in time")
        .unwrap();
    n.cd.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_shim_leads_to_cleanup_and_a_reset_rate() {
    let mut n = Node::start(None).await;
    n.start_plugin().await;
    let (pod, ctr) = n.pod("victim", &[(BW, "1G"), (LIMIT, "3G")]).await.unwrap();
    let rec = n.allocation(&ctr).await.unwrap();
    assert_eq!(n.vf(&rec), VfRate::new(1_000, 3_000));
    let proxies = n.proxies();
    assert_eq!(proxies.len(), 1);
    let mark = n.cd.log_mark();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxies[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The runc child dies with it (PDEATHSIG); containerd runs `delete`, which resets the VF.
    eventually("the VF rate to be reset", WAIT, || {
        (n.vf(&rec) == VfRate::NONE).then_some(())
    })
    .await;
    eventually("the runc child to die", WAIT, || {
        n.runc_children().is_empty().then_some(())
    })
    .await;
    n.cd.wait_for_log_since(mark, "reset the VF rate", WAIT)
        .await
        .unwrap();
    // containerd saw the task end.
    let cri = n.cd.cri();
    eventually("the container to be seen exited", WAIT, || {
        let st = futures_now(cri.container_status(&ctr));
        (st.ok()?.state == conrdma_e2e::cri::v1::ContainerState::ContainerExited as i32)
            .then_some(())
    })
    .await;
    cri.stop_and_remove_pod(&pod).await.unwrap();
    assert_eq!(n.vf(&rec), VfRate::NONE);
    // The node keeps working: a new pod gets a VF rate again.
    let (_, c2) = n.pod("after", &[(BW, "1G")]).await.unwrap();
    let r2 = n.allocation(&c2).await.unwrap();
    assert_eq!(n.vf(&r2).min_mbps, 1_000);
    n.cd.shutdown().await.unwrap();
}

/// Runs a future to completion from sync code inside the multi-thread runtime.
fn futures_now<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_reconnects_to_running_pods() {
    let mut n = Node::start(None).await;
    n.start_plugin().await;
    let (pod, ctr) = n.pod("steady", &[(BW, "4G"), (LIMIT, "8G")]).await.unwrap();
    let rec = n.allocation(&ctr).await.unwrap();
    let before = n.proxies();
    let mark = n.cd.log_mark();
    n.cd.restart().await.unwrap();
    n.cd.wait_for_plugin_since(mark, PLUGIN, WAIT)
        .await
        .unwrap();
    assert_eq!(n.proxies(), before, "the same proxy serves on");
    assert_eq!(
        exec(&n.cd, &ctr, &["echo", "still"]).await,
        (0, "still\n".into())
    );
    assert_eq!(n.vf(&rec), VfRate::new(4_000, 8_000));
    let c2 =
        n.cd.cri()
            .run_container(&pod, "late", "", &["sleep", "3600"], &[])
            .await
            .expect("new container in the reconnected pod");
    assert_eq!(
        exec(&n.cd, &c2, &["echo", "late"]).await,
        (0, "late\n".into())
    );
    n.cd.cri().stop_and_remove_pod(&pod).await.unwrap();
    assert_eq!(n.vf(&rec), VfRate::NONE);
    eventually("the proxy to exit", WAIT, || {
        n.proxies().is_empty().then_some(())
    })
    .await;
    n.cd.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_without_its_allocation_is_refused() {
    // No NRI plugin: containerd creates containers without the allocation.
    let n = Node::start(None).await;
    let err = n
        .pod("orphan", &[(BW, "10G")])
        .await
        .expect_err("a bandwidth pod without allocation must not run");
    let msg = err.message();
    assert!(
        msg.contains("arrived without rdma.conrdma.io/allocation")
            && msg.contains("rdma.conrdma.io/bandwidth=10G")
            && msg.contains("NRI plugin did not handle it"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    let sim = SimulatedLimiter::new(n.nic());
    for v in 0..4 {
        assert_eq!(sim.get("ens1f0", v).unwrap(), VfRate::NONE);
    }
    // A pod cannot smuggle an allocation in through its own annotations.
    let forged = AllocationRecord {
        pool: "default".into(),
        pf: "ens1f0".into(),
        vf: 0,
        vf_pci: "x".into(),
        rdma_device: "mlx5_1".into(),
        netdev: "ens1f0v0".into(),
        guaranteed_mbps: 0,
        limit_mbps: 100_000,
        uverbs: "/dev/infiniband/uverbs1".into(),
        rdma_cgroup: Default::default(),
        start_max_mbps: None,
        address: None,
        ifname: None,
    };
    let err = n
        .pod(
            "forger",
            &[("rdma.conrdma.io/allocation", &forged.to_json())],
        )
        .await
        .expect_err("forged allocation");
    assert!(
        err.message().contains("cannot be requested"),
        "{}",
        err.message()
    );
    // A misspelt option fails the pod's start with the accepted keys, not a silent default.
    let spec = PodSpec::new("typo", "default", "uid-typo").runtime_handler("conrdma-typo");
    let err =
        n.cd.cri()
            .run_pod_spec(&spec)
            .await
            .expect_err("bad options");
    assert!(
        err.message().contains("unknown field `webhok_url`")
            && err.message().contains("accepted keys: webhook_url"),
        "{}",
        err.message()
    );
    // Pods that ask for nothing run normally.
    let (_, c) = n.pod("plain", &[("example.com/x", "y")]).await.unwrap();
    assert_eq!(
        exec(&n.cd, &c, &["echo", "fine"]).await,
        (0, "fine\n".into())
    );
    n.cd.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_reach_the_webhook_across_an_outage() {
    let rx = Receiver::start();
    let mut n = Node::start(Some(&rx.url())).await;
    n.start_plugin().await;
    let (pod, ctr) = n.pod("busy", &[(BW, "1G"), (LIMIT, "2G")]).await.unwrap();
    let rec = n.allocation(&ctr).await.unwrap();
    let stats = n
        .nic()
        .join("sys/class/net")
        .join(&rec.pf)
        .join("device/sriov")
        .join(rec.vf.to_string())
        .join("stats");
    // Drive the "hardware": the VF sends 12.5 MB (100 Mbit) every 100 ms, about 1000 Mbps.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let stats2 = stats.clone();
    let driver = std::thread::spawn(move || {
        let mut tx: u64 = 0;
        while !s2.load(Ordering::SeqCst) {
            tx += 12_500_000;
            // Replace the file whole, so a reader never sees it half-written.
            let tmp = stats2.with_extension("tmp");
            std::fs::write(&tmp, format!("tx_bytes: {tx}\nrx_bytes: {}\n", tx / 10)).unwrap();
            std::fs::rename(&tmp, &stats2).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    eventually("first reports", WAIT, || {
        (!rx.reports().is_empty()).then_some(())
    })
    .await;
    // Outage: the webhook answers 503 for a while; reports pile up in the spool.
    rx.down.store(true, Ordering::SeqCst);
    let during = rx.reports().len();
    eventually("refused attempts", WAIT, || {
        (rx.refused.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spooled = std::fs::read_dir(n.sim.path().join("spool"))
        .unwrap()
        .count();
    assert!(
        spooled >= 3,
        "reports kept in the spool during the outage ({spooled} files)"
    );
    rx.down.store(false, Ordering::SeqCst);
    eventually("the backlog", WAIT, || {
        (rx.reports().len() >= during + 3).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    driver.join().unwrap();
    n.cd.cri().stop_and_remove_pod(&pod).await.unwrap();
    eventually("the final report", WAIT, || {
        rx.reports().iter().any(|r| r.is_final).then_some(())
    })
    .await;

    let got = rx.got.lock().unwrap().clone();
    assert!(
        got.iter()
            .all(|(auth, _)| auth == &format!("/v1/reports/usage Bearer {TOKEN}")),
        "path and bearer credential: {:?}",
        got.iter().map(|(a, _)| a).collect::<Vec<_>>()
    );
    let mut reports: Vec<UsageReport> = got.iter().flat_map(|(_, b)| b.reports.clone()).collect();
    reports.sort_by_key(|r| r.window_start_unix_ms);
    // None lost: the windows tile the pod's life without gaps or overlaps.
    for w in reports.windows(2) {
        assert_eq!(
            w[0].window_end_unix_ms, w[1].window_start_unix_ms,
            "gap or overlap between {:?} and {:?}",
            w[0], w[1]
        );
    }
    let last = reports.last().unwrap();
    assert!(last.is_final, "the final report comes last");
    assert_eq!(reports.iter().filter(|r| r.is_final).count(), 1);
    let r = &reports[0];
    assert_eq!(
        (
            r.node.as_str(),
            r.pod.name.as_str(),
            r.pod.namespace.as_str(),
            r.pod.uid.as_str()
        ),
        ("node-1", "busy", "default", "uid-busy")
    );
    assert_eq!(
        (r.pf.as_str(), r.vf, r.guaranteed_mbps, r.limit_mbps),
        (rec.pf.as_str(), rec.vf, 1_000, 2_000)
    );
    // The measured rate is about the driven 1000 Mbps (the total over all windows is exact).
    let bits: f64 = reports
        .iter()
        .map(|r| r.tx_mbps * (r.window_end_unix_ms - r.window_start_unix_ms) as f64 * 1_000.0)
        .sum();
    let total_tx: u64 = std::fs::read_to_string(&stats)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("tx_bytes: ").map(|v| v.parse().unwrap()))
        .unwrap();
    let max_seen = reports.iter().map(|r| r.tx_mbps).fold(0.0, f64::max);
    assert!(max_seen > 300.0 && max_seen < 3_000.0, "{max_seen}");
    assert!(
        (bits - total_tx as f64 * 8.0).abs() <= 12_500_000.0 * 8.0 * 2.0,
        "reported {bits} bits, sent {} bits",
        total_tx * 8
    );
    let spool_left: Vec<_> = std::fs::read_dir(n.sim.path().join("spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert!(spool_left.is_empty(), "spool drained: {spool_left:?}");
    n.cd.shutdown().await.unwrap();
}
