//! Moving a pod's VF netdev (and the RDMA device that must follow it) into the pod's network
//! namespace and back, over rtnetlink and RDMA netlink.
//!
//! Every step is idempotent and starts by looking where the netdev is now, so a step cut short by
//! a crash is finished by running it again: attach finds a netdev already in the pod and carries
//! on; detach finds it in the pod, on the host under the pod's interface name (the kernel returns
//! physical netdevs to the initial namespace when a namespace dies), under its original name, or
//! under whatever name sysfs gives its PCI function.
//!
//! A netlink socket stays in the namespace it was created in, so sockets for a pod's namespace
//! are made on a short-lived thread that enters it; no thread of the caller ever changes
//! namespace.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use netlink_packet_route::link::LinkAttribute;
use tracing::{debug, warn};

mod rtnl;
#[cfg(test)]
mod tests;

use rtnl::Rt;

use crate::error::{ErrorClass, NodeError, Result};
use crate::limiter::netlink::KernelError;
use crate::rdma_netlink::RdmaNetlink;
use conrdma_api::network::Cidr;

/// The VF as the host knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    /// The netdev's name on the host (discovery's name for it).
    pub name: String,
    /// The VF's PCI address: sysfs finds its netdev under any name.
    pub pci: String,
}

/// What the VF becomes inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub ifname: String,
    pub address: Cidr,
    pub mtu: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<Cidr>,
}

/// How the VF's RDMA device follows its netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdmaFollow {
    /// Shared netns mode with a device that belongs to the PCI function (mlx5): every namespace
    /// sees it; nothing to do.
    Shared,
    /// Soft-RoCE: bound to the netdev, dropped by the kernel when the netdev changes namespace,
    /// so it is re-created under the same name wherever the netdev goes.
    Soft { name: String },
    /// Exclusive netns mode: the device itself moves with the netdev (RDMA netlink).
    Exclusive { name: String },
}

/// Where the host side stood before the move, to put back on return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The netdev's MTU on the host (`None`: it was already in the pod).
    pub host_mtu: Option<u32>,
    /// The uverbs node of the Soft-RoCE device re-created in the pod, as the pod's namespace sees
    /// it (the host's sysfs does not show it in exclusive netns mode).
    pub soft_uverbs: Option<crate::discovery::CharDev>,
}

/// How a return ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The netdev is on the host under its own name, down, without addresses.
    Returned,
    /// The netdev exists nowhere this node can see (a virtual stand-in destroyed with its
    /// namespace); nothing is left to return.
    Missing,
}

/// The kernel boundary of the pod-network step: the plugin talks to this, tests run the real one
/// against veth stand-ins.
pub trait PodNetworking: Send + Sync {
    /// The VF netdev's MTU while it is on the host (`None`: not on the host), read before the
    /// move so it can be put back even if the move is cut short.
    fn host_mtu(&self, vf: &HostLink) -> Result<Option<u32>>;

    fn attach(
        &self,
        netns: &Path,
        vf: &HostLink,
        pod: &PodLink,
        rdma: &RdmaFollow,
    ) -> Result<Attached>;

    fn detach(
        &self,
        netns: &Path,
        vf: &HostLink,
        ifname: &str,
        host_mtu: Option<u32>,
        rdma: &RdmaFollow,
    ) -> Result<Detached>;
}

/// The real thing: rtnetlink and RDMA netlink, with sysfs under `sysfs_root` to find a VF's
/// netdev by PCI address.
#[derive(Debug, Clone)]
pub struct NetlinkNetworking {
    pub sysfs_root: PathBuf,
}

impl NetlinkNetworking {
    pub fn new(sysfs_root: &Path) -> NetlinkNetworking {
        NetlinkNetworking {
            sysfs_root: sysfs_root.to_path_buf(),
        }
    }

    /// The VF's current netdev name on the host according to sysfs.
    fn sysfs_name(&self, pci: &str) -> Option<String> {
        let dir = self
            .sysfs_root
            .join("sys/bus/pci/devices")
            .join(pci)
            .join("net");
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .find_map(|e| e.file_name().into_string().ok())
    }
}

