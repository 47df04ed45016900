//! The NRI plugin on a real containerd (2.x or 1.7: CONRDMA_CONTAINERD) with runc, driven through CRI like a kubelet, over a
//! simulated SR-IOV NIC. Each test gets its own containerd, NIC tree, ledger and plugin process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conrdma_api::allocation::{AllocationRecord, RdmaCgroupLimit};
use conrdma_e2e::{
    simulate_nic, workspace_bin, ChildGuard, Containerd, ContainerdOptions, PodSpec,
    NRI_PLUGIN as PLUGIN,
};
use conrdma_node::ledger::{Held, Ledger};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const BW: &str = "rdma.conrdma.io/bandwidth";
const LIMIT: &str = "rdma.conrdma.io/bandwidth-limit";

struct Node {
    cd: Containerd,
    plugin: Option<ChildGuard>,
    sim: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
}

impl Node {
    async fn start(pfs: u32, vfs: u32, speed: &str, config: &str) -> Node {
        let sim = tempfile::tempdir().unwrap();
        simulate_nic(&sim.path().join("nic"), pfs, vfs, speed).unwrap();
        let config_path = sim.path().join("node.toml");
        std::fs::write(&config_path, config).unwrap();
        let cd = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let state = sim.path().join("state");
        Node {
            cd,
            plugin: None,
            sim,
            state,
            config: config_path,
        }
    }

    fn nic(&self) -> PathBuf {
        self.sim.path().join("nic")
    }

    /// Starts (or restarts) the external plugin and waits until containerd has synchronized it.
    async fn start_plugin(&mut self) {
        let nic = self.nic();
        let args = [
            OsStr::new("--root"),
            nic.as_os_str(),
            OsStr::new("--state-dir"),
            self.state.as_os_str(),
            OsStr::new("--config"),
            self.config.as_os_str(),
        ];
        self.plugin = Some(self.cd.start_nri_plugin(args).await.unwrap());
    }

    fn ledger(&self) -> Vec<Held> {
        Ledger::snapshot(&self.state).unwrap()
    }

