//! Admission, VF choice and durability of the ledger, with real files in a temp state dir.

use std::collections::HashSet;

use conrdma_api::allocation::RdmaCgroupLimit;
use conrdma_api::rate::Rate;
use conrdma_api::request::{annotations, Request};
use conrdma_node::config::NodeConfig;
use conrdma_node::discovery::discover;
use conrdma_node::error::ErrorClass;
use conrdma_node::inventory::Inventory;
use conrdma_node::ledger::{Ledger, NetPhase, PodRef};
use conrdma_node::simulate::{build, Binding, SimOptions};

fn inventory(pfs: u32, vfs: u32, speed: &str, cfg: &str) -> (tempfile::TempDir, Inventory) {
    let dir = tempfile::tempdir().unwrap();
    let opts = SimOptions {
        pfs,
        vfs_per_pf: vfs,
        speed: Rate::parse(speed).unwrap(),
        binding: Binding::Pci,
        mknod: false,
    };
    build(dir.path(), &opts).unwrap();
    let cfg = NodeConfig::from_toml(cfg, "test").unwrap();
    let inv = Inventory::build(&discover(dir.path()).unwrap(), &cfg);
    (dir, inv)
}

fn pod(n: usize) -> PodRef {
    PodRef {
        id: format!("sandbox-{n}"),
        uid: format!("uid-{n}"),
        namespace: "default".into(),
        name: format!("pod-{n}"),
    }
}

fn req(pairs: &[(&str, &str)]) -> Request {
    Request::from_annotations(&annotations(pairs))
        .unwrap()
        .unwrap()
}

#[test]
fn admits_up_to_line_rate_then_refuses_with_the_figures() {
    let (_sys, inv) = inventory(
        1,
        8,
        "100G",
        "[[pool]]\nname = \"fabric-a\"\npfs = [\"ens1f0\"]",
    );
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    for (i, bw) in ["25G", "25G", "25G", "10G"].iter().enumerate() {
        let (rec, fresh) = l
            .admit(&inv, &pod(i), &req(&[("bandwidth", bw)]), |_| {})
            .unwrap();
        assert!(fresh);
        assert_eq!(rec.pool, "fabric-a");
        assert_eq!(rec.vf, i as u32, "lowest free VF first");
        assert_eq!(
            rec.limit_mbps, rec.guaranteed_mbps,
            "limit defaults to the guarantee"
        );
    }
    let err = l
        .admit(&inv, &pod(9), &req(&[("bandwidth", "40G")]), |_| {})
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Exhausted);
    assert_eq!(
        err.to_string(),
        "pool fabric-a: 15Gbps of 100Gbps guaranteed bandwidth left (85Gbps held by 4 pods); pod asks 40Gbps"
    );
    assert!(l.get("sandbox-9").is_none(), "a refusal books nothing");
    // Exactly what is left still fits.
    l.admit(&inv, &pod(5), &req(&[("bandwidth", "15G")]), |_| {})
        .unwrap();
}

#[test]
fn same_pod_gets_the_same_vf_and_release_frees_it() {
    let (_sys, inv) = inventory(1, 2, "100G", "");
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let (a, _) = l
        .admit(&inv, &pod(1), &req(&[("bandwidth", "60G")]), |_| {})
        .unwrap();
    let (b, fresh) = l
        .admit(&inv, &pod(1), &req(&[("bandwidth", "60G")]), |_| {})
        .unwrap();
    assert!(!fresh);
    assert_eq!(a, b);
    assert!(l
        .admit(&inv, &pod(2), &req(&[("bandwidth", "60G")]), |_| {})
        .is_err());
    assert!(l.release("sandbox-1").unwrap().is_some());
    assert!(
        l.release("sandbox-1").unwrap().is_none(),
        "release is idempotent"
    );
    l.admit(&inv, &pod(2), &req(&[("bandwidth", "60G")]), |_| {})
        .unwrap();
}