impl PodNetworking for NetlinkNetworking {
    fn host_mtu(&self, vf: &HostLink) -> Result<Option<u32>> {
        let mut host = Rt::here().map_err(|e| socket_error("the host", e))?;
        Ok(host
            .link(&vf.name)
            .map_err(|e| step(vf, "reading", &e))?
            .and_then(|l| l.mtu))
    }

    fn attach(
        &self,
        netns: &Path,
        vf: &HostLink,
        pod: &PodLink,
        rdma: &RdmaFollow,
    ) -> Result<Attached> {
        if let RdmaFollow::Soft { name } = rdma {
            rxe_per_netns(name)?;
        }
        let ns = open_netns(netns)?;
        let mut host = Rt::here().map_err(|e| socket_error("the host", e))?;
        let mut inside = Rt::inside(ns.as_fd()).map_err(|e| socket_error("the pod", e))?;
        let mut host_mtu = None;
        if let Some(link) = host.link(&vf.name).map_err(|e| step(vf, "reading", &e))? {
            host_mtu = link.mtu;
            let clash = |name: &str| {
                pod_error(
                    format!(
                        "cannot move VF netdev {} into the pod's network namespace {}: an interface named {name} already exists there",
                        vf.name,
                        netns.display(),
                    ),
                    ErrorClass::Precondition,
                )
            };
            if inside
                .link(&pod.ifname)
                .map_err(|e| step(vf, "reading in the pod", &e))?
                .is_some()
            {
                return Err(clash(&pod.ifname));
            }
            if let RdmaFollow::Soft { name } = rdma {
                // The kernel would drop it at the move anyway; removing it first keeps its name
                // free for the device re-created in the pod.
                delete_soft(&RdmaNetlink::open()?, name)?;
            }
            // Moved under its own name and renamed inside: the kernel applies a name given with a
            // move only when the old one clashes.
            host.set_link(
                link.index,
                vec![LinkAttribute::NetNsFd(ns.as_raw_fd())],
                Some(false),
            )
            .map_err(|e| match e.errno {
                17 => clash(&vf.name),
                _ => step(vf, "moving into the pod", &e),
            })?;
            debug!(netdev = %vf.name, netns = %netns.display(), "VF netdev moved into the pod");
            crate::crash::point("netns-moved");
        }
        if inside
            .link(&pod.ifname)
            .map_err(|e| step(vf, "reading in the pod", &e))?
            .is_none()
        {
            if let Some(l) = inside
                .link(&vf.name)
                .map_err(|e| step(vf, "reading in the pod", &e))?
            {
                inside
                    .set_link(
                        l.index,
                        vec![LinkAttribute::IfName(pod.ifname.clone())],
                        Some(false),
                    )
                    .map_err(|e| step(vf, &format!("renaming to {} in the pod", pod.ifname), &e))?;
            }
        }
        let link = inside
            .link(&pod.ifname)
            .map_err(|e| step(vf, "reading in the pod", &e))?
            .ok_or_else(|| {
                pod_error(
                    format!(
                        "VF netdev {} ({}) is neither on the host nor in the pod's network namespace as {}",
                        vf.name, vf.pci, pod.ifname
                    ),
                    ErrorClass::Precondition,
                )
            })?;
        if let Some(mtu) = pod.mtu {
            inside
                .set_link(link.index, vec![LinkAttribute::Mtu(mtu)], None)
                .map_err(|e| step(vf, &format!("setting MTU {mtu} on"), &e))?;
        }
        inside
            .add_address(link.index, pod.address)
            .map_err(|e| step(vf, &format!("adding {} to", pod.address), &e))?;
        inside
            .set_link(link.index, Vec::new(), Some(true))
            .map_err(|e| step(vf, "bringing up", &e))?;
        if let Some(gw) = pod.gateway {
            for dst in &pod.routes {
                inside
                    .add_route(link.index, *dst, gw)
                    .map_err(|e| step(vf, &format!("routing {dst} via {gw} on"), &e))?;
            }
        }
        let mut soft_uverbs = None;
        match rdma {
            RdmaFollow::Shared => {}
            RdmaFollow::Soft { name } => {
                let rn = RdmaNetlink::open_in(ns.as_fd())?;
                if !rn.links()?.iter().any(|l| &l.name == name) {
                    rn.add_rxe(name, &pod.ifname)
                        .map_err(|e| soft_error(name, e))?;
                }
                soft_uverbs = Some(rn.uverbs(name)?);
            }
            RdmaFollow::Exclusive { name } => {
                let here = RdmaNetlink::open()?;
                if here.links()?.iter().any(|l| &l.name == name) {
                    here.move_to_netns(name, ns.as_fd())?;
                }
            }
        }
        Ok(Attached {
            host_mtu,
            soft_uverbs,
        })
    }

