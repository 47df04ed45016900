//! The moves on real rtnetlink, in throwaway namespaces standing in for the host and a pod.
use super::*;
use std::process::Command;

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

fn ok(args: &[&str]) -> String {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns standing in for a pod's, plus a veth `vfx0` (MTU 1400) standing in for a VF
/// on the "host", itself a fresh netns so nothing touches the real host. Removed on drop.
struct Scene {
    host: String,
    pod: String,
    net: NetlinkNetworking,
}

impl Scene {
    /// `None` (with a note) where the test cannot run: it needs root and iproute2.
    fn new(tag: &str) -> Option<Scene> {
        let usable = nix::unistd::geteuid().is_root()
            && Command::new("ip")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success());
        if !usable {
            eprintln!("skipped: needs root and iproute2");
            return None;
        }
        let pid = std::process::id();
        let s = Scene {
            host: format!("crdh-{tag}-{pid}"),
            pod: format!("crdp-{tag}-{pid}"),
            net: NetlinkNetworking::new(Path::new("/nonexistent")),
        };
        ok(&["netns", "add", &s.host]);
        ok(&["netns", "add", &s.pod]);
        ok(&[
            "-n", &s.host, "link", "add", "vfx0", "mtu", "1400", "type", "veth", "peer", "name",
            "vfx0p",
        ]);
        Some(s)
    }

    fn pod_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }

    /// Runs `f` with the networking on a thread inside the scene's host netns.
    fn on_host<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NetlinkNetworking) -> T + Send + 'static,
    ) -> T {
        let ns = File::open(PathBuf::from("/run/netns").join(&self.host)).unwrap();
        let net = self.net.clone();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f(&net)
        })
        .join()
        .unwrap()
    }

    fn attach(&self, netns: PathBuf, vf: &HostLink, pod: &PodLink) -> Result<Attached> {
        let (vf, pod) = (vf.clone(), pod.clone());
        self.on_host(move |n| n.attach(&netns, &vf, &pod, &RdmaFollow::Shared))
    }

    fn detach(&self, netns: PathBuf, mtu: Option<u32>) -> Result<Detached> {
        let vf = plan().0;
        self.on_host(move |n| n.detach(&netns, &vf, "rdma0", mtu, &RdmaFollow::Shared))
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.pod]);
        let _ = ip(&["netns", "del", &self.host]);
    }
}

fn plan() -> (HostLink, PodLink) {
    (
        HostLink {
            name: "vfx0".into(),
            pci: "0000:00:00.0".into(),
        },
        PodLink {
            ifname: "rdma0".into(),
            address: Cidr::parse("10.77.0.9/24").unwrap(),
            mtu: Some(1300),
            gateway: Some([10, 77, 0, 1].into()),
            routes: vec![Cidr::parse("10.78.0.0/16").unwrap()],
        },
    )
}

#[test]
fn a_netdev_moves_into_the_pod_with_its_address_and_comes_back_as_it_was() {
    let Some(s) = Scene::new("mv") else { return };
    let (vf, pod) = plan();
    let got = s.attach(s.pod_path(), &vf, &pod).unwrap();
    assert_eq!(got.host_mtu, Some(1400));
    let inside = ok(&["-n", &s.pod, "-o", "addr", "show", "dev", "rdma0"]);
    assert!(inside.contains("10.77.0.9/24"), "{inside}");
    let link = ok(&["-n", &s.pod, "link", "show", "rdma0"]);
    assert!(link.contains("mtu 1300") && link.contains("UP"), "{link}");
    let routes = ok(&["-n", &s.pod, "route", "show"]);
    assert!(
        routes.contains("10.78.0.0/16 via 10.77.0.1 dev rdma0"),
        "{routes}"
    );
    assert!(!ip(&["-n", &s.host, "link", "show", "vfx0"])
        .status
        .success());
    // Attaching again (a retry after a crash) finds it in the pod and changes nothing.
    assert_eq!(s.attach(s.pod_path(), &vf, &pod).unwrap().host_mtu, None);

    assert_eq!(
        s.detach(s.pod_path(), Some(1400)).unwrap(),
        Detached::Returned
    );
    let host = ok(&["-n", &s.host, "link", "show", "vfx0"]);
    assert!(host.contains("mtu 1400") && !host.contains(",UP"), "{host}");
    let addrs = ok(&["-n", &s.host, "-o", "-4", "addr", "show", "dev", "vfx0"]);
    assert!(addrs.trim().is_empty(), "{addrs}");
    // Returning twice is a no-op.
    assert_eq!(s.detach(s.pod_path(), None).unwrap(), Detached::Returned);
}