#[test]
fn picks_the_pf_with_most_headroom_and_honours_pools() {
    let (_sys, inv) = inventory(
        3,
        4,
        "100G",
        "[[pool]]\nname = \"storage\"\npfs = [\"ens2f0\"]",
    );
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let (r1, _) = l
        .admit(&inv, &pod(1), &req(&[("bandwidth", "30G")]), |_| {})
        .unwrap();
    let (r2, _) = l
        .admit(&inv, &pod(2), &req(&[("bandwidth", "30G")]), |_| {})
        .unwrap();
    assert_ne!(r1.pf, r2.pf, "second pod goes to the emptier PF");
    // No pool asked: any pool will do, configured pools included.
    assert!(["storage", "default"].contains(&r1.pool.as_str()));
    let (r3, _) = l
        .admit(
            &inv,
            &pod(3),
            &req(&[("bandwidth", "1G"), ("pool", "storage")]),
            |_| {},
        )
        .unwrap();
    assert_eq!((r3.pool.as_str(), r3.pf.as_str()), ("storage", "ens2f0"));
    let err = l
        .admit(&inv, &pod(4), &req(&[("pool", "gpu")]), |_| {})
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert!(
        err.to_string().contains("pools here: storage, default"),
        "{err}"
    );
}

#[test]
fn best_effort_pods_need_a_free_vf_and_get_line_rate() {
    let (_sys, inv) = inventory(1, 1, "25G", "");
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let (r, _) = l
        .admit(&inv, &pod(1), &req(&[("pool", "default")]), |_| {})
        .unwrap();
    assert_eq!((r.guaranteed_mbps, r.limit_mbps), (0, 25_000));
    let err = l
        .admit(&inv, &pod(2), &req(&[("bandwidth-limit", "1G")]), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("no free VF (1 of 1 in use)"), "{err}");
}

#[test]
fn admission_ratio_caps_guarantees() {
    let (_sys, inv) = inventory(1, 4, "100G", "admission_ratio = 0.8");
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    assert!(l
        .admit(&inv, &pod(1), &req(&[("bandwidth", "81G")]), |_| {})
        .is_err());
    l.admit(&inv, &pod(1), &req(&[("bandwidth", "80G")]), |_| {})
        .unwrap();
}

#[test]
fn survives_reopen_and_locks_out_a_second_writer() {
    let (_sys, inv) = inventory(1, 4, "100G", "");
    let state = tempfile::tempdir().unwrap();
    {
        let mut l = Ledger::open(state.path()).unwrap();
        l.admit(&inv, &pod(1), &req(&[("bandwidth", "70G")]), |r| {
            r.record.rdma_cgroup = RdmaCgroupLimit::NotSet {
                reason: "note".into(),
            }
        })
        .unwrap();
        let err = Ledger::open(state.path()).err().unwrap().to_string();
        assert!(err.contains("locked by another process"), "{err}");
    }
    let mut l = Ledger::open(state.path()).unwrap();
    assert_eq!(
        l.get("sandbox-1").unwrap().record.rdma_cgroup,
        RdmaCgroupLimit::NotSet {
            reason: "note".into()
        }
    );
    assert!(
        l.admit(&inv, &pod(2), &req(&[("bandwidth", "40G")]), |_| {})
            .is_err(),
        "no double booking after restart"
    );
}

#[test]
fn corrupt_ledger_refuses_to_start() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("ledger.json"), "{not json").unwrap();
    let err = Ledger::open(state.path()).err().unwrap().to_string();
    assert!(
        err.contains("refusing to start rather than double-book"),
        "{err}"
    );
}

