//! Pods in their own network namespace, on a real containerd (2.x or 1.7) with a CNI bridge as
//! their primary network: the VF netdev moves into the pod as `rdma0` with an address from the
//! pool, and comes home when the pod goes.
//!
//! The host kernel has no SR-IOV NIC, so real netdevs stand in for the simulated NIC's VF
//! netdevs (`conrdma_e2e::standin`): veths whose peers share a bridge, so pods reach each other
//! over their `rdma0`. The VM tier runs the same flow on real igb VFs with Soft-RoCE.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use conrdma_api::AllocationRecord;
use conrdma_e2e::standin::Fabric;
use conrdma_e2e::{simulate_nic, ChildGuard, CniBridge, Containerd, ContainerdOptions, PodSpec};
use conrdma_node::ledger::{Held, Ledger, NetPhase};
use serde_json::Value;

const ADDRESS: &str = "rdma.conrdma.io/address";
const BW: &str = "rdma.conrdma.io/bandwidth";
const POOL: &str = "rdma.conrdma.io/pool";
/// The simulated NIC's VF netdevs (1 PF, 4 VFs): the stand-ins take these names on the host.
const VFS: [&str; 4] = ["ens1f0v0", "ens1f0v1", "ens1f0v2", "ens1f0v3"];
const CONFIG: &str = r#"
[[pool]]
name = "fabric-a"
pfs = ["ens1f0"]
[pool.network]
subnet = "10.77.0.0/24"
range = "10.77.0.10-10.77.0.20"
mtu = 1400
"#;

/// The stand-in VFs have fixed names on the host: one test at a time.
static HOST_NETDEVS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

