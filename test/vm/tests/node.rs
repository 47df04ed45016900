//! The real-kernel tier: ConRDMA's binaries on a VM with QEMU's igb SR-IOV NIC, one Soft-RoCE
//! device per VF, cgroup v2 with the rdma controller, a real containerd 1.7 + runc and the NRI
//! plugin in external mode (discovering `/`, not a simulated tree).
//!
//! Run inside the VM only: `sudo hack/vm-node.sh 'bash test/vm/run.sh'`. On a development machine
//! `cargo test` lists these as ignored.
//!
//! Also here: the NRI plugin's own rate enforcement and node reports to the placement webhook, the
//! igb rate contract checked with iproute2, and the ConRDMA shim as the pods' runtime with the
//! netlink limiter (`shim_*`, skipped with the reason when the shim binary is not built). The
//! facts the tests record go to `kernel-facts.txt` in the results; see docs/vm-testbed.md.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use conrdma_api::report::{UsageBatch, UsageReport};
use conrdma_e2e::webhook::{call, extender_args, wait_for_guaranteed};
use conrdma_e2e::{workspace_bin, ChildGuard, ContainerdOptions, RuntimeHandler};
use conrdma_vm_tests::node::*;
use conrdma_vm_tests::*;
use serde_json::Value;

const BW: &str = "rdma.conrdma.io/bandwidth";
const LIMIT: &str = "rdma.conrdma.io/bandwidth-limit";
const HCA_HANDLES: &str = "rdma.conrdma.io/hca-handles";
const HCA_OBJECTS: &str = "rdma.conrdma.io/hca-objects";

/// `rdma.max`/`rdma.current` as device -> "hca_handle=.. hca_object=..".
fn rdma_lines(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(d, rest)| (d.to_string(), rest.to_string()))
        .collect()
}