#[test]
fn a_netdev_cut_off_between_move_and_rename_is_found_both_ways() {
    let Some(s) = Scene::new("half") else { return };
    let (vf, pod) = plan();
    // In the pod under its host name: what a crash right after the move leaves.
    ok(&["-n", &s.host, "link", "set", "vfx0", "netns", &s.pod]);
    s.attach(s.pod_path(), &vf, &pod).unwrap();
    assert!(ok(&["-n", &s.pod, "-o", "addr", "show", "dev", "rdma0"]).contains("10.77.0.9/24"));
    ok(&["-n", &s.pod, "link", "set", "rdma0", "name", "vfx0"]);
    assert_eq!(s.detach(s.pod_path(), None).unwrap(), Detached::Returned);
    assert!(ip(&["-n", &s.host, "link", "show", "vfx0"])
        .status
        .success());
}

#[test]
fn a_netdev_left_renamed_on_the_host_is_renamed_back_and_a_lost_one_is_missing() {
    let Some(s) = Scene::new("rn") else { return };
    ok(&["-n", &s.host, "link", "set", "vfx0", "name", "rdma0"]);
    let gone = PathBuf::from("/run/netns/conrdma-no-such-netns");
    assert_eq!(s.detach(gone.clone(), None).unwrap(), Detached::Returned);
    assert!(ip(&["-n", &s.host, "link", "show", "vfx0"])
        .status
        .success());
    ok(&["-n", &s.host, "link", "del", "vfx0"]);
    assert_eq!(s.detach(gone, None).unwrap(), Detached::Missing);
}

#[test]
fn soft_roce_is_refused_before_anything_moves_where_rxe_has_no_per_netns_sockets() {
    let Some(s) = Scene::new("rxe") else { return };
    if rxe_per_netns("rxe0").is_ok() {
        eprintln!(
            "skipped: this kernel's rdma_rxe has per-namespace sockets (the VM tier covers it)"
        );
        return;
    }
    let (vf, pod) = plan();
    let e = s
        .on_host(move |n| {
            n.attach(
                &PathBuf::from("/run/netns/unused"),
                &vf,
                &pod,
                &RdmaFollow::Soft {
                    name: "rxe0".into(),
                },
            )
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("rxe0") && msg.contains("rxe_ns_pernet_sk4"),
        "{msg}"
    );
    assert_eq!(e.class(), ErrorClass::Precondition);
    assert!(ip(&["-n", &s.host, "link", "show", "vfx0"])
        .status
        .success());
}

#[test]
fn refusals_name_the_netdev_and_the_reason_and_move_nothing() {
    let Some(s) = Scene::new("rf") else { return };
    let (vf, pod) = plan();
    // The pod already has an rdma0: the move is refused and the VF stays home.
    ok(&[
        "-n", &s.pod, "link", "add", "rdma0", "type", "veth", "peer", "name", "x0",
    ]);
    let e = s.attach(s.pod_path(), &vf, &pod).unwrap_err().to_string();
    assert!(e.contains("vfx0") && e.contains("already exists"), "{e}");
    assert!(ip(&["-n", &s.host, "link", "show", "vfx0"])
        .status
        .success());
    // No such netdev anywhere.
    let other = HostLink {
        name: "vfnone0".into(),
        ..vf.clone()
    };
    let p2 = PodLink {
        ifname: "rdma1".into(),
        ..pod.clone()
    };
    let e = s.attach(s.pod_path(), &other, &p2).unwrap_err().to_string();
    assert!(
        e.contains("vfnone0") && e.contains("neither on the host"),
        "{e}"
    );
    // A namespace that does not exist.
    let none = PathBuf::from("/run/netns/conrdma-none");
    let e = s.attach(none, &vf, &pod).unwrap_err().to_string();
    assert!(e.contains("conrdma-none") && !e.contains('\n'), "{e}");
}