#[test]
fn reconcile_frees_gone_pods_and_adopts_recorded_ones() {
    let (_sys, inv) = inventory(1, 4, "100G", "");
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    l.admit(&inv, &pod(1), &req(&[("bandwidth", "10G")]), |_| {})
        .unwrap();
    let (r2, _) = l
        .admit(&inv, &pod(2), &req(&[("bandwidth", "10G")]), |_| {})
        .unwrap();
    // A second ledger elsewhere booked pod 3 on VF 2 (as if our state dir had been lost).
    let other = tempfile::tempdir().unwrap();
    let mut l2 = Ledger::open(other.path()).unwrap();
    l2.admit(&inv, &pod(8), &req(&[("bandwidth", "1G")]), |_| {})
        .unwrap();
    l2.admit(&inv, &pod(9), &req(&[("bandwidth", "1G")]), |_| {})
        .unwrap();
    let (r3, _) = l2
        .admit(&inv, &pod(3), &req(&[("bandwidth", "5G")]), |_| {})
        .unwrap();
    let found = vec![
        l2.get("sandbox-3").unwrap().clone(),
        // Claims pod 2's VF: a conflict, left alone.
        conrdma_node::ledger::Held {
            pod: pod(4),
            record: r2.clone(),
            plugin_enforced: false,
            net: None,
        },
    ];
    let live: HashSet<String> = ["sandbox-2", "sandbox-3", "sandbox-4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = l.reconcile(&live, found).unwrap();
    assert_eq!(
        out.released
            .iter()
            .map(|h| h.pod.clone())
            .collect::<Vec<_>>(),
        vec![pod(1)]
    );
    assert_eq!(out.adopted, vec![pod(3)]);
    assert_eq!(out.conflicts, vec![pod(4)]);
    assert_eq!(l.get("sandbox-3").unwrap().record, r3);
    drop(l);
    let l = Ledger::open(state.path()).unwrap();
    let mut ids: Vec<_> = l.held().map(|h| h.pod.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["sandbox-2", "sandbox-3"], "reconcile is persisted");
    let usage = l.usage(&inv);
    assert_eq!(
        (usage[0].guaranteed_mbps, usage[0].pods, usage[0].vfs_free),
        (15_000, 2, 2)
    );
}

#[test]
fn sweep_frees_pods_the_runtime_no_longer_lists_but_never_one_admitted_after_the_mark() {
    let (_sys, inv) = inventory(1, 4, "100G", "");
    let state = tempfile::tempdir().unwrap();
    {
        let mut l = Ledger::open(state.path()).unwrap();
        l.admit(&inv, &pod(1), &req(&[("bandwidth", "10G")]), |_| {})
            .unwrap();
    }
    // Reopened, as after a plugin restart: pod 1 was admitted by an earlier process.
    let mut l = Ledger::open(state.path()).unwrap();
    l.admit(&inv, &pod(2), &req(&[("bandwidth", "20G")]), |_| {})
        .unwrap();
    let mark = l.mark();
    // Admitted while the runtime was being asked: missing from its answer only because it is new.
    l.admit(&inv, &pod(3), &req(&[("bandwidth", "30G")]), |_| {})
        .unwrap();
    let live: HashSet<String> = ["sandbox-2".to_string()].into();

    let released = l.sweep(&live, mark).unwrap();
    let names: Vec<_> = released.iter().map(|h| h.pod.name.as_str()).collect();
    assert_eq!(names, ["pod-1"]);
    let mut left: Vec<_> = l.held().map(|h| h.pod.name.clone()).collect();
    left.sort();
    assert_eq!(left, ["pod-2", "pod-3"]);

    // The next sweep, with a mark after pod 3's admission, frees it if it is still not listed.
    let mark = l.mark();
    let released = l.sweep(&live, mark).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].pod.name, "pod-3");
    assert!(l.sweep(&live, l.mark()).unwrap().is_empty(), "idempotent");
    drop(l);
    let names: Vec<_> = Ledger::snapshot(state.path())
        .unwrap()
        .into_iter()
        .map(|h| h.pod.name)
        .collect();
    assert_eq!(names, ["pod-2"], "sweeps are persisted");
}

#[test]
fn ledger_files_are_readable_by_root_only() {
    use std::os::unix::fs::MetadataExt;
    let (_sys, inv) = inventory(1, 4, "100G", "");
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("run/conrdma/nri");
    let mut l = Ledger::open(&state).unwrap();
    l.admit(&inv, &pod(1), &req(&[("bandwidth", "10G")]), |_| {})
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&t.path().join("run")), 0o700);
    assert_eq!(mode(&state.join("ledger.json")), 0o600);
    assert_eq!(mode(&state.join("ledger.lock")), 0o600);
}

/// Found while writing the fuzz target `ledger_file`: a ledger whose records' guarantees sum past
/// u64::MAX (a corrupt or hand-edited file, or records adopted from container annotations) made
/// `usage`, `admit` and the report builder overflow (a panic with overflow checks, a wrapped,
/// too-small load without). The sums saturate: such a PF counts as full.
#[test]
fn guarantees_summing_past_u64_max_saturate() {
    let (_sys, inv) = inventory(1, 8, "100G", "");
    let state = tempfile::tempdir().unwrap();
    let record = |id: &str, vf: u32| {
        format!(
            r#""{id}":{{"pod":{{"id":"{id}","uid":"u-{id}","namespace":"n","name":"{id}"}},
               "record":{{"pool":"default","pf":"ens1f0","vf":{vf},"vf_pci":"0000:3b:00.{vf}",
               "rdma_device":"mlx5_{vf}","netdev":"ens1f0v{vf}","guaranteed_mbps":18446744073709551615,
               "limit_mbps":25000,"uverbs":"/dev/infiniband/uverbs{vf}"}}}}"#
        )
    };
    std::fs::write(
        state.path().join("ledger.json"),
        format!(
            r#"{{"version":1,"held":{{{},{}}}}}"#,
            record("a", 0),
            record("b", 1)
        ),
    )
    .unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let usage = l.usage(&inv);
    assert_eq!(usage[0].guaranteed_mbps, u64::MAX);
    assert_eq!((usage[0].pods, usage[0].vfs_free), (2, 6));
    let err = l
        .admit(&inv, &pod(1), &req(&[("bandwidth", "1G")]), |_| {})
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Exhausted, "{err}");
    // A pod without a guarantee only needs a free VF; the totals stay saturated.
    l.admit(&inv, &pod(2), &req(&[("bandwidth-limit", "1G")]), |_| {})
        .unwrap();
    assert_eq!(l.usage(&inv)[0].guaranteed_mbps, u64::MAX);
    let held: Vec<_> = l.held().map(|h| &h.record).collect();
    let report = conrdma_node::report::node_report("n", 0, &inv, held);
    assert_eq!(report.pools[0].pfs[0].guaranteed_mbps, u64::MAX);
}