    fn plugin_log(&self) -> String {
        self.plugin.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// RunPodSandbox + CreateContainer + StartContainer of a long-running busybox container.
    async fn pod(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> Result<(String, String), tonic::Status> {
        let mut spec = PodSpec::new(name, "default", &format!("uid-{name}"));
        for (k, v) in annotations {
            spec = spec.annotation(k, v);
        }
        self.cd.cri().run_pod_with_sleeper(&spec).await
    }

    async fn spec(&self, ctr: &str) -> Value {
        self.cd.cri().container_status_verbose(ctr).await.unwrap()["runtimeSpec"].clone()
    }

    async fn exec(&self, ctr: &str, cmd: &[&str]) -> (i32, String, String) {
        self.cd
            .cri()
            .exec_sync(ctr, cmd, Duration::from_secs(10))
            .await
            .unwrap()
    }
}

fn allocation(spec: &Value) -> Option<AllocationRecord> {
    spec["annotations"]["rdma.conrdma.io/allocation"]
        .as_str()
        .map(|s| AllocationRecord::from_json(s).unwrap())
}

fn env(spec: &Value) -> Vec<String> {
    spec["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// (major, minor) of the uverbs device the simulated NIC gave `rdma_device`.
fn uverbs_numbers(nic: &Path, uverbs_path: &str) -> (i64, i64) {
    let name = uverbs_path.rsplit('/').next().unwrap();
    let dev = std::fs::read_to_string(
        nic.join("sys/class/infiniband_verbs")
            .join(name)
            .join("dev"),
    )
    .unwrap();
    let (a, b) = dev.trim().split_once(':').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[tokio::test]
async fn requesting_pod_gets_its_vf_devices_env_and_allocation() {
    let mut n = Node::start(
        2,
        4,
        "100Gbps",
        "[[pool]]\nname = \"fabric-a\"\npfs = [\"ens1f0\", \"ens1f1\"]\n",
    )
    .await;
    n.start_plugin().await;
    let (pod, ctr) = n
        .pod("trainer", &[(BW, "10Gbps"), (LIMIT, "25 G")])
        .await
        .unwrap();
    let spec = n.spec(&ctr).await;

    let rec = allocation(&spec).expect("allocation annotation");
    assert_eq!(
        (rec.pool.as_str(), rec.guaranteed_mbps, rec.limit_mbps),
        ("fabric-a", 10_000, 25_000)
    );
    assert!(rec.netdev.starts_with(&format!("{}v", rec.pf)), "{rec:?}");
    // This host is cgroup v1: no unified key may reach runc, and the record says why.
    assert!(
        matches!(&rec.rdma_cgroup, RdmaCgroupLimit::NotSet { .. }),
        "{:?}",
        rec.rdma_cgroup
    );
    assert!(spec["linux"]["resources"]["unified"]
        .get("rdma.max")
        .is_none());

    let (major, minor) = uverbs_numbers(&n.nic(), &rec.uverbs);
    let devices = spec["linux"]["devices"].as_array().unwrap();
    let uv = devices
        .iter()
        .find(|d| d["path"] == rec.uverbs.as_str())
        .expect("uverbs device in spec");
    assert_eq!(
        (
            uv["type"].as_str(),
            uv["major"].as_i64(),
            uv["minor"].as_i64()
        ),
        (Some("c"), Some(major), Some(minor))
    );
    let cm = devices
        .iter()
        .find(|d| d["path"] == "/dev/infiniband/rdma_cm")
        .expect("rdma_cm in spec");
    assert_eq!(
        (cm["major"].as_i64(), cm["minor"].as_i64()),
        (Some(10), Some(124))
    );
    // containerd turns each device into a device-cgroup allow rule.
    let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| r["allow"] == true
            && r["type"] == "c"
            && r["major"] == major
            && r["minor"] == minor),
        "no allow rule for {major}:{minor} in {rules:?}"
    );
    let env = env(&spec);
    for want in [
        format!("CONRDMA_RDMA_DEVICE={}", rec.rdma_device),
        format!("CONRDMA_NETDEV={}", rec.netdev),
        format!("CONRDMA_VF_PCI={}", rec.vf_pci),
        "CONRDMA_GUARANTEED_MBPS=10000".to_string(),
        "CONRDMA_LIMIT_MBPS=25000".to_string(),
    ] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }

    // From inside: the nodes exist with the right numbers, and the device cgroup lets us reach
    // the driver (no driver is behind a simulated NIC, so open fails with ENXIO, not EPERM).
    let (code, out, _) = n.exec(&ctr, &["ls", "-l", "/dev/infiniband"]).await;
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.ends_with(rec.uverbs.rsplit('/').next().unwrap()))
        .expect(&out);
    assert!(
        line.starts_with('c') && line.contains(&format!("{major}, {minor}")),
        "{line}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with('c') && l.ends_with("rdma_cm")),
        "{out}"
    );
    let (_, _, err) = n
        .exec(&ctr, &["sh", "-c", &format!("exec 3<{}", rec.uverbs)])
        .await;
    assert!(
        !err.contains("Operation not permitted"),
        "device cgroup denied the VF: {err}"
    );
    let (_, out, _) = n
        .exec(
            &ctr,
            &["sh", "-c", "echo $CONRDMA_NETDEV/$CONRDMA_LIMIT_MBPS"],
        )
        .await;
    assert_eq!(out.trim(), format!("{}/25000", rec.netdev));

    // A second container of the pod shares the VF.
    let cri = n.cd.cri();
    let c2 = cri
        .run_container(&pod, "sidecar", "", &["sleep", "3600"], &[])
        .await
        .unwrap();
    assert_eq!(allocation(&n.spec(&c2).await), Some(rec.clone()));
    assert_eq!(n.ledger().len(), 1);

    // A pod limited to named containers: others are left alone.
    let p2 = cri
        .run_pod(
            "mixed",
            "default",
            "uid-mixed",
            &[(BW, "1G"), ("rdma.conrdma.io/containers", "worker")],
        )
        .await
        .unwrap();
    let other = cri
        .run_container(&p2, "logger", "", &["sleep", "3600"], &[])
        .await
        .unwrap();
    let worker = cri
        .run_container(&p2, "worker", "", &["sleep", "3600"], &[])
        .await
        .unwrap();
    assert!(allocation(&n.spec(&other).await).is_none());
    let w = allocation(&n.spec(&worker).await).expect("worker gets the VF");
    assert_ne!(
        (w.pf.as_str(), w.vf),
        (rec.pf.as_str(), rec.vf),
        "two pods never share a VF"
    );
    assert!(n.plugin_log().contains("admitted"), "{}", n.plugin_log());
}

#[tokio::test]
async fn plain_pod_is_untouched() {
    let mut n = Node::start(1, 2, "25G", "").await;
    n.start_plugin().await;
    let (_, ctr) = n.pod("plain", &[("example.com/other", "x")]).await.unwrap();
    let spec = n.spec(&ctr).await;
    assert!(allocation(&spec).is_none());
    assert!(!env(&spec).iter().any(|e| e.starts_with("CONRDMA_")));
    let devs = spec["linux"]["devices"]
        .as_array()
        .map(|d| d.len())
        .unwrap_or(0);
    assert_eq!(devs, 0, "{}", spec["linux"]["devices"]);
    let (code, _, _) = n.exec(&ctr, &["test", "-e", "/dev/infiniband"]).await;
    assert_ne!(code, 0, "no RDMA devices inside a plain pod");
    assert!(n.ledger().is_empty());
}

#[tokio::test]
async fn bad_annotations_and_oversubscription_fail_create_with_the_reason() {
    let mut n = Node::start(2, 4, "100Gbps", "").await;
    n.start_plugin().await;
    for (key, value, needle) in [
        (BW, "10Gi", "invalid annotation rdma.conrdma.io/bandwidth=\"10Gi\": unit \"Gi\" is not one of Kbps, Mbps, Gbps, Tbps; accepted: a decimal number"),
        (BW, "-5G", "invalid annotation rdma.conrdma.io/bandwidth=\"-5G\""),
        ("rdma.conrdma.io/bandwith", "5G", "unknown annotation rdma.conrdma.io/bandwith: accepted keys under rdma.conrdma.io/ are"),
    ] {
        let err = n.pod("bad", &[(key, value)]).await.expect_err(value);
        assert!(err.message().contains(needle), "{}", err.message());
        assert!(!err.message().contains('\n'));
    }
    let err = n
        .pod("low-limit", &[(BW, "10G"), (LIMIT, "5G")])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("the limit is below the guarantee"),
        "{}",
        err.message()
    );
    assert!(n.ledger().is_empty(), "refused pods book nothing");

