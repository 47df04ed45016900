//! ConRDMA's RDMA netlink client (conrdma_node::rdma_netlink) against the VM's real kernel: the rxe
//! devices hack/vm/node-setup.sh bound to the igb VFs, checked against the node facts and against
//! iproute2's `rdma` tool.
//!
//! Run inside the VM only: `sudo CONRDMA_VM_TEST_FILTER=rdma_netlink hack/vm-node.sh 'bash test/vm/run.sh'`.
//! The tests that change devices or the netns mode put them back as they found them, even when
//! they fail (guards), so later tests in the same VM see the node the facts describe.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use conrdma_api::ErrorClass;
use conrdma_node::rdma_netlink::{NetnsMode, RdmaLinkInfo, RdmaNetlink};
use conrdma_node::CharDev;
use conrdma_vm_tests::*;
use serde_json::Value;

/// Under QEMU TCG device creation and namespace teardown take a while.
const WAIT: Duration = Duration::from_secs(60);

fn nl() -> RdmaNetlink {
    RdmaNetlink::open().expect("NETLINK_RDMA socket in the VM (ib_core is loaded)")
}

fn find<'a>(links: &'a [RdmaLinkInfo], name: &str) -> Option<&'a RdmaLinkInfo> {
    links.iter().find(|l| l.name == name)
}