const NET_POOL: &str = "[[pool]]\nname = \"fabric-a\"\npfs = [\"ens1f0\"]\n[pool.network]\nsubnet = \"10.77.0.0/24\"\nrange = \"10.77.0.10-10.77.0.12\"\ngateway = \"10.77.0.1\"\n[[pool]]\nname = \"plain\"\npfs = [\"ens1f1\"]";

fn netns(n: usize) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/var/run/netns/cni-{n}"))
}

#[test]
fn pods_in_their_own_netns_get_distinct_addresses_that_survive_a_reopen() {
    let (_sys, inv) = inventory(2, 8, "100G", NET_POOL);
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let ask = req(&[("pool", "fabric-a"), ("bandwidth", "1G")]);
    let mut got = Vec::new();
    for i in 0..2 {
        let (r, _) = l
            .admit_in(&inv, &pod(i), &ask, Some(&netns(i)), |_| {})
            .unwrap();
        assert_eq!(r.ifname.as_deref(), Some("rdma0"));
        got.push(r.address.unwrap());
    }
    assert_eq!(got, ["10.77.0.10/24", "10.77.0.11/24"]);
    let h = l.get("sandbox-0").unwrap();
    let net = h.net.as_ref().unwrap();
    assert_eq!((net.netns.clone(), net.phase), (netns(0), NetPhase::Booked));
    // A hostNetwork pod in the same pool keeps its VF on the host: no address.
    let (r, _) = l.admit_in(&inv, &pod(5), &ask, None, |_| {}).unwrap();
    assert_eq!(
        (r.address, r.ifname, l.get("sandbox-5").unwrap().net.clone()),
        (None, None, None)
    );
    // A pool without a network section never addresses.
    let plain = req(&[("pool", "plain")]);
    let (r, _) = l
        .admit_in(&inv, &pod(6), &plain, Some(&netns(6)), |_| {})
        .unwrap();
    assert_eq!(r.address, None);
    drop(l);
    let mut l = Ledger::open(state.path()).unwrap();
    // Reopened: the booked addresses are still taken; a freed one is handed out again.
    l.release("sandbox-0").unwrap();
    let (r, _) = l
        .admit_in(&inv, &pod(2), &ask, Some(&netns(2)), |_| {})
        .unwrap();
    assert_eq!(r.address.as_deref(), Some("10.77.0.10/24"));
}

#[test]
fn a_used_up_range_and_bad_static_addresses_are_refused_naming_why() {
    let (_sys, inv) = inventory(2, 8, "100G", NET_POOL);
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let ask = req(&[("pool", "fabric-a")]);
    for i in 0..3 {
        l.admit_in(&inv, &pod(i), &ask, Some(&netns(i)), |_| {})
            .unwrap();
    }
    let e = l
        .admit_in(&inv, &pod(3), &ask, Some(&netns(3)), |_| {})
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Exhausted);
    let msg = e.to_string();
    assert!(
        msg.contains("no free address in 10.77.0.10-10.77.0.12 (3 in use)"),
        "{msg}"
    );
    // Static: inside the subnet but outside the range is fine; a taken one, one outside the
    // subnet, the gateway, and one on a hostNetwork pod are refused.
    let fixed = |a: &str| req(&[("address", a)]);
    let (r, _) = l
        .admit_in(
            &inv,
            &pod(7),
            &fixed("10.77.0.200/24"),
            Some(&netns(7)),
            |_| {},
        )
        .unwrap();
    assert_eq!(
        (r.pool.as_str(), r.address.as_deref()),
        ("fabric-a", Some("10.77.0.200/24"))
    );
    for (a, ns, needle) in [
        (
            "10.77.0.200",
            Some(netns(8)),
            "already in use by pod default/pod-7",
        ),
        (
            "10.99.0.5/24",
            Some(netns(8)),
            "no pool has a network whose subnet holds 10.99.0.5",
        ),
        ("10.77.0.1", Some(netns(8)), "gateway"),
        ("10.77.0.5/24", None, "hostNetwork"),
    ] {
        let e = l
            .admit_in(&inv, &pod(8), &fixed(a), ns.as_deref(), |_| {})
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.class(), ErrorClass::InvalidInput, "{msg}");
        assert!(
            msg.contains("rdma.conrdma.io/address") && msg.contains(needle),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    assert!(l.get("sandbox-8").is_none(), "refusals book nothing");
}