    n.pod("a", &[(BW, "80G")]).await.unwrap();
    n.pod("b", &[(BW, "80G")]).await.unwrap();
    let err = n.pod("c", &[(BW, "50G")]).await.unwrap_err();
    assert!(
        err.message().contains(
            "conrdma: pool default: 40Gbps of 200Gbps guaranteed bandwidth left (160Gbps held by 2 pods); pod asks 50Gbps"
        ),
        "{}",
        err.message()
    );
    // Enough is left in the pool, but not on any one PF: the message says so.
    let err = n.pod("c", &[(BW, "30G")]).await.unwrap_err();
    assert!(
        err.message()
            .contains("(160Gbps held by 2 pods), at most 20Gbps on one PF; pod asks 30Gbps"),
        "{}",
        err.message()
    );
    let held: Vec<String> = n.ledger().into_iter().map(|h| h.pod.name).collect();
    assert_eq!(held.len(), 2, "{held:?}");
    n.pod("d", &[(BW, "20G")])
        .await
        .expect("what is left on one PF still fits");
}

#[tokio::test]
async fn removing_a_pod_frees_its_bandwidth() {
    let mut n = Node::start(1, 4, "100Gbps", "").await;
    n.start_plugin().await;
    let (pod_a, _) = n.pod("a", &[(BW, "60G")]).await.unwrap();
    assert!(n.pod("b", &[(BW, "60G")]).await.is_err());
    n.cd.cri().stop_and_remove_pod(&pod_a).await.unwrap();
    assert!(
        n.ledger().is_empty(),
        "RemovePodSandbox released the allocation"
    );
    let (_, c) = n
        .pod("b", &[(BW, "60G")])
        .await
        .expect("freed bandwidth is admitted");
    assert_eq!(
        allocation(&n.spec(&c).await).unwrap().guaranteed_mbps,
        60_000
    );
}

