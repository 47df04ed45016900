//! Pods in their own network namespace on the real kernel: containerd with a CNI bridge as the
//! pods' primary network, the NRI plugin over the VM's igb VFs with Soft-RoCE, a pool with a
//! network section. Needs a kernel whose rdma_rxe has per-namespace sockets (Debian sid's 7.2:
//! `hack/vm-node.sh --kernel sid`); on one without (6.1) the plugin must refuse such pods with the
//! reason, which one test checks there (and skips on 7.2) while the others skip.

use std::time::{Duration, Instant};

use conrdma_e2e::{CniBridge, ContainerdOptions, PodSpec};
use conrdma_vm_tests::node::*;
use conrdma_vm_tests::*;

const POOL: &str = "rdma.conrdma.io/pool";
const BW: &str = "rdma.conrdma.io/bandwidth";

fn config(pf: &str) -> String {
    format!(
        "[[pool]]\nname = \"fabric\"\npfs = [\"{pf}\"]\n[pool.network]\nsubnet = \"10.77.0.0/24\"\nrange = \"10.77.0.10-10.77.0.200\"\n"
    )
}

fn cni() -> ContainerdOptions {
    ContainerdOptions {
        // Under software emulation the kernel's rxe teardown and setup in a move take seconds
        // (milliseconds on hardware); containerd's 2 s default would drop the plugin mid-move.
        nri_request_timeout: "30s".into(),
        cni_bridge: Some(CniBridge {
            bridge: "crdbr0".into(),
            subnet: "10.88.0.0/24".into(),
        }),
        ..Default::default()
    }
}

/// Whether this kernel's rdma_rxe serves RDMA CM inside network namespaces (the plugin's check).
fn rxe_per_netns() -> bool {
    conrdma_node::netns::rxe_per_netns_supported()
}

/// A pod in its own network namespace is refused with one line containing `needle`, books
/// nothing, and every VF stays home.
async fn assert_refused(n: VmNode, facts: &NodeFacts, pod: PodSpec, needle: &str) {
    let e = n.pod(pod).await.expect_err("refused");
    assert!(
        e.message().contains(needle) && !e.message().contains('\n'),
        "{}",
        e.message()
    );
    assert_eq!(n.ledger(), vec![], "{}", n.plugin_log());
    drop(n);
    assert_all_home(facts);
}

fn netns_pod(name: &str, annotations: &[(&str, &str)]) -> PodSpec {
    let mut p = pod(name, annotations).own_netns();
    p.annotations.insert(POOL.into(), "fabric".into());
    p
}

/// Every VF netdev on the host under its own name, down, without an IPv4 address, with its rxe
/// bound to it: the node as node-setup left it.
fn assert_all_home(facts: &NodeFacts) {
    let (_, links, _) = run("rdma", &["link", "show"]);
    for vf in &facts.vfs {
        let (code, out, err) = run("ip", &["-o", "-4", "addr", "show", "dev", &vf.netdev]);
        assert_eq!(code, 0, "{} is not on the host: {err}", vf.netdev);
        assert!(
            out.trim().is_empty(),
            "{} still has an address: {out}",
            vf.netdev
        );
        assert!(
            links.contains(&format!("link {}/1", vf.rdma))
                && links.contains(&format!("netdev {}", vf.netdev)),
            "{} is not bound to {} on the host: {links}",
            vf.rdma,
            vf.netdev
        );
    }
}

#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh --kernel sid 'bash test/vm/run.sh'"]
async fn two_pods_reach_each_other_over_rdma_cm_on_their_vfs() {
    let test = "two_pods_reach_each_other_over_rdma_cm_on_their_vfs";
    require_vm_node();
    let facts = node_facts();
    if !rxe_per_netns() {
        skip(
            test,
            "this kernel's rdma_rxe has no per-namespace sockets (run with --kernel sid)",
        );
        return;
    }
    let n = VmNode::start_with(&config(&facts.pf), cni()).await;
    let (pa, a) = n.pod(netns_pod("rdma-a", &[(BW, "100M")])).await.unwrap();
    let (pb, b) = n.pod(netns_pod("rdma-b", &[(BW, "100M")])).await.unwrap();
    let rec_a = allocation(&n.spec(&a).await);
    let rec_b = allocation(&n.spec(&b).await);
    let addr_a = rec_a.address.clone().expect("pod A has an address");
    let ip_a = addr_a.split('/').next().unwrap().to_string();
    for (ctr, rec) in [(&a, &rec_a), (&b, &rec_b)] {
        let (code, out, err) = n.exec(ctr, &["ip", "addr", "show", "rdma0"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(rec.address.as_deref().unwrap()), "{out}");
        // The pod's own Soft-RoCE device works from inside (through its injected uverbs node).
        let probe = n.probe(ctr, &["--device", &rec.rdma_device]).await;
        assert_eq!(probe["ok"], true, "{probe}");
        let (code, _, err) = run("ip", &["link", "show", &rec.netdev]);
        assert_ne!(code, 0, "{} is still on the host: {err}", rec.netdev);
    }
    let (code, out, err) = n.exec(&b, &["ping", "-c", "2", "-W", "5", &ip_a]).await;
    assert_eq!(code, 0, "pod B cannot ping pod A's VF address: {out}{err}");

    // rping from B to A: rdma_cm resolves A's address in B's namespace.
    let server = format!("rping -s -a {ip_a} -C 3 -v >/tmp/rping.log 2>&1 &");
    n.exec(&a, &["sh", "-c", &server]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out, err) = n
        .exec(&b, &["rping", "-c", "-a", &ip_a, "-C", "3", "-v"])
        .await;
    assert_eq!(code, 0, "rping from pod B to pod A failed: {out}{err}");
    assert!(out.contains("ping data"), "{out}");

    // ib_write_bw over rdma_cm, B to A, on their own devices.
    let server = format!(
        "ib_write_bw -R -d {} -n 200 --report_gbits >/tmp/bw.log 2>&1 &",
        rec_a.rdma_device
    );
    n.exec(&a, &["sh", "-c", &server]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out, err) = n
        .exec(
            &b,
            &[
                "ib_write_bw",
                "-R",
                "-d",
                &rec_b.rdma_device,
                "-n",
                "200",
                "--report_gbits",
                &ip_a,
            ],
        )
        .await;
    assert_eq!(
        code, 0,
        "ib_write_bw -R from pod B to pod A failed: {out}{err}"
    );
    // The result row: #bytes #iterations BW peak BW average MsgRate.
    let gbits = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[0] == "65536")
                .then(|| f[3].parse::<f64>().ok())
                .flatten()
        })
        .next_back()
        .unwrap_or_else(|| panic!("no result row in ib_write_bw's output: {out}"));
    assert!(gbits > 0.0, "{out}");
    note(&format!(
        "ib_write_bw -R pod B -> pod A over their VFs (rxe in the pods' namespaces, kernel {}): {gbits:.3} Gbit/s average",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    ));
    println!("ib_write_bw -R pod B -> pod A: {gbits:.3} Gbit/s");

    let cri = n.cd.cri();
    cri.stop_and_remove_pod(&pa).await.unwrap();
    cri.stop_and_remove_pod(&pb).await.unwrap();
    assert_eq!(n.ledger(), vec![], "{}", n.plugin_log());
    assert_all_home(&facts);
}