// --- discovery -----------------------------------------------------------------------------------

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn discovery_finds_the_pf_its_vfs_and_their_rdma_devices() {
    require_vm_node();
    let facts = node_facts();
    // The library call the plugin makes on every refresh, timed on the real sysfs (rxe ports have
    // 1024 GID entries, nearly all unreadable, and discovery looks at each).
    let t0 = std::time::Instant::now();
    let node = conrdma_node::discover(std::path::Path::new("/")).expect("discovery of /");
    note(&format!(
        "discover(/) took {:?} under QEMU TCG for {} PF(s), {} VF(s) with rxe",
        t0.elapsed(),
        node.pfs.len(),
        node.pfs.iter().map(|p| p.vfs.len()).sum::<usize>()
    ));
    let bin = workspace_bin("conrdmactl").unwrap();
    let (code, out, err) = run(bin.to_str().unwrap(), &["discover", "--root", "/"]);
    assert_eq!(code, 0, "conrdmactl discover --root /: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let pfs = v["node"]["pfs"].as_array().unwrap();
    assert_eq!(pfs.len(), 1, "exactly the igb PF: {out}");
    let pf = &pfs[0];
    assert_eq!(pf["netdev"], facts.pf.as_str());
    assert_eq!(pf["pci"], facts.pf_pci.as_str());
    assert_eq!(pf["total_vfs"], facts.total_vfs);
    assert_eq!(facts.total_vfs, 7, "QEMU's igb offers 7 VFs");
    assert_eq!(pf["speed_mbps"], 1000, "igb under QEMU links at 1 Gbit/s");
    assert_eq!(facts.speed_mbps, 1000);

    let vfs = pf["vfs"].as_array().unwrap();
    assert_eq!(vfs.len(), facts.vfs.len(), "{out}");
    for (got, want) in vfs.iter().zip(&facts.vfs) {
        assert_eq!(got["index"], want.index);
        assert_eq!(
            got["pci"],
            want.pci.as_str(),
            "VF {} PCI address",
            want.index
        );
        assert_eq!(
            got["netdev"],
            want.netdev.as_str(),
            "VF {} netdev",
            want.index
        );
        assert_eq!(
            got["rdma"]["name"],
            want.rdma.as_str(),
            "VF {} RDMA device",
            want.index
        );
        let uv = &got["rdma"]["uverbs"];
        assert_eq!(uv["name"], want.uverbs.as_str(), "VF {} uverbs", want.index);
        assert_eq!(
            (uv["major"].as_i64(), uv["minor"].as_i64()),
            (Some(want.major), Some(want.minor))
        );
        // The node the plugin hands to the container exists with exactly these numbers.
        let node = format!("/dev/infiniband/{}", want.uverbs);
        assert_eq!(
            char_dev_numbers(&node),
            Some((want.major, want.minor)),
            "{node} is not the char device {}:{}",
            want.major,
            want.minor
        );
    }
    let cm = &v["node"]["rdma_cm"];
    assert_eq!(
        (cm["major"].as_i64().unwrap(), cm["minor"].as_i64().unwrap()),
        facts.rdma_cm
    );
    assert_eq!(
        char_dev_numbers("/dev/infiniband/rdma_cm"),
        Some(facts.rdma_cm)
    );

    // What the node offers: every VF, capacity = the PF's line rate.
    let pools = v["offered"]["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["name"], "default");
    let offered = &pools[0]["pfs"][0];
    assert_eq!(offered["capacity_mbps"], 1000);
    assert_eq!(
        offered["vfs"].as_array().unwrap().len(),
        facts.vfs.len(),
        "every VF with an rxe device is offered: {out}"
    );
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_probe_opens_every_vf_device_on_the_node() {
    require_vm_node();
    let facts = node_facts();
    let listed = probe_on_host(&["--list"]);
    let names: BTreeSet<&str> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    for vf in &facts.vfs {
        assert!(
            names.contains(vf.rdma.as_str()),
            "{} not listed: {listed}",
            vf.rdma
        );
        let p = probe_on_host(&["--device", &vf.rdma, "--pds", "1"]);
        assert_eq!(p["ok"], true, "{p}");
        assert_eq!(p["uverbs"], vf.uverbs.as_str(), "{p}");
        assert_eq!(
            p["port_state"], "ACTIVE",
            "rxe follows its VF netdev's link: {p}"
        );
        assert_eq!(p["link_layer"], "Ethernet", "{p}");
        assert_eq!(p["pds_allocated"], 1, "{p}");
    }
}

// --- pods through containerd + the NRI plugin -------------------------------------------------------

#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn pod_gets_its_vf_uverbs_device_and_rdma_max() {
    let n = VmNode::start("").await;
    let (pod_id, ctr) = n
        .pod(pod(
            "rdma-user",
            &[(BW, "300Mbps"), (HCA_HANDLES, "2"), (HCA_OBJECTS, "8")],
        ))
        .await
        .expect("a pod asking for 300Mbps of the 1Gbps PF is admitted");
    let spec = n.spec(&ctr).await;
    let rec = allocation(&spec);
    let vf = n.facts.vf(rec.vf).clone();
    assert_eq!(
        (
            rec.pool.as_str(),
            rec.pf.as_str(),
            rec.vf_pci.as_str(),
            rec.netdev.as_str(),
            rec.rdma_device.as_str()
        ),
        (
            "default",
            n.facts.pf.as_str(),
            vf.pci.as_str(),
            vf.netdev.as_str(),
            vf.rdma.as_str()
        ),
        "{rec:?}"
    );
    assert_eq!((rec.guaranteed_mbps, rec.limit_mbps), (300, 300));
    assert_eq!(rec.uverbs, format!("/dev/infiniband/{}", vf.uverbs));
    let want_max = "hca_handle=2 hca_object=8".to_string();
    let max = format!("{} {want_max}", vf.rdma);
    assert_eq!(rec.rdma_cgroup.max(), Some(max.as_str()), "{rec:?}");
    assert_eq!(
        spec["linux"]["resources"]["unified"]["rdma.max"],
        max.as_str()
    );

    // Inside: exactly this VF's uverbs node and rdma_cm, with the kernel's numbers.
    let (code, out, err) = n.exec(&ctr, &["ls", "/dev/infiniband"]).await;
    assert_eq!(code, 0, "{err}");
    let nodes: BTreeSet<&str> = out.split_whitespace().collect();
    assert_eq!(
        nodes,
        BTreeSet::from([vf.uverbs.as_str(), "rdma_cm"]),
        "the container sees only its own VF's verbs device"
    );
    let (_, out, _) = n
        .exec(
            &ctr,
            &[
                "stat",
                "-c",
                "%F %t:%T",
                &format!("/dev/infiniband/{}", vf.uverbs),
            ],
        )
        .await;
    assert_eq!(
        out.trim(),
        format!("character special file {:x}:{:x}", vf.major, vf.minor)
    );

    // The rdma cgroup: the container's own (cgroup namespace) and the same cgroup seen from the node.
    let (_, inside, _) = n.exec(&ctr, &["cat", "/sys/fs/cgroup/rdma.max"]).await;
    let inside = rdma_lines(&inside);
    assert_eq!(
        inside.get(&vf.rdma),
        Some(&want_max),
        "rdma.max inside: {inside:?}"
    );
    let host_dir = host_cgroup_dir(&spec);
    let on_host = std::fs::read_to_string(host_dir.join("rdma.max"))
        .unwrap_or_else(|e| panic!("{}/rdma.max: {e}", host_dir.display()));
    assert_eq!(
        rdma_lines(&on_host).get(&vf.rdma),
        Some(&want_max),
        "{}/rdma.max: {on_host}",
        host_dir.display()
    );
    note(&format!(
        "rdma.max of the pod's container cgroup {}: {:?}",
        host_dir.display(),
        on_host.trim()
    ));
    for other in n.facts.vfs.iter().filter(|o| o.rdma != vf.rdma) {
        if let Some(l) = rdma_lines(&on_host).get(&other.rdma) {
            assert_eq!(
                l, "hca_handle=max hca_object=max",
                "{} is not limited",
                other.rdma
            );
        }
    }

    // libibverbs inside the container opens the device the plugin named and queries its port.
    let p = n.probe(&ctr, &[]).await;
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!(
        p["device"],
        vf.rdma.as_str(),
        "CONRDMA_RDMA_DEVICE picks the device: {p}"
    );
    assert_eq!(p["uverbs"], vf.uverbs.as_str(), "{p}");
    assert_eq!(p["port_state"], "ACTIVE", "{p}");
    assert_eq!(p["link_layer"], "Ethernet", "{p}");

    // Another VF's device is out of reach: no node for it in the container.
    let other = n.facts.vfs.iter().find(|o| o.rdma != vf.rdma).unwrap();
    let p = n.probe(&ctr, &["--device", &other.rdma]).await;
    assert_eq!(p["ok"], false, "{p}");
    note(&format!(
        "libibverbs in the pod lists {} (sysfs shows every device; only {}'s node exists)",
        p["devices"], vf.uverbs
    ));
    assert!(
        p["stage"] == "open_device" || p["stage"] == "find_device",
        "{} must not open inside the pod: {p}",
        other.rdma
    );

    // rdma.max is enforced by the kernel: 2 handles (contexts) at most.
    let p = n.probe(&ctr, &["--contexts", "3"]).await;
    assert_eq!(p["ok"], false, "{p}");
    assert_eq!(
        p["contexts_opened"], 2,
        "hca_handle=2 allows two contexts: {p}"
    );
    assert_eq!(p["stage"], "open_device", "{p}");
    note(&format!(
        "3rd context with hca_handle=2 refused: errno {} ({})",
        p["errno"], p["error"]
    ));
    // ... and 8 objects at most: each PD is one (the context is a handle, not an object).
    let p = n.probe(&ctr, &["--pds", "9"]).await;
    assert_eq!(p["ok"], false, "{p}");
    assert_eq!(p["pds_allocated"], 8, "hca_object=8 allows eight PDs: {p}");
    assert_eq!(p["stage"], "alloc_pd", "{p}");
    note(&format!(
        "9th PD with hca_object=8 refused: errno {} ({})",
        p["errno"], p["error"]
    ));

    // rdma.current counts what a running process holds.
    let (code, out, err) = n
        .exec(
            &ctr,
            &[
                "sh",
                "-c",
                &format!(
                    "{PROBE_IN_IMAGE} --pds 2 --hold 30 >/tmp/probe.out 2>/tmp/probe.err & \
                     for i in $(seq 1 200); do grep -q holding /tmp/probe.err && break; sleep 0.1; done; \
                     cat /sys/fs/cgroup/rdma.current; kill $!; wait $! 2>/dev/null; true"
                ),
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let current = rdma_lines(&out);
    let mine = current
        .get(&vf.rdma)
        .unwrap_or_else(|| panic!("rdma.current has no {}: {out}", vf.rdma));
    assert_eq!(
        mine, "hca_handle=1 hca_object=2",
        "one context (a handle) and two PDs (objects) held"
    );
    note(&format!(
        "rdma.current in the pod while 1 context + 2 PDs are held: {} {mine}",
        vf.rdma
    ));

    n.cd.cri().stop_and_remove_pod(&pod_id).await.unwrap();
    assert!(n.ledger().is_empty(), "removing the pod released its VF");
    assert!(n.plugin_log().contains("admitted"), "{}", n.plugin_log());
    n.cd.shutdown().await.unwrap();
}

#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn oversubscribing_the_real_1gbps_pf_is_refused_with_the_reason() {
    let n = VmNode::start("").await;
    let (_, ca) = n.pod(pod("a", &[(BW, "600Mbps")])).await.unwrap();
    let err = n.pod(pod("b", &[(BW, "600Mbps")])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(
            "conrdma: pool default: 400Mbps of 1Gbps guaranteed bandwidth left (600Mbps held by 1 pod); pod asks 600Mbps"
        ),
        "{}",
        err.message()
    );
    assert!(!err.message().contains('\n'), "{}", err.message());
    let (_, cc) = n
        .pod(pod("c", &[(BW, "400Mbps")]))
        .await
        .expect("exactly what is left fits");
    let a = allocation(&n.spec(&ca).await);
    let c = allocation(&n.spec(&cc).await);
    assert_ne!(a.vf, c.vf, "two pods never share a VF");
    let err = n.pod(pod("d", &[(BW, "1Mbps")])).await.unwrap_err();
    assert!(
        err.message().contains(
            "0Mbps of 1Gbps guaranteed bandwidth left (1Gbps held by 2 pods); pod asks 1Mbps"
        ),
        "{}",
        err.message()
    );
    let held: BTreeSet<String> = n.ledger().into_iter().map(|h| h.pod.name).collect();
    assert_eq!(held, BTreeSet::from(["a".to_string(), "c".to_string()]));
    n.cd.shutdown().await.unwrap();
}

// --- rates enforced by the NRI plugin itself (`[enforce]`, pods outside the ConRDMA runtime) ---------

/// The plugin's netlink limiter on the real igb PF: the VF is held to the pod's limit while the pod
/// runs; igb refuses the guarantee as min_tx_rate, the limiter falls back to the maximum alone and
/// the plugin says the guarantee is not enforced in hardware; removal resets the VF.
#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn plugin_holds_the_real_vf_to_the_pod_limit_and_resets_it() {
    let n = VmNode::start("[enforce]\nenabled = true\nlimiter = \"netlink\"\n").await;
    let (pod_a, ca) = n
        .pod(pod("capped", &[(BW, "200Mbps"), (LIMIT, "500Mbps")]))
        .await
        .expect("igb's refused min rate does not fail the pod");
    let a = allocation(&n.spec(&ca).await);
    assert_eq!(
        vf_rate(&a.pf, a.vf),
        VfRates {
            max_tx: 500,
            min_tx: 0
        },
        "VF {} held to the 500Mbps limit; no min rate on igb",
        a.vf
    );
    let log = n.plugin_log();
    assert!(
        log.contains("guarantee not enforced in hardware"),
        "the plugin says the 200Mbps guarantee is not enforced: {log}"
    );
    let (pod_b, cb) = n
        .pod(pod("plain-guarantee", &[(BW, "300Mbps")]))
        .await
        .unwrap();
    let b = allocation(&n.spec(&cb).await);
    assert_eq!(
        vf_rate(&b.pf, b.vf).max_tx,
        300,
        "the limit defaults to the guarantee"
    );
    for (vf, rate) in vf_rates(&n.facts.pf) {
        if vf != a.vf && vf != b.vf {
            assert_eq!(
                rate,
                VfRates {
                    max_tx: 0,
                    min_tx: 0
                },
                "VF {vf} is untouched"
            );
        }
    }
    note(&format!(
        "plugin-enforced rates on {}: VF {} max_tx_rate 500 (min 200 refused by igb, fell back to max only), VF {} max_tx_rate 300",
        a.pf, a.vf, b.vf
    ));

    let cri = n.cd.cri();
    cri.stop_and_remove_pod(&pod_a).await.unwrap();
    assert_eq!(
        vf_rate(&a.pf, a.vf),
        VfRates {
            max_tx: 0,
            min_tx: 0
        },
        "reset after removal"
    );
    assert_eq!(
        vf_rate(&b.pf, b.vf).max_tx,
        300,
        "the other pod keeps its limit"
    );
    cri.stop_and_remove_pod(&pod_b).await.unwrap();
    assert_eq!(
        vf_rate(&b.pf, b.vf),
        VfRates {
            max_tx: 0,
            min_tx: 0
        }
    );
    n.cd.shutdown().await.unwrap();
}

// --- node reports to the placement webhook --------------------------------------------------------

/// The plugin's node reports, built from the real PF's discovery, reach the placement webhook in
/// the VM, and the scheduler extender's filter refuses what the node would refuse.
#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn node_reports_of_the_real_pf_reach_the_placement_webhook() {
    require_vm_node();
    let Ok(webhook) = workspace_bin("conrdma-placement") else {
        skip(
            "node_reports_of_the_real_pf_reach_the_placement_webhook",
            "conrdma-placement is not built",
        );
        return;
    };
    let dir = tempfile::tempdir_in("/run").unwrap();
    std::fs::write(dir.path().join("tokens"), "vm-node-token\n").unwrap();
    std::fs::write(dir.path().join("token"), "vm-node-token").unwrap();
    std::fs::write(
        dir.path().join("placement.toml"),
        format!("tokens_file = {:?}\n", dir.path().join("tokens")),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let node = "vm-node";
    let mut cmd = Command::new(webhook);
    cmd.args(["--listen", &addr, "--config"])
        .arg(dir.path().join("placement.toml"));
    let _webhook =
        ChildGuard::spawn("placement", &mut cmd, &dir.path().join("placement.log")).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while call(&addr, "GET", "/v1/nodes", None).0 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the webhook never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = VmNode::start(&format!(
        "[placement]\nurl = \"http://{addr}\"\ncredential_file = {:?}\nnode_name = \"{node}\"\ninterval_seconds = 30\n",
        dir.path().join("token")
    ))
    .await;

    // The plugin's first report (at start) shows the empty 1Gbps PF.
    wait_for_guaranteed(&addr, node, 0, WAIT).await;
    let (_, res) = call(
        &addr,
        "POST",
        "/filter",
        Some(&extender_args(node, "1Gbps")),
    );
    assert_eq!(
        res["NodeNames"],
        serde_json::json!([node]),
        "the whole PF fits: {res}"
    );

    let (pod_id, _) = n.pod(pod("a", &[(BW, "700Mbps")])).await.unwrap();
    wait_for_guaranteed(&addr, node, 700, WAIT).await;
    let (_, res) = call(
        &addr,
        "POST",
        "/filter",
        Some(&extender_args(node, "400Mbps")),
    );
    assert_eq!(res["NodeNames"], serde_json::json!([]), "{res}");
    let reason = res["FailedNodes"][node].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("conrdma:") && reason.contains("400Mbps"),
        "kube-scheduler is told why: {res}"
    );
    let (_, res) = call(
        &addr,
        "POST",
        "/filter",
        Some(&extender_args(node, "300Mbps")),
    );
    assert_eq!(
        res["NodeNames"],
        serde_json::json!([node]),
        "what is left fits: {res}"
    );

    n.cd.cri().stop_and_remove_pod(&pod_id).await.unwrap();
    wait_for_guaranteed(&addr, node, 0, WAIT).await;
    n.cd.shutdown().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// --- kernel facts the shim's netlink limiter relies on ---------------------------------------------

/// Checked with iproute2 (not ConRDMA's code): igb takes a VF max_tx_rate over netlink and reports it
/// back in IFLA_VFINFO_LIST; it refuses any min_tx_rate with EINVAL, and a request carrying both
/// is refused whole (the max is not applied either), so a limiter must retry with the max alone.
#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn igb_takes_max_tx_rate_and_refuses_min_tx_rate() {
    require_vm_node();
    let facts = node_facts();
    let pf = facts.pf.as_str();
    let vf = facts.vfs.last().unwrap().index.to_string();
    let ip = |args: &[&str]| run("ip", args);
    let idx: u32 = vf.parse().unwrap();

    let (code, _, err) = ip(&["link", "set", pf, "vf", &vf, "max_tx_rate", "300"]);
    assert_eq!(code, 0, "max_tx_rate: {err}");
    assert_eq!(
        vf_rate(pf, idx),
        VfRates {
            max_tx: 300,
            min_tx: 0
        }
    );

    let (code, _, err) = ip(&["link", "set", pf, "vf", &vf, "min_tx_rate", "100"]);
    assert_ne!(code, 0, "igb refuses a min rate");
    assert!(err.contains("Invalid argument"), "{err}");

    let (code, _, err) = ip(&[
        "link",
        "set",
        pf,
        "vf",
        &vf,
        "min_tx_rate",
        "100",
        "max_tx_rate",
        "500",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("Invalid argument"), "{err}");
    assert_eq!(
        vf_rate(pf, idx),
        VfRates {
            max_tx: 300,
            min_tx: 0
        },
        "a refused min+max request changes nothing"
    );

    let (code, _, err) = ip(&["link", "set", pf, "vf", &vf, "max_tx_rate", "0"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        vf_rate(pf, idx),
        VfRates {
            max_tx: 0,
            min_tx: 0
        },
        "0 = no limit"
    );
}

// --- the ConRDMA shim as the pods' runtime, with the netlink limiter on the real PF ---------------

const HANDLER: &str = "conrdma";
const SHIM: &str = "containerd-shim-conrdma-v1";

/// The staged shim's directory, or None after recording why the test is skipped.
fn shim_dir(test: &str) -> Option<PathBuf> {
    match workspace_bin(SHIM) {
        Ok(shim) => shim.parent().map(|d| d.to_path_buf()),
        Err(_) => {
            skip(test, "containerd-shim-conrdma-v1 is not built");
            None
        }
    }
}

/// containerd with the `conrdma` runtime handler: the shim with the netlink limiter, plus `extra`
/// options (reports).
fn shim_options(dir: PathBuf, extra: &[(&str, toml::Value)]) -> ContainerdOptions {
    let mut h = RuntimeHandler::new(HANDLER, "io.containerd.conrdma.v1");
    h.pod_annotations = vec!["rdma.conrdma.io/*".into()];
    h.options.insert("limiter".into(), "netlink".into());
    for (k, v) in extra {
        h.options.insert((*k).into(), v.clone());
    }
    ContainerdOptions {
        runtimes: vec![h],
        extra_path: vec![dir],
        ..Default::default()
    }
}

/// Polls `f` until it returns Some, or panics after `WAIT` naming `what`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Under the shim, the real PF's VF info shows max_tx_rate = the pod's limit while it runs; igb
/// refuses the guarantee as min_tx_rate and the shim runs the pod with the maximum alone, saying
/// the guarantee is not enforced in hardware; removing the pod resets the VF.
#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn shim_holds_the_real_vf_to_the_pod_limit_and_resets_it_after_removal() {
    const T: &str = "shim_holds_the_real_vf_to_the_pod_limit_and_resets_it_after_removal";
    require_vm_node();
    let Some(dir) = shim_dir(T) else { return };
    let mut n = VmNode::start_with("", shim_options(dir, &[])).await;
    let mark = n.cd.log_mark();
    let (pod_id, ctr) = n
        .pod(pod("trainer", &[(BW, "200Mbps"), (LIMIT, "500Mbps")]).runtime_handler(HANDLER))
        .await
        .expect("the pod runs although igb has no min rate");
    let rec = allocation(&n.spec(&ctr).await);
    assert_eq!(
        vf_rate(&rec.pf, rec.vf),
        VfRates {
            max_tx: 500,
            min_tx: 0
        },
        "VF {} held to the 500Mbps limit while the pod runs",
        rec.vf
    );
    for (vf, rate) in vf_rates(&rec.pf) {
        if vf != rec.vf {
            assert_eq!(
                rate,
                VfRates {
                    max_tx: 0,
                    min_tx: 0
                },
                "VF {vf} is untouched"
            );
        }
    }
    n.cd.wait_for_log_since(mark, "the guarantee is not enforced in hardware", WAIT)
        .await
        .expect("the shim says igb refused the 200Mbps minimum");
    // The verbs device works in a pod under the shim too.
    let p = n.probe(&ctr, &[]).await;
    assert_eq!(
        (p["ok"].as_bool(), p["device"].as_str()),
        (Some(true), Some(rec.rdma_device.as_str())),
        "{p}"
    );
    note(&format!(
        "shim with the netlink limiter: {} VF {} max_tx_rate 500 while the pod runs (min_tx_rate 200 refused by igb)",
        rec.pf, rec.vf
    ));

    let mark = n.cd.log_mark();
    n.cd.cri().stop_and_remove_pod(&pod_id).await.unwrap();
    eventually("the VF rate reset after removal", || {
        (vf_rate(&rec.pf, rec.vf)
            == VfRates {
                max_tx: 0,
                min_tx: 0,
            })
        .then_some(())
    })
    .await;
    n.cd.wait_for_log_since(mark, "VF rate reset: the pod is gone", WAIT)
        .await
        .unwrap();
    n.cd.shutdown().await.unwrap();
}

/// Usage reports from the shim (real VF counters from IFLA_VF_STATS) reach an HTTP receiver in
/// the VM, with the pod's identity, its VF and its limits, ending with a final report at removal.
/// Under emulation igb's VF counters stay at zero, so the rates are not checked here.
#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn shim_usage_reports_reach_the_receiver() {
    const T: &str = "shim_usage_reports_reach_the_receiver";
    require_vm_node();
    let Some(dir) = shim_dir(T) else { return };
    let rx = Receiver::start();
    let tmp = tempfile::tempdir_in("/run").unwrap();
    std::fs::write(tmp.path().join("token"), "vm-shim-token\n").unwrap();
    let path = |p: &str| toml::Value::from(tmp.path().join(p).to_string_lossy().into_owned());
    let opts = shim_options(
        dir,
        &[
            ("webhook_url", rx.url().into()),
            ("credential_file", path("token")),
            ("report_interval", "1s".into()),
            ("node_name", "vm-node".into()),
            ("spool_dir", path("spool")),
        ],
    );
    let n = VmNode::start_with("", opts).await;
    let (pod_id, ctr) = n
        .pod(pod("reporter", &[(BW, "100Mbps"), (LIMIT, "250Mbps")]).runtime_handler(HANDLER))
        .await
        .unwrap();
    let rec = allocation(&n.spec(&ctr).await);
    eventually("a usage report", || (!rx.bodies().is_empty()).then_some(())).await;
    n.cd.cri().stop_and_remove_pod(&pod_id).await.unwrap();
    eventually("the final report", || {
        rx.reports().iter().any(|r| r.is_final).then_some(())
    })
    .await;

    let heads = rx.heads();
    assert!(
        heads
            .iter()
            .all(|h| h.starts_with("POST /v1/reports/usage ")
                && h.to_ascii_lowercase()
                    .contains("authorization: bearer vm-shim-token")),
        "path and bearer credential: {heads:?}"
    );
    let mut reports = rx.reports();
    reports.sort_by_key(|r| r.window_start_unix_ms);
    let r = &reports[0];
    assert_eq!(
        (
            r.node.as_str(),
            r.pod.name.as_str(),
            r.pod.uid.as_str(),
            r.pf.as_str(),
            r.vf,
            r.guaranteed_mbps,
            r.limit_mbps
        ),
        (
            "vm-node",
            "reporter",
            "uid-reporter",
            rec.pf.as_str(),
            rec.vf,
            100,
            250
        ),
        "{r:?}"
    );
    assert_eq!(reports.iter().filter(|r| r.is_final).count(), 1);
    assert!(
        reports.last().unwrap().is_final,
        "the final report comes last"
    );
    for w in reports.windows(2) {
        assert_eq!(
            w[0].window_end_unix_ms, w[1].window_start_unix_ms,
            "the windows tile the pod's life: {:?} then {:?}",
            w[0], w[1]
        );
    }
    note(&format!(
        "shim usage reports from the real PF: {} reports over {} ms, tx_mbps {:?}, rx_mbps {:?} (igb VF counters under QEMU)",
        reports.len(),
        reports.last().unwrap().window_end_unix_ms - r.window_start_unix_ms,
        reports.iter().map(|r| r.tx_mbps).collect::<Vec<_>>(),
        reports.iter().map(|r| r.rx_mbps).collect::<Vec<_>>()
    ));
    n.cd.shutdown().await.unwrap();
}

/// A minimal HTTP receiver on loopback: answers 202 to every request and keeps (head, body).
struct Receiver {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let request = loop {
                    let Ok(k) = c.read(&mut chunk) else {
                        break None;
                    };
                    if k == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some(i) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let head = text[..i].to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        let body = String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).into_owned();
                        break Some((head, body));
                    }
                };
                if let Some(r) = request {
                    g.lock().unwrap().push(r);
                    let _ = c.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
                }
            }
        });
        Receiver { port, got, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn heads(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn bodies(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Every report of every batch received, in arrival order; each batch must be valid.
    fn reports(&self) -> Vec<UsageReport> {
        self.bodies()
            .iter()
            .flat_map(|b| {
                let batch: UsageBatch = serde_json::from_str(b)
                    .unwrap_or_else(|e| panic!("not a usage batch ({e}): {b}"));
                batch.validate().expect("a valid usage batch");
                batch.reports
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