    fn detach(
        &self,
        netns: &Path,
        vf: &HostLink,
        ifname: &str,
        host_mtu: Option<u32>,
        rdma: &RdmaFollow,
    ) -> Result<Detached> {
        let mut host = Rt::here().map_err(|e| socket_error("the host", e))?;
        let me = File::open("/proc/thread-self/ns/net")
            .map_err(|e| NodeError::io("opening", "/proc/thread-self/ns/net", e))?;
        match File::open(netns) {
            Ok(ns) => {
                let mut inside = Rt::inside(ns.as_fd()).map_err(|e| socket_error("the pod", e))?;
                let mut found = None;
                for name in [ifname, vf.name.as_str()] {
                    if found.is_none() {
                        found = inside
                            .link(name)
                            .map_err(|e| step(vf, "reading in the pod", &e))?;
                    }
                }
                if let Some(link) = found {
                    match rdma {
                        RdmaFollow::Shared => {}
                        RdmaFollow::Soft { name } => {
                            delete_soft(&RdmaNetlink::open_in(ns.as_fd())?, name)?
                        }
                        RdmaFollow::Exclusive { name } => {
                            let rn = RdmaNetlink::open_in(ns.as_fd())?;
                            if rn.links()?.iter().any(|l| &l.name == name) {
                                rn.move_to_netns(name, me.as_fd())?;
                            }
                        }
                    }
                    let attrs = vec![
                        LinkAttribute::NetNsFd(me.as_raw_fd()),
                        LinkAttribute::IfName(vf.name.clone()),
                    ];
                    inside
                        .set_link(link.index, attrs, Some(false))
                        .map_err(|e| step(vf, "returning to the host", &e))?;
                }
            }
            // The namespace is gone: the kernel has already returned a physical netdev.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io("opening network namespace", netns, e)),
        }
        let here = match host.link(&vf.name).map_err(|e| step(vf, "reading", &e))? {
            Some(l) => Some(l),
            None => {
                let other = [Some(ifname.to_string()), self.sysfs_name(&vf.pci)];
                let mut found = None;
                for name in other.into_iter().flatten() {
                    if let Some(l) = host.link(&name).map_err(|e| step(vf, "reading", &e))? {
                        // Back under the pod's name (or the kernel's devN): rename it home.
                        host.set_link(
                            l.index,
                            vec![LinkAttribute::IfName(vf.name.clone())],
                            Some(false),
                        )
                        .map_err(|e| step(vf, &format!("renaming {name} back to"), &e))?;
                        warn!(netdev = %vf.name, found_as = %name, "VF netdev was left on the host under another name: renamed back");
                        found = Some(l);
                        break;
                    }
                }
                found
            }
        };
        let Some(link) = here else {
            return Ok(Detached::Missing);
        };
        let mut attrs = Vec::new();
        if let Some(mtu) = host_mtu {
            attrs.push(LinkAttribute::Mtu(mtu));
        }
        host.set_link(link.index, attrs, Some(false))
            .map_err(|e| step(vf, "resetting", &e))?;
        match rdma {
            RdmaFollow::Soft { name } => {
                let rn = RdmaNetlink::open()?;
                if !rn.links()?.iter().any(|l| &l.name == name) {
                    rn.add_rxe(name, &vf.name)
                        .map_err(|e| soft_error(name, e))?;
                }
            }
            RdmaFollow::Shared | RdmaFollow::Exclusive { .. } => {}
        }
        Ok(Detached::Returned)
    }
}

