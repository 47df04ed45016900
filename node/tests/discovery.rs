//! Discovery over real files: trees built by the simulated NIC in a temp dir, then damaged the ways
//! real sysfs can be odd.

use std::fs;

use conrdma_api::rate::Rate;
use conrdma_node::discovery::discover;
use conrdma_node::simulate::{build, pf_name, Binding, SimOptions};

fn sim(pfs: u32, vfs: u32, binding: Binding) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts = SimOptions {
        pfs,
        vfs_per_pf: vfs,
        speed: Rate::parse("100G").unwrap(),
        binding,
        mknod: false,
    };
    build(dir.path(), &opts).unwrap();
    dir
}

#[test]
fn finds_pfs_vfs_and_pci_bound_rdma_devices() {
    let dir = sim(2, 8, Binding::Pci);
    let node = discover(dir.path()).unwrap();
    assert_eq!(node.pfs.len(), 2);
    let pf = &node.pfs[0];
    assert_eq!(
        (pf.netdev.as_str(), pf.pci.as_str()),
        ("ens1f0", "0000:3b:00.0")
    );
    assert_eq!(
        (pf.speed_mbps, pf.total_vfs, pf.numa_node),
        (Some(100_000), 8, Some(0))
    );
    assert_eq!(pf.vfs.len(), 8);
    let vf = &pf.vfs[7];
    assert_eq!(
        (vf.index, vf.pci.as_str(), vf.netdev.as_deref()),
        (7, "0000:3b:01.0", Some("ens1f0v7"))
    );
    let rdma = vf.rdma.as_ref().unwrap();
    // PFs take mlx5_0 and mlx5_1 ... in discovery order of the simulated card.
    assert!(rdma.name.starts_with("mlx5_"));
    let uv = rdma.uverbs.as_ref().unwrap();
    assert_eq!(uv.major, 231);
    assert_eq!(uv.dev_path(), format!("/dev/infiniband/{}", uv.name));
    let cm = node.rdma_cm.unwrap();
    assert_eq!(
        (cm.major, cm.minor, cm.dev_path().as_str()),
        (10, 124, "/dev/infiniband/rdma_cm")
    );
    // Every VF's uverbs device is distinct.
    let mut minors: Vec<(i64, i64)> = node
        .pfs
        .iter()
        .flat_map(|p| &p.vfs)
        .map(|v| v.rdma.as_ref().unwrap().uverbs.as_ref().unwrap())
        .map(|u| (u.major, u.minor))
        .collect();
    minors.sort();
    minors.dedup();
    assert_eq!(minors.len(), 16);
}

#[test]
fn finds_netdev_bound_soft_roce_devices() {
    let dir = sim(1, 3, Binding::Netdev);
    let node = discover(dir.path()).unwrap();
    let names: Vec<_> = node.pfs[0]
        .vfs
        .iter()
        .map(|v| v.rdma.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["rxe0", "rxe1", "rxe2"]);
    assert_eq!(node.pfs[0].vfs[2].netdev.as_deref(), Some("ens1f0v2"));
    assert!(node.pfs[0]
        .vfs
        .iter()
        .all(|v| v.rdma.as_ref().unwrap().soft));
    let pci = discover(sim(1, 2, Binding::Pci).path()).unwrap();
    assert!(pci.pfs[0]
        .vfs
        .iter()
        .all(|v| !v.rdma.as_ref().unwrap().soft));
}

#[test]
fn a_soft_device_sysfs_also_hangs_under_the_vf_is_still_soft() {
    // Linux 7.x parents rxe to its netdev's PCI function: `<vf>/infiniband/rxe0` exists too.
    let dir = sim(1, 1, Binding::Netdev);
    let vf = fs::canonicalize(dir.path().join("sys/class/net/ens1f0/device/virtfn0")).unwrap();
    fs::create_dir_all(vf.join("infiniband/rxe0")).unwrap();
    let node = discover(dir.path()).unwrap();
    let rdma = node.pfs[0].vfs[0].rdma.as_ref().unwrap();
    assert_eq!((rdma.name.as_str(), rdma.soft), ("rxe0", true));
}

#[test]
fn soft_devices_without_parent_are_found_through_their_gid_table() {
    let dir = sim(1, 2, Binding::Netdev);
    for ib in ["rxe0", "rxe1"] {
        fs::remove_file(
            dir.path()
                .join("sys/class/infiniband")
                .join(ib)
                .join("parent"),
        )
        .unwrap();
    }
    let node = discover(dir.path()).unwrap();
    let names: Vec<_> = node.pfs[0]
        .vfs
        .iter()
        .map(|v| v.rdma.as_ref().map(|r| r.name.clone()))
        .collect();
    assert_eq!(names, [Some("rxe0".to_string()), Some("rxe1".to_string())]);
}

#[test]
fn more_than_32_uverbs_devices_use_the_dynamic_major() {
    let dir = sim(1, 40, Binding::Pci);
    let node = discover(dir.path()).unwrap();
    let last = node.pfs[0].vfs[39]
        .rdma
        .as_ref()
        .unwrap()
        .uverbs
        .clone()
        .unwrap();
    assert_ne!(last.major, 231);
    assert_eq!(node.pfs[0].vfs[9].index, 9, "virtfn10 sorts after virtfn9");
}

#[test]
fn odd_files_are_skipped_not_fatal() {
    let dir = sim(2, 2, Binding::Pci);
    let root = dir.path();
    // Link down: speed reads fail -> unknown speed.
    fs::write(root.join("sys/class/net/ens1f0/speed"), "-1\n").unwrap();
    // Garbage sriov_totalvfs on the second PF -> that PF is skipped.
    fs::write(
        root.join("sys/class/net/ens1f1/device/sriov_totalvfs"),
        "lots\n",
    )
    .unwrap();
    // A VF whose driver is unbound: no net/ dir, so no netdev and (PCI-bound) still an RDMA dev.
    let vf1 = fs::canonicalize(root.join("sys/class/net/ens1f0/device/virtfn1")).unwrap();
    fs::remove_dir_all(vf1.join("net")).unwrap();
    // A uverbs device with an unreadable dev file is skipped.
    let uv = fs::read_dir(root.join("sys/class/infiniband_verbs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name() == "uverbs2")
        .unwrap();
    fs::write(uv.path().join("dev"), "garbage").unwrap();
    let node = discover(root).unwrap();
    assert_eq!(node.pfs.len(), 1);
    assert_eq!(node.pfs[0].netdev, pf_name(0));
    assert_eq!(node.pfs[0].speed_mbps, None);
    assert_eq!(node.pfs[0].vfs[1].netdev, None);
}

#[test]
fn missing_sysfs_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = discover(dir.path()).unwrap_err().to_string();
    assert!(err.contains("sys/class/net"), "{err}");
}

#[test]
fn simulate_refuses_a_used_root() {
    let dir = sim(1, 1, Binding::Pci);
    let err = build(dir.path(), &SimOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a sys/ tree"), "{err}");
}