#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
async fn where_rxe_cannot_serve_pod_namespaces_the_pod_is_refused_with_the_reason() {
    // Debian's 6.1: the kernel would create the rxe in the pod, but RDMA CM there could not
    // reach peers. The plugin refuses the pod's container with the reason and moves nothing.
    let test = "where_rxe_cannot_serve_pod_namespaces_the_pod_is_refused_with_the_reason";
    require_vm_node();
    let facts = node_facts();
    if rxe_per_netns() {
        skip(
            test,
            "this kernel's rdma_rxe has per-namespace sockets (run on Debian's 6.1)",
        );
        return;
    }
    let n = VmNode::start_with(&config(&facts.pf), cni()).await;
    let pod = netns_pod("old-kernel", &[(BW, "100M")]);
    assert_refused(n, &facts, pod, "rxe_ns_pernet_sk4").await;
}

#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh --kernel sid 'bash test/vm/run.sh'"]
async fn twenty_cycles_leak_no_netdev_address_or_rdma_device() {
    let test = "twenty_cycles_leak_no_netdev_address_or_rdma_device";
    require_vm_node();
    let facts = node_facts();
    if !rxe_per_netns() {
        skip(
            test,
            "this kernel's rdma_rxe has no per-namespace sockets (run with --kernel sid)",
        );
        return;
    }
    let n = VmNode::start_with(&config(&facts.pf), cni()).await;
    let cri = n.cd.cri();
    let t0 = Instant::now();
    for i in 0..20 {
        let (p, c) = n
            .pod(netns_pod(&format!("cycle-{i}"), &[]))
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {}", e.message()));
        let rec = allocation(&n.spec(&c).await);
        // The lowest free address every time: nothing stays booked.
        assert_eq!(rec.address.as_deref(), Some("10.77.0.10/24"), "cycle {i}");
        cri.stop_and_remove_pod(&p).await.unwrap();
        assert_eq!(n.ledger(), vec![], "cycle {i}: {}", n.plugin_log());
    }
    note(&format!(
        "20 own-netns pod cycles (VF moved in with rxe re-created, and back) took {:?}",
        t0.elapsed()
    ));
    assert_all_home(&facts);
}

#[tokio::test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh --kernel sid 'bash test/vm/run.sh'"]
async fn in_exclusive_mode_a_soft_roce_pod_is_refused_with_the_reason() {
    // The kernel neither moves an rxe device to another namespace (EOPNOTSUPP) nor keeps one
    // created in a pod's namespace there in exclusive mode (docs/vm-testbed.md, fact e), so the
    // pod could not see its device: the plugin refuses its container before anything moves.
    let test = "in_exclusive_mode_a_soft_roce_pod_is_refused_with_the_reason";
    require_vm_node();
    let facts = node_facts();
    let _mode = match ExclusiveMode::set() {
        Ok(m) => m,
        Err(e) => {
            return skip(
                test,
                &format!("cannot switch RDMA to exclusive netns mode: {e}"),
            )
        }
    };
    let n = VmNode::start_with(&config(&facts.pf), cni()).await;
    let pod = netns_pod("exclusive", &[]);
    assert_refused(n, &facts, pod, "exclusive RDMA netns mode").await;
}

/// `rdma system set netns exclusive` for the test's length. The kernel refuses a mode change
/// while any namespace but the initial one exists (EBUSY), and tears namespaces down lazily, so
/// both directions retry for a while.
struct ExclusiveMode;

impl ExclusiveMode {
    fn set() -> Result<ExclusiveMode, String> {
        set_mode("exclusive").map(|_| ExclusiveMode)
    }
}

impl Drop for ExclusiveMode {
    fn drop(&mut self) {
        if let Err(e) = set_mode("shared") {
            eprintln!("could not restore RDMA shared netns mode: {e}");
        }
    }
}

fn set_mode(mode: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = run("rdma", &["system", "set", "netns", mode]);
        if code == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("rdma system set netns {mode}: {out}{err}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