/// Refuses, before anything moves, a Soft-RoCE device on a kernel whose rdma_rxe has a single UDP
/// socket in the initial namespace (Linux 6.1): there an rxe created in a pod's namespace exists,
/// but RDMA CM inside the pod cannot reach peers (`RDMA_CM_EVENT_UNREACHABLE`). Kernels whose
/// rdma_rxe keeps one socket per namespace (Debian's 7.2) list `rxe_ns_pernet_sk4`.
fn rxe_per_netns(name: &str) -> Result<()> {
    if rxe_per_netns_supported() {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Err(pod_error(
        format!(
            "Soft-RoCE device {name} cannot follow its VF into the pod: rdma_rxe of Linux {} has no per-network-namespace sockets (no rxe_ns_pernet_sk4 in /proc/kallsyms), so RDMA CM in the pod could not reach peers; use a kernel whose rdma_rxe has them (Debian's 7.2 does, 6.1 does not), a hostNetwork pod, or a pool without [pool.network]",
            release.trim()
        ),
        ErrorClass::Precondition,
    ))
}

/// Whether the loaded rdma_rxe keeps one UDP socket per network namespace. Read once (the
/// symbol table is large, seconds to read under emulation): call it at startup, off the pod path.
pub fn rxe_per_netns_supported() -> bool {
    static PER_NETNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PER_NETNS.get_or_init(|| {
        std::fs::read_to_string("/proc/kallsyms").is_ok_and(|k| {
            k.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("rxe_ns_pernet_sk4"))
        })
    })
}

/// Opens a pod's network namespace file.
fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        pod_error(
            format!(
                "the pod's network namespace {} cannot be opened: {e}",
                path.display()
            ),
            ErrorClass::Precondition,
        )
    })
}

fn delete_soft(rn: &RdmaNetlink, name: &str) -> Result<()> {
    match rn.delete_link(name) {
        Ok(()) => Ok(()),
        Err(NodeError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn soft_error(name: &str, e: NodeError) -> NodeError {
    pod_error(
        format!("cannot create Soft-RoCE device {name} on the VF netdev: {e}"),
        ErrorClass::Precondition,
    )
}

fn pod_error(reason: String, class: ErrorClass) -> NodeError {
    NodeError::PodNetwork { reason, class }
}

fn socket_error(whose: &str, e: io::Error) -> NodeError {
    pod_error(
        format!("cannot open a netlink socket in {whose}'s network namespace: {e}"),
        ErrorClass::Internal,
    )
}

/// One rtnetlink step on `vf` failed.
fn step(vf: &HostLink, action: &str, e: &KernelError) -> NodeError {
    let class = match e.errno {
        1 | 13 => ErrorClass::Precondition, // EPERM, EACCES: the plugin lacks CAP_NET_ADMIN
        22 | 34 => ErrorClass::InvalidInput, // EINVAL, ERANGE: a value the device refuses
        _ => ErrorClass::Internal,
    };
    let what = match &e.ext_msg {
        Some(m) if !m.is_empty() => format!("{}: {m}", errno_text(e.errno)),
        _ => errno_text(e.errno),
    };
    pod_error(
        format!("{action} VF netdev {} ({}): {what}", vf.name, vf.pci),
        class,
    )
}

fn errno_text(errno: i32) -> String {
    if errno == 0 {
        return "no answer from the kernel".into();
    }
    let e = nix::errno::Errno::from_raw(errno);
    format!("{e} ({})", e.desc())
}