#[tokio::test]
async fn plugin_kill9_and_restart_keep_every_allocation() {
    let mut n = Node::start(1, 4, "100Gbps", "").await;
    n.start_plugin().await;
    let (pod_a, _) = n.pod("a", &[(BW, "30G")]).await.unwrap();
    let (_, cb) = n.pod("b", &[(BW, "40G")]).await.unwrap();
    let b = allocation(&n.spec(&cb).await).unwrap();
    let before = n.ledger();

    let mark = n.cd.log_mark();
    n.plugin.as_mut().unwrap().kill().unwrap();
    n.cd.wait_for_log_since(mark, "closed", WAIT).await.unwrap();
    // While the plugin is down, pod a goes away: the removal event is lost.
    n.cd.cri().stop_and_remove_pod(&pod_a).await.unwrap();
    assert_eq!(
        n.ledger(),
        before,
        "nothing changes while the plugin is down"
    );

    n.start_plugin().await;
    let after: Vec<String> = n.ledger().into_iter().map(|h| h.pod.name).collect();
    assert_eq!(
        after,
        ["b"],
        "Synchronize freed the gone pod and kept the live one"
    );
    // Freed by whichever comes first: Synchronize, or the sweep the plugin runs as it starts.
    let log = n.plugin_log();
    assert!(
        log.contains("released: pod is gone")
            || log.contains("released: containerd no longer holds the pod"),
        "{log}"
    );
    // 60G is left: more is refused, exactly that fits, on a VF other than b's.
    let err = n.pod("c", &[(BW, "61G")]).await.unwrap_err();
    assert!(
        err.message()
            .contains("60Gbps of 100Gbps guaranteed bandwidth left (40Gbps held by 1 pod)"),
        "{}",
        err.message()
    );
    let (_, cd) = n.pod("d", &[(BW, "60G")]).await.unwrap();
    assert_ne!(
        allocation(&n.spec(&cd).await).unwrap().vf,
        b.vf,
        "no double booking"
    );
}

#[tokio::test]
async fn containerd_restart_is_survived() {
    let mut n = Node::start(1, 4, "100Gbps", "").await;
    n.start_plugin().await;
    let (_, ca) = n.pod("a", &[(BW, "50G")]).await.unwrap();
    let a = allocation(&n.spec(&ca).await).unwrap();
    let mark = n.cd.log_mark();
    n.cd.restart().await.unwrap();
    n.cd.wait_for_plugin_since(mark, PLUGIN, WAIT)
        .await
        .expect("plugin reconnected to the new containerd");
    assert!(n.plugin.as_mut().unwrap().is_running());
    assert_eq!(n.ledger().len(), 1, "allocation kept across the restart");
    let (code, out, _) = n.exec(&ca, &["ls", "/dev/infiniband"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(a.uverbs.rsplit('/').next().unwrap()));
    assert!(
        n.pod("b", &[(BW, "51G")]).await.is_err(),
        "a's 50G is still held"
    );
    let (_, cb) = n.pod("b", &[(BW, "50G")]).await.unwrap();
    assert_ne!(allocation(&n.spec(&cb).await).unwrap().vf, a.vf);
}

/// Run as a kubelet would: a pod created before a containerd kill -9 and removed after it. containerd
/// relays RemovePodSandbox only for pods it saw start since it came up, so NRI never reports this
/// removal; the plugin's sweep against containerd's CRI must free the allocation, in bounded time.
#[tokio::test]
async fn pod_removed_after_a_containerd_kill9_is_released() {
    let mut n = Node::start(1, 4, "100Gbps", "[cri]\nsweep_seconds = 2").await;
    n.start_plugin().await;
    let (pod_a, _) = n.pod("a", &[(BW, "50G")]).await.unwrap();
    let mark = n.cd.log_mark();
    n.cd.kill().unwrap();
    n.cd.start_again().await.unwrap();
    n.cd.wait_for_plugin_since(mark, PLUGIN, WAIT)
        .await
        .expect("plugin reconnected to the new containerd");
    // A sweep runs while the pod is still there: it must keep it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(n.ledger().len(), 1, "the live pod keeps its allocation");

    n.cd.cri().stop_and_remove_pod(&pod_a).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !n.ledger().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        n.ledger().is_empty(),
        "allocation of the removed pod still held: {:?}\n{}",
        n.ledger(),
        n.plugin_log()
    );
    assert!(n
        .plugin_log()
        .contains("released: containerd no longer holds the pod"));
    let (_, cb) = n
        .pod("b", &[(BW, "100G")])
        .await
        .expect("the whole PF is free again");
    assert_eq!(
        allocation(&n.spec(&cb).await).unwrap().guaranteed_mbps,
        100_000
    );
}