/// How a stand-in VF looks on the host right now, `None` if the host does not have it.
fn on_host(vf: &str) -> Option<String> {
    let out = ip(&["-d", "addr", "show", "dev", vf]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Home as it left: its own name, the veth's MTU, down, no IPv4 address.
fn assert_home(vf: &str) {
    let s = on_host(vf).unwrap_or_else(|| panic!("{vf} is not back on the host"));
    assert!(s.contains("mtu 1500"), "{vf}: {s}");
    assert!(
        !s.contains("state UP") && !s.contains(",UP"),
        "{vf} is still up: {s}"
    );
    assert!(!s.contains("inet "), "{vf} still has an address: {s}");
}

struct Node {
    cd: Containerd,
    plugin: Option<ChildGuard>,
    dir: tempfile::TempDir,
    _fabric: Fabric,
}

impl Node {
    async fn start() -> Node {
        let fabric = Fabric::new(&VFS).unwrap();
        let dir = tempfile::tempdir().unwrap();
        simulate_nic(&dir.path().join("nic"), 1, 4, "100G").unwrap();
        std::fs::write(dir.path().join("node.toml"), CONFIG).unwrap();
        let n = std::process::id() % 200 + 20;
        let opts = ContainerdOptions {
            cni_bridge: Some(CniBridge {
                bridge: format!("crdbr{n}"),
                subnet: format!("10.88.{n}.0/24"),
            }),
            ..Default::default()
        };
        let cd = Containerd::start(opts).await.unwrap();
        let mut node = Node {
            cd,
            plugin: None,
            dir,
            _fabric: fabric,
        };
        node.start_plugin(&[]).await;
        node
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    async fn start_plugin(&mut self, env: &[(&str, &str)]) {
        let (nic, state, config) = (
            self.dir.path().join("nic"),
            self.state(),
            self.dir.path().join("node.toml"),
        );
        let args = [
            OsStr::new("--root"),
            nic.as_os_str(),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        self.plugin = Some(self.cd.start_nri_plugin_env(args, env).await.unwrap());
    }

    fn ledger(&self) -> Vec<Held> {
        Ledger::snapshot(&self.state()).unwrap()
    }

    /// RunPodSandbox (own netns unless `host`) + a long-running container.
    async fn pod(
        &self,
        name: &str,
        host: bool,
        annotations: &[(&str, &str)],
    ) -> Result<(String, String), tonic::Status> {
        let cri = self.cd.cri();
        let mut spec = PodSpec::new(name, "default", &format!("uid-{name}"));
        if !host {
            spec = spec.own_netns();
        }
        for (k, v) in annotations {
            spec = spec.annotation(k, v);
        }
        cri.run_pod_with_sleeper(&spec).await
    }

    async fn exec(&self, ctr: &str, cmd: &[&str]) -> (i32, String) {
        let (code, out, err) = self
            .cd
            .cri()
            .exec_sync(ctr, cmd, Duration::from_secs(15))
            .await
            .unwrap();
        (code, format!("{out}{err}"))
    }

    async fn record(&self, ctr: &str) -> (AllocationRecord, Vec<String>) {
        let spec: Value =
            self.cd.cri().container_status_verbose(ctr).await.unwrap()["runtimeSpec"].clone();
        let rec = AllocationRecord::from_json(
            spec["annotations"]["rdma.conrdma.io/allocation"]
                .as_str()
                .expect("allocation annotation"),
        )
        .unwrap();
        let env = spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        (rec, env)
    }

    fn plugin_log(&self) -> String {
        self.plugin.as_ref().map(|p| p.log()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_vf_as_rdma0_with_an_address_reach_each_other_and_give_it_back() {
    let _one = HOST_NETDEVS.lock().await;
    let node = Node::start().await;
    let (pod_a, a) = node.pod("net-a", false, &[(BW, "10G")]).await.unwrap();
    let (pod_b, b) = node
        .pod(
            "net-b",
            false,
            &[(POOL, "fabric-a"), (ADDRESS, "10.77.0.5/24")],
        )
        .await
        .unwrap();

    let (rec_a, env_a) = node.record(&a).await;
    assert_eq!(rec_a.address.as_deref(), Some("10.77.0.10/24"));
    assert_eq!(rec_a.ifname.as_deref(), Some("rdma0"));
    assert!(
        env_a.contains(&"CONRDMA_ADDRESS=10.77.0.10/24".to_string()),
        "{env_a:?}"
    );
    assert!(
        env_a.contains(&"CONRDMA_IFNAME=rdma0".to_string()),
        "{env_a:?}"
    );
    let (rec_b, _) = node.record(&b).await;
    assert_eq!(rec_b.address.as_deref(), Some("10.77.0.5/24"));

    for (ctr, rec, addr) in [(&a, &rec_a, "10.77.0.10/24"), (&b, &rec_b, "10.77.0.5/24")] {
        // The pod sees its VF as rdma0, addressed, up, at the pool's MTU, beside CNI's eth0.
        let (code, out) = node.exec(ctr, &["ip", "addr", "show", "rdma0"]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("inet {addr}")), "{out}");
        assert!(out.contains("mtu 1400") && out.contains("UP"), "{out}");
        let (code, out) = node.exec(ctr, &["ip", "addr", "show", "eth0"]).await;
        assert_eq!(code, 0, "CNI's eth0 stays the primary network: {out}");
        // The host no longer has it.
        assert!(
            on_host(&rec.netdev).is_none(),
            "{} still on the host",
            rec.netdev
        );
    }
    let held = node.ledger();
    assert!(held
        .iter()
        .all(|h| h.net.as_ref().is_some_and(|n| n.phase == NetPhase::InPod)));

    // Pod B reaches pod A over the VFs.
    let (code, out) = node
        .exec(&b, &["ping", "-c", "2", "-W", "3", "10.77.0.10"])
        .await;
    assert_eq!(code, 0, "pod B cannot ping pod A's VF address: {out}");

    // A hostNetwork pod in the same pool keeps today's behaviour: VF on the host, no address.
    let (pod_h, h) = node
        .pod("net-host", true, &[(POOL, "fabric-a")])
        .await
        .unwrap();
    let (rec_h, env_h) = node.record(&h).await;
    assert_eq!((rec_h.address.clone(), rec_h.ifname.clone()), (None, None));
    assert!(
        !env_h.iter().any(|e| e.starts_with("CONRDMA_ADDRESS=")),
        "{env_h:?}"
    );
    assert!(on_host(&rec_h.netdev).is_some());

    let cri = node.cd.cri();
    // Stop first, as kubelet does: the VF comes home before containerd deletes the namespace.
    cri.stop_pod(&pod_a).await.unwrap();
    assert_home(&rec_a.netdev);
    assert_eq!(
        node.ledger().len(),
        3,
        "a stopped pod keeps its booking until removed"
    );
    for p in [&pod_a, &pod_b, &pod_h] {
        cri.stop_and_remove_pod(p).await.unwrap();
    }
    for vf in [&rec_a.netdev, &rec_b.netdev, &rec_h.netdev] {
        assert_home(vf);
    }
    assert_eq!(node.ledger(), vec![], "{}", node.plugin_log());

    // The freed address and VF go to the next pod.
    let (pod_c, c) = node
        .pod("net-c", false, &[(POOL, "fabric-a")])
        .await
        .unwrap();
    let (rec_c, _) = node.record(&c).await;
    assert_eq!(rec_c.address.as_deref(), Some("10.77.0.10/24"));
    cri.stop_and_remove_pod(&pod_c).await.unwrap();
    assert_home(&rec_c.netdev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_fail_the_pod_with_one_line_and_change_nothing() {
    let _one = HOST_NETDEVS.lock().await;
    let node = Node::start().await;
    let (pod_a, _) = node
        .pod("taken", false, &[(ADDRESS, "10.77.0.7")])
        .await
        .unwrap();
    let before = node.ledger();
    for (name, host, addr, needle) in [
        (
            "outside",
            false,
            "10.99.0.7/24",
            "no pool has a network whose subnet holds 10.99.0.7",
        ),
        (
            "in-use",
            false,
            "10.77.0.7/24",
            "already in use by pod default/taken",
        ),
        ("prefix", false, "10.77.0.8/16", "prefix /16"),
        ("garbage", false, "10.77.0.300", "not an IPv4 address"),
        ("host-net", true, "10.77.0.8/24", "hostNetwork"),
    ] {
        let e = node
            .pod(name, host, &[(ADDRESS, addr)])
            .await
            .expect_err(name);
        let msg = e.message();
        assert!(
            msg.contains(ADDRESS) && msg.contains(needle),
            "{name}: {msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    assert_eq!(node.ledger(), before, "refusals book nothing");
    // Refused pods leave nothing running: only pod A's shim is left. (Failing RunPodSandbox
    // would leak the sandbox's shim on containerd 2.1.9, so the refusal comes at CreateContainer.)
    let addr = node.cd.paths().grpc_socket.to_string_lossy().into_owned();
    let t0 = std::time::Instant::now();
    let mut shims = conrdma_e2e::containerd::shim_pids(&addr);
    while shims.len() > 1 && t0.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        shims = conrdma_e2e::containerd::shim_pids(&addr);
    }
    assert_eq!(shims.len(), 1, "shim processes left: {shims:?}");
    for vf in VFS.iter().filter(|v| **v != before[0].record.netdev) {
        assert_home(vf);
    }
    node.cd.cri().stop_and_remove_pod(&pod_a).await.unwrap();
    assert_eq!(node.ledger(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_killed_in_the_middle_of_a_move_finishes_it_after_restart() {
    let _one = HOST_NETDEVS.lock().await;
    let mut node = Node::start().await;
    for point in ["net-booked", "netns-moved"] {
        // Restart the plugin armed to die at this point of the move.
        drop(node.plugin.take());
        node.start_plugin(&[("CONRDMA_CRASH_AT", point)]).await;
        let cri = node.cd.cri();
        let spec = PodSpec::new(point, "default", &format!("uid-{point}"))
            .own_netns()
            .annotation(BW, "1G");
        // containerd treats a plugin that died mid-call as gone and goes on without it.
        let pod = cri.run_pod_spec(&spec).await.unwrap();
        let held = node.ledger();
        assert_eq!(held.len(), 1, "{point}: booked before the move: {held:?}");
        assert_eq!(held[0].net.as_ref().unwrap().phase, NetPhase::Booked);
        let vf = held[0].record.netdev.clone();
        // The restarted plugin finishes the move for the live pod (Synchronize).
        node.start_plugin(&[]).await;
        let held = node.ledger();
        assert_eq!(
            held[0].net.as_ref().unwrap().phase,
            NetPhase::InPod,
            "{point}: {}",
            node.plugin_log()
        );
        let ctr = cri
            .run_container(&pod, "main", "", &["sleep", "3600"], &[])
            .await
            .unwrap();
        let (code, out) = node.exec(&ctr, &["ip", "addr", "show", "rdma0"]).await;
        assert!(
            code == 0 && out.contains("inet 10.77.0.10/24"),
            "{point}: {out}"
        );
        cri.stop_and_remove_pod(&pod).await.unwrap();
        assert_home(&vf);
        assert_eq!(node.ledger(), vec![]);
    }

    // A pod removed while the plugin is down: its namespace is deleted with the VF inside (a
    // veth stand-in dies with it; a real VF returns to the host, renamed rdma0 or devN). The
    // restarted plugin's sweep finds it gone, or brings it home, and frees the booking.
    let cri = node.cd.cri();
    let (pod, _) = node.pod("orphan", false, &[(BW, "1G")]).await.unwrap();
    let vf = node.ledger()[0].record.netdev.clone();
    drop(node.plugin.take());
    cri.stop_and_remove_pod(&pod).await.unwrap();
    node.start_plugin(&[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !node.ledger().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node.ledger(), vec![], "{}", node.plugin_log());
    assert!(
        node.plugin_log()
            .contains("VF netdev is nowhere to be found")
            || on_host(&vf).is_some(),
        "{}",
        node.plugin_log()
    );
}