/// `rdma -j dev show`: name -> index, as iproute2 sees it.
fn rdma_tool_devices() -> Vec<(String, u64)> {
    let (code, out, err) = run("rdma", &["-j", "dev", "show"]);
    assert_eq!(code, 0, "rdma -j dev show: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("rdma -j ({e}): {out}"));
    v.as_array()
        .unwrap_or_else(|| panic!("rdma -j dev show is not a list: {out}"))
        .iter()
        .map(|d| {
            (
                d["ifname"].as_str().unwrap_or_default().to_string(),
                d["ifindex"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !ok() {
        assert!(
            Instant::now() < end,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_lists_every_rxe_with_its_netdev() {
    require_vm_node();
    let facts = node_facts();
    let nl = nl();
    let links = nl.links().expect("links()");
    for vf in &facts.vfs {
        let l = find(&links, &vf.rdma)
            .unwrap_or_else(|| panic!("{} (VF {}) not listed: {links:?}", vf.rdma, vf.index));
        assert_eq!(
            l.netdev.as_deref(),
            Some(vf.netdev.as_str()),
            "{} is bound to {}",
            vf.rdma,
            vf.netdev
        );
    }
    // The same devices and indices as iproute2 reports.
    let tool = rdma_tool_devices();
    let mut ours: Vec<(String, u64)> = links
        .iter()
        .map(|l| (l.name.clone(), u64::from(l.index)))
        .collect();
    let mut theirs = tool.clone();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "links() against rdma -j dev show");
    // Every listed device exists in sysfs.
    for l in &links {
        assert!(
            Path::new("/sys/class/infiniband").join(&l.name).exists(),
            "{} has no /sys/class/infiniband entry",
            l.name
        );
    }
    note(&format!("rdma netlink links(): {links:?}"));
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_netns_mode_is_shared_by_default() {
    require_vm_node();
    assert_eq!(nl().netns_mode().expect("netns_mode()"), NetnsMode::Shared);
    let (code, out, err) = run("rdma", &["system", "show"]);
    assert_eq!(code, 0, "rdma system show: {err}");
    assert!(out.contains("netns shared"), "rdma system show: {out}");
}

/// Puts an rxe device back on its VF under its original name, whatever the test left.
struct RestoreRxe {
    name: String,
    netdev: String,
    temp: String,
}

impl Drop for RestoreRxe {
    fn drop(&mut self) {
        let Ok(nl) = RdmaNetlink::open() else { return };
        let links = nl.links().unwrap_or_default();
        if find(&links, &self.name).is_some() {
            return;
        }
        if find(&links, &self.temp).is_some() {
            let _ = nl.delete_link(&self.temp);
        }
        if let Err(e) = nl.add_rxe(&self.name, &self.netdev) {
            eprintln!("restoring {} on {}: {e}", self.name, self.netdev);
        }
    }
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_recreates_the_rxe_of_a_vf() {
    require_vm_node();
    let facts = node_facts();
    let vf = facts.vfs.last().expect("the node has VFs").clone();
    let other = facts.vfs.first().expect("the node has VFs").clone();
    let temp = "conrdma-nl0";
    let _restore = RestoreRxe {
        name: vf.rdma.clone(),
        netdev: vf.netdev.clone(),
        temp: temp.into(),
    };
    let nl = nl();

    // A netdev that already has an rxe device: rxe allows one per netdev.
    let e = nl.add_rxe(temp, &vf.netdev).unwrap_err();
    note(&format!("rdma link add on a netdev that has an rxe: {e}"));
    assert_eq!(e.class(), ErrorClass::InvalidInput, "{e}");
    assert!(e.to_string().contains("(EEXIST"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("{} already has an rxe device", vf.netdev)),
        "{e}"
    );

    nl.delete_link(&vf.rdma).expect("delete_link");
    let links = nl.links().unwrap();
    assert!(find(&links, &vf.rdma).is_none(), "{links:?}");
    assert!(!Path::new("/sys/class/infiniband").join(&vf.rdma).exists());
    let e = nl.delete_link(&vf.rdma).unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("no RDMA device {}", vf.rdma)),
        "{e}"
    );

    // A name another device has, on the now free netdev.
    if other.rdma != vf.rdma {
        let e = nl.add_rxe(&other.rdma, &vf.netdev).unwrap_err();
        note(&format!("rdma link add with a taken name: {e}"));
        assert_eq!(e.class(), ErrorClass::InvalidInput, "{e}");
        assert!(
            e.to_string().contains(&format!(
                "an RDMA device named {} already exists",
                other.rdma
            )),
            "{e}"
        );
    }

    // Under another name, then back under its own.
    nl.add_rxe(temp, &vf.netdev)
        .expect("add_rxe under a new name");
    let links = nl.links().unwrap();
    let l = find(&links, temp).unwrap_or_else(|| panic!("{temp} not listed: {links:?}"));
    assert_eq!(l.netdev.as_deref(), Some(vf.netdev.as_str()));
    nl.delete_link(temp).expect("delete_link of the new name");
    nl.add_rxe(&vf.rdma, &vf.netdev)
        .expect("add_rxe under its own name");
    let links = nl.links().unwrap();
    let l = find(&links, &vf.rdma).unwrap_or_else(|| panic!("{} not listed: {links:?}", vf.rdma));
    assert_eq!(l.netdev.as_deref(), Some(vf.netdev.as_str()));
    assert!(find(&links, temp).is_none(), "{links:?}");

    // Ready for the tests after this one: the port follows the VF link, uverbs comes back.
    let state = format!("/sys/class/infiniband/{}/ports/1/state", vf.rdma);
    wait_until(&format!("{state} ACTIVE"), || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("ACTIVE"))
    });
    let uverbs = std::fs::read_dir("/sys/class/infiniband_verbs")
        .unwrap()
        .flatten()
        .find(|u| {
            std::fs::read_to_string(u.path().join("ibdev")).is_ok_and(|d| d.trim() == vf.rdma)
        })
        .map(|u| u.file_name().to_string_lossy().into_owned());
    note(&format!(
        "recreated {} on {}: uverbs {uverbs:?} (node facts had {})",
        vf.rdma, vf.netdev, vf.uverbs
    ));
    assert!(uverbs.is_some(), "{} has no uverbs device", vf.rdma);
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_add_rxe_on_a_missing_netdev_names_it() {
    require_vm_node();
    let nl = nl();
    let e = nl.add_rxe("conrdma-nl1", "nope-nl0").unwrap_err();
    note(&format!("rdma link add on a missing netdev: {e}"));
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.starts_with("rdma link add conrdma-nl1 type rxe netdev nope-nl0 failed (ENODEV"),
        "{text}"
    );
    assert!(
        text.ends_with("no network device nope-nl0 in this network namespace"),
        "{text}"
    );
    assert!(find(&nl.links().unwrap(), "conrdma-nl1").is_none());
}

const NS: &str = "conrdma-nl";

/// Deletes our network namespace and puts the RDMA netns mode back to shared. Namespaces are torn
/// down asynchronously and the kernel refuses a mode change (EBUSY) while any other than the
/// initial one exists, so it retries.
struct RestoreShared;

impl Drop for RestoreShared {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", NS]);
        let end = Instant::now() + WAIT;
        loop {
            let (code, _, err) = run("rdma", &["system", "set", "netns", "shared"]);
            if code == 0 || Instant::now() > end {
                if code != 0 {
                    eprintln!("could not restore the shared RDMA netns mode: {err}");
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn add_netns() -> File {
    let (code, _, err) = run("ip", &["netns", "add", NS]);
    assert_eq!(code, 0, "ip netns add {NS}: {err}");
    File::open(format!("/run/netns/{NS}")).expect("the netns file ip netns add made")
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_moving_a_device_needs_exclusive_mode() {
    require_vm_node();
    let facts = node_facts();
    let vf = facts.vfs.last().expect("the node has VFs").clone();
    let _restore = RestoreShared;
    let nl = nl();
    let init_ns = File::open("/proc/self/ns/net").unwrap();

    // Shared mode: a socket made inside another namespace sees every device, but no netdev (the
    // VFs stay in the initial namespace); moving is refused and the error says why.
    assert_eq!(nl.netns_mode().unwrap(), NetnsMode::Shared);
    let ns = add_netns();
    let inside = RdmaNetlink::open_in(ns.as_fd()).expect("open_in the new namespace");
    let seen = inside.links().unwrap();
    for f in &facts.vfs {
        let l = find(&seen, &f.rdma)
            .unwrap_or_else(|| panic!("shared mode: {} not seen from {NS}: {seen:?}", f.rdma));
        assert_eq!(l.netdev, None, "{} netdev is not in {NS}", f.rdma);
    }
    let e = nl.move_to_netns(&vf.rdma, ns.as_fd()).unwrap_err();
    note(&format!("moving an RDMA device in shared netns mode: {e}"));
    assert_eq!(e.class(), ErrorClass::Precondition, "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "invalid node config (the kernel's RDMA subsystem): rdma dev set {} netns failed (EOPNOTSUPP",
            vf.rdma
        )) && e.to_string().contains("shared netns mode"),
        "{e}"
    );
    drop((inside, ns));
    let (code, _, err) = run("ip", &["netns", "del", NS]);
    assert_eq!(code, 0, "ip netns del {NS}: {err}");

    // Exclusive mode: possible only once no other namespace exists (ours is torn down lazily).
    let end = Instant::now() + WAIT;
    let last_err = loop {
        let (code, _, err) = run("rdma", &["system", "set", "netns", "exclusive"]);
        if code == 0 {
            break None;
        }
        if Instant::now() > end {
            break Some(err);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if let Some(err) = last_err {
        let (_, list, _) = run("ip", &["netns", "list"]);
        skip(
            "rdma_netlink_moving_a_device_needs_exclusive_mode",
            &format!(
                "the kernel keeps refusing the exclusive netns mode ({}); other namespaces: {list}",
                err.trim()
            ),
        );
        return;
    }
    assert_eq!(nl.netns_mode().unwrap(), NetnsMode::Exclusive);
    let ns = add_netns();
    let inside = RdmaNetlink::open_in(ns.as_fd()).expect("open_in the new namespace");
    assert_eq!(
        inside.links().unwrap(),
        vec![],
        "exclusive mode: a new namespace has no RDMA device"
    );
    match nl.move_to_netns(&vf.rdma, ns.as_fd()) {
        Ok(()) => {
            note(&format!(
                "{} moved to another netns in exclusive mode",
                vf.rdma
            ));
            let seen = inside.links().unwrap();
            let l = find(&seen, &vf.rdma)
                .unwrap_or_else(|| panic!("{} not in {NS} after the move: {seen:?}", vf.rdma));
            assert_eq!(l.netdev, None, "its netdev stayed behind");
            assert!(find(&nl.links().unwrap(), &vf.rdma).is_none());
            // Back, from a socket in the namespace that now has it.
            inside
                .move_to_netns(&vf.rdma, init_ns.as_fd())
                .expect("moving it back");
            let back = nl.links().unwrap();
            let l = find(&back, &vf.rdma)
                .unwrap_or_else(|| panic!("{} did not come back: {back:?}", vf.rdma));
            assert_eq!(l.netdev.as_deref(), Some(vf.netdev.as_str()));
        }
        Err(e) => {
            note(&format!(
                "moving an rxe device in exclusive netns mode: {e}"
            ));
            assert_eq!(e.class(), ErrorClass::Precondition, "{e}");
            assert!(
                e.to_string().contains("(EOPNOTSUPP")
                    && e.to_string().contains(&format!(
                        "the driver of {} cannot move between network namespaces",
                        vf.rdma
                    )),
                "{e}"
            );
            assert!(find(&nl.links().unwrap(), &vf.rdma).is_some());
        }
    }
}

/// The uverbs device sysfs gives RDMA device `rdma` now: /sys/class/infiniband_verbs/*/ibdev and
/// the MAJOR:MINOR in its dev file.
fn sysfs_uverbs(rdma: &str) -> Option<CharDev> {
    let dir = std::fs::read_dir("/sys/class/infiniband_verbs").ok()?;
    dir.flatten().find_map(|u| {
        let ibdev = std::fs::read_to_string(u.path().join("ibdev")).ok()?;
        if ibdev.trim() != rdma {
            return None;
        }
        let dev = std::fs::read_to_string(u.path().join("dev")).ok()?;
        let (major, minor) = dev.trim().split_once(':')?;
        Some(CharDev {
            name: u.file_name().to_string_lossy().into_owned(),
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    })
}

#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_uverbs_of_every_rxe_matches_the_node_facts() {
    require_vm_node();
    let facts = node_facts();
    let nl = nl();
    for vf in &facts.vfs {
        let got = nl
            .uverbs(&vf.rdma)
            .unwrap_or_else(|e| panic!("uverbs({}): {e}", vf.rdma));
        let mut want = CharDev {
            name: vf.uverbs.clone(),
            major: vf.major,
            minor: vf.minor,
        };
        // A test before this one (in the same VM) may have re-created the device: then sysfs, not
        // the node setup, knows its uverbs device.
        let now = sysfs_uverbs(&vf.rdma);
        if now.as_ref().is_some_and(|n| *n != want) {
            note(&format!(
                "{} was re-created since the node setup: uverbs {now:?}, was {want:?}",
                vf.rdma
            ));
            want = now.unwrap_or(want);
        }
        assert_eq!(got, want, "uverbs({}) against the node facts", vf.rdma);
        // The node in /dev has those numbers too.
        assert_eq!(
            char_dev_numbers(&got.dev_path()),
            Some((got.major, got.minor)),
            "{}",
            got.dev_path()
        );
    }
    note(&format!(
        "rdma netlink uverbs(): {}",
        facts
            .vfs
            .iter()
            .map(|vf| format!("{} -> {:?}", vf.rdma, nl.uverbs(&vf.rdma)))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let e = nl.uverbs("conrdma-nope").unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    assert!(
        e.to_string().starts_with(
            "reading the uverbs char device of conrdma-nope failed: no RDMA device conrdma-nope in this network namespace (it has: "
        ),
        "{e}"
    );
}

const UVERBS_NS: &str = "conrdma-nl-uverbs";
const UVERBS_TEMP: &str = "conrdma-nl2";

/// Brings a VF netdev back from [`UVERBS_NS`] into the test's namespace, up, with its rxe device
/// under its original name, and deletes the namespace: whatever the test left.
struct RestoreVf {
    rdma: String,
    netdev: String,
}

impl Drop for RestoreVf {
    fn drop(&mut self) {
        let own_ns = std::process::id().to_string();
        let (_, inside, _) = run("ip", &["-n", UVERBS_NS, "-o", "link", "show", &self.netdev]);
        if !inside.trim().is_empty() {
            let (code, _, err) = run(
                "ip",
                &[
                    "-n",
                    UVERBS_NS,
                    "link",
                    "set",
                    &self.netdev,
                    "netns",
                    &own_ns,
                ],
            );
            if code != 0 {
                eprintln!("moving {} back from {UVERBS_NS}: {err}", self.netdev);
            }
        }
        let _ = run("ip", &["link", "set", &self.netdev, "up"]);
        if let Ok(nl) = RdmaNetlink::open() {
            // The kernel drops rxe devices whose netdev leaves; this one may be on its way out.
            let end = Instant::now() + WAIT;
            while find(&nl.links().unwrap_or_default(), UVERBS_TEMP).is_some()
                && Instant::now() < end
            {
                let _ = nl.delete_link(UVERBS_TEMP);
                std::thread::sleep(Duration::from_millis(200));
            }
            if find(&nl.links().unwrap_or_default(), &self.rdma).is_none() {
                if let Err(e) = nl.add_rxe(&self.rdma, &self.netdev) {
                    eprintln!("restoring {} on {}: {e}", self.rdma, self.netdev);
                }
            }
        }
        let _ = run("ip", &["netns", "del", UVERBS_NS]);
    }
}

/// An rxe device made, from a socket inside a fresh namespace, on a VF netdev moved there: the
/// kernel reports its uverbs device to that socket (and, in shared mode, to ours).
#[test]
#[ignore = "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'"]
fn rdma_netlink_uverbs_of_an_rxe_made_in_another_netns() {
    require_vm_node();
    let facts = node_facts();
    let vf = facts.vfs.last().expect("the node has VFs").clone();
    let nl = nl();
    assert_eq!(nl.netns_mode().unwrap(), NetnsMode::Shared);
    let _restore = RestoreVf {
        rdma: vf.rdma.clone(),
        netdev: vf.netdev.clone(),
    };

    let (code, _, err) = run("ip", &["netns", "add", UVERBS_NS]);
    assert_eq!(code, 0, "ip netns add {UVERBS_NS}: {err}");
    let ns = File::open(format!("/run/netns/{UVERBS_NS}")).expect("the netns file");
    let (code, _, err) = run("ip", &["link", "set", &vf.netdev, "netns", UVERBS_NS]);
    assert_eq!(
        code, 0,
        "ip link set {} netns {UVERBS_NS}: {err}",
        vf.netdev
    );
    // The kernel unregisters the rxe device of a netdev that leaves (asynchronously).
    wait_until(&format!("{} to go with {}", vf.rdma, vf.netdev), || {
        find(&nl.links().unwrap(), &vf.rdma).is_none()
    });
    let e = nl.uverbs(&vf.rdma).unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");

    let inside = RdmaNetlink::open_in(ns.as_fd()).expect("open_in the new namespace");
    // Our namespace no longer has the netdev; the new one has.
    let e = nl.add_rxe(UVERBS_TEMP, &vf.netdev).unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
    inside
        .add_rxe(UVERBS_TEMP, &vf.netdev)
        .unwrap_or_else(|e| panic!("add_rxe inside {UVERBS_NS}: {e}"));
    let seen = inside.links().unwrap();
    let l = find(&seen, UVERBS_TEMP)
        .unwrap_or_else(|| panic!("{UVERBS_TEMP} not seen from {UVERBS_NS}: {seen:?}"));
    assert_eq!(l.netdev.as_deref(), Some(vf.netdev.as_str()));

    let got = inside
        .uverbs(UVERBS_TEMP)
        .unwrap_or_else(|e| panic!("uverbs({UVERBS_TEMP}) inside {UVERBS_NS}: {e}"));
    note(&format!(
        "an rxe made inside a netns on {}: uverbs {got:?}",
        vf.netdev
    ));
    assert!(got.name.starts_with("uverbs"), "{got:?}");
    assert_eq!(sysfs_uverbs(UVERBS_TEMP), Some(got.clone()), "sysfs");
    wait_until(&format!("{} (devtmpfs)", got.dev_path()), || {
        char_dev_numbers(&got.dev_path()) == Some((got.major, got.minor))
    });
    // Shared mode: the initial namespace sees the device, and the same char device.
    assert_eq!(nl.uverbs(UVERBS_TEMP).unwrap(), got);

    // Put everything back, checking each step (the guard repeats it if a step fails).
    inside.delete_link(UVERBS_TEMP).expect("delete_link inside");
    wait_until(&format!("{UVERBS_TEMP} to go"), || {
        find(&nl.links().unwrap(), UVERBS_TEMP).is_none()
    });
    drop(inside);
    let own_ns = std::process::id().to_string();
    let (code, _, err) = run(
        "ip",
        &["-n", UVERBS_NS, "link", "set", &vf.netdev, "netns", &own_ns],
    );
    assert_eq!(code, 0, "moving {} back: {err}", vf.netdev);
    let (code, _, err) = run("ip", &["link", "set", &vf.netdev, "up"]);
    assert_eq!(code, 0, "ip link set {} up: {err}", vf.netdev);
    nl.add_rxe(&vf.rdma, &vf.netdev)
        .expect("re-creating the VF's rxe under its own name");
    let state = format!("/sys/class/infiniband/{}/ports/1/state", vf.rdma);
    wait_until(&format!("{state} ACTIVE"), || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("ACTIVE"))
    });
    let back = nl
        .uverbs(&vf.rdma)
        .expect("uverbs of the re-created device");
    assert_eq!(sysfs_uverbs(&vf.rdma), Some(back.clone()));
    note(&format!(
        "re-created {} on {}: uverbs {back:?} (node facts had {} {}:{})",
        vf.rdma, vf.netdev, vf.uverbs, vf.major, vf.minor
    ));
    drop(ns);
    let (code, _, err) = run("ip", &["netns", "del", UVERBS_NS]);
    assert_eq!(code, 0, "ip netns del {UVERBS_NS}: {err}");
}