#[tokio::test]
async fn prelaunched_plugin_is_configured_by_containerd() {
    // containerd starts the plugin itself, with no arguments: everything comes from its .conf,
    // metrics too.
    let sim_parent = tempfile::tempdir().unwrap();
    let nic = sim_parent.path().join("nic");
    simulate_nic(&nic, 1, 2, "10G").unwrap();
    let state = sim_parent.path().join("state");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut opts = ContainerdOptions::default();
    opts.prelaunched_plugins
        .push((PLUGIN.into(), workspace_bin("conrdma-nri-plugin").unwrap()));
    opts.plugin_configs.push((
        format!("{PLUGIN}.conf"),
        format!(
            "sysfs_root = {:?}\nstate_dir = {:?}\n[[pool]]\nname = \"pre\"\npfs = [\"ens1f0\"]\n\
             [conserve]\nenabled = true\nlimiter = \"simulated\"\nmetrics_listen = {metrics:?}\n",
            nic, state
        ),
    ));
    let cd = Containerd::start(opts).await.unwrap();
    let cri = cd.cri();
    let pod = cri
        .run_pod("pre", "default", "uid-pre", &[(BW, "4G")])
        .await
        .unwrap();
    let c = cri
        .run_container(&pod, "main", "", &["sleep", "3600"], &[])
        .await
        .unwrap();
    let spec = cri.container_status_verbose(&c).await.unwrap()["runtimeSpec"].clone();
    let rec = allocation(&spec).expect("pre-launched plugin adjusted the container");
    assert_eq!((rec.pool.as_str(), rec.guaranteed_mbps), ("pre", 4_000));
    assert_eq!(Ledger::snapshot(&state).unwrap().len(), 1);
    let (status, text) = conrdma_e2e::webhook::get_text(&metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("conrdma_conserve_vf_steered{") && text.contains("pod=\"default/pre\""),
        "{text}"
    );
    let pod2 = cri
        .run_pod("pre2", "default", "uid-pre2", &[(BW, "7G")])
        .await
        .unwrap();
    let err = cri
        .run_container(&pod2, "main", "", &["sleep", "1"], &[])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("pool pre: 6Gbps of 10Gbps"),
        "{}",
        err.message()
    );
    cd.shutdown().await.unwrap();
}

#[tokio::test]
async fn plugin_enforces_rates_for_pods_outside_the_conrdma_runtime() {
    let mut n = Node::start(
        1,
        2,
        "100Gbps",
        "[enforce]\nenabled = true\nlimiter = \"simulated\"\n",
    )
    .await;
    n.start_plugin().await;
    let (pod, c) = n
        .pod("enforced", &[(BW, "10G"), (LIMIT, "30G")])
        .await
        .unwrap();
    let rec = allocation(&n.spec(&c).await).unwrap();
    let knob = |name: &str| {
        let p = n.nic().join(format!(
            "sys/class/net/{}/device/sriov/{}/{name}",
            rec.pf, rec.vf
        ));
        std::fs::read_to_string(&p).unwrap().trim().to_string()
    };
    assert_eq!(
        (knob("min_tx_rate").as_str(), knob("max_tx_rate").as_str()),
        ("10000", "30000")
    );
    assert!(n.ledger()[0].plugin_enforced);
    n.cd.cri().stop_and_remove_pod(&pod).await.unwrap();
    assert_eq!(
        (knob("min_tx_rate").as_str(), knob("max_tx_rate").as_str()),
        ("0", "0"),
        "reset at release"
    );
}