#[test]
fn a_gone_pod_whose_vf_is_out_is_not_freed_until_it_is_returned() {
    let (_sys, inv) = inventory(2, 8, "100G", NET_POOL);
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let ask = req(&[("pool", "fabric-a")]);
    l.admit_in(&inv, &pod(1), &ask, Some(&netns(1)), |_| {})
        .unwrap();
    let none = HashSet::new();
    // Admitted during RunPodSandbox: not listed yet, so a sweep leaves it alone (and its VF where
    // it is) until the runtime has listed it once.
    assert!(l.gone_out(&none, l.mark()).is_empty());
    assert!(l.sweep(&none, l.mark()).unwrap().is_empty());
    let listed: HashSet<String> = ["sandbox-1".to_string()].into();
    assert!(l.sweep(&listed, l.mark()).unwrap().is_empty());
    let mark = l.mark();
    assert_eq!(l.gone_out(&none, mark).len(), 1);
    assert!(
        l.sweep(&none, mark).unwrap().is_empty(),
        "booked: VF may be in the pod"
    );
    l.update("sandbox-1", |h| {
        h.net.as_mut().unwrap().phase = NetPhase::InPod
    })
    .unwrap();
    assert!(l.sweep(&none, mark).unwrap().is_empty(), "in the pod");
    l.update("sandbox-1", |h| {
        h.net.as_mut().unwrap().phase = NetPhase::Returned
    })
    .unwrap();
    assert!(l.gone_out(&none, mark).is_empty());
    let freed = l.sweep(&none, mark).unwrap();
    assert_eq!(freed.len(), 1);
    assert_eq!(Ledger::snapshot(state.path()).unwrap(), vec![]);
}

#[test]
fn a_vf_lent_to_a_pod_stays_in_the_inventory_after_a_rescan_that_misses_it() {
    let (sys, inv) = inventory(2, 8, "100G", NET_POOL);
    let state = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(state.path()).unwrap();
    let (rec, _) = l
        .admit_in(
            &inv,
            &pod(1),
            &req(&[("pool", "fabric-a")]),
            Some(&netns(1)),
            |_| {},
        )
        .unwrap();
    // The host's sysfs stops listing the netdev of a VF whose netdev is in another namespace.
    let net_dir = std::fs::read_dir(sys.path().join("sys/bus/pci/devices"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("net").join(&rec.netdev))
        .find(|p| p.exists())
        .or_else(|| {
            let p = sys.path().join("sys/class/net").join(&rec.netdev);
            p.exists().then_some(p)
        })
        .expect("the VF's netdev in the simulated sysfs");
    let vf_dir = std::fs::canonicalize(&net_dir).unwrap();
    std::fs::remove_dir_all(&vf_dir).unwrap();
    let cfg = NodeConfig::from_toml(NET_POOL, "test").unwrap();
    let mut rescan = Inventory::build(&discover(sys.path()).unwrap(), &cfg);
    let count = |i: &Inventory| i.pf("ens1f0").unwrap().1.vfs.len();
    assert_eq!(count(&rescan), 7, "the rescan misses the lent VF");
    rescan.keep_lent(l.lent());
    assert_eq!(count(&rescan), 8);
    let (_, pf) = rescan.pf("ens1f0").unwrap();
    let back = pf.vfs.iter().find(|v| v.index == rec.vf).unwrap();
    assert_eq!(back.uverbs.dev_path(), rec.uverbs);
    // Once it is home, it is no longer kept artificially.
    l.update("sandbox-1", |h| {
        h.net.as_mut().unwrap().phase = NetPhase::Returned
    })
    .unwrap();
    assert_eq!(l.lent().count(), 0);
}
