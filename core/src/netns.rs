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
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tracing::{debug, warn};

use crate::error::{CoreError, ErrorClass, Result};
use crate::limiter::netlink::{ext_ack_message, KernelError};
use crate::network::Cidr;
use crate::rdma_netlink::RdmaNetlink;

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
            .map_err(|e| CoreError::io("opening", "/proc/thread-self/ns/net", e))?;
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
            Err(e) => return Err(CoreError::io("opening network namespace", netns, e)),
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
        Err(CoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn soft_error(name: &str, e: CoreError) -> CoreError {
    pod_error(
        format!("cannot create Soft-RoCE device {name} on the VF netdev: {e}"),
        ErrorClass::Precondition,
    )
}

fn pod_error(reason: String, class: ErrorClass) -> CoreError {
    CoreError::PodNetwork { reason, class }
}

fn socket_error(whose: &str, e: io::Error) -> CoreError {
    pod_error(
        format!("cannot open a netlink socket in {whose}'s network namespace: {e}"),
        ErrorClass::Internal,
    )
}

/// One rtnetlink step on `vf` failed.
fn step(vf: &HostLink, action: &str, e: &KernelError) -> CoreError {
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

/// A link as rtnetlink reports it.
#[derive(Debug, Clone, Copy)]
struct Link {
    index: u32,
    mtu: Option<u32>,
}

/// An rtnetlink socket bound to one network namespace.
struct Rt {
    sock: Socket,
    seq: u32,
}

impl Rt {
    fn here() -> io::Result<Rt> {
        Rt::from_socket(Socket::new(NETLINK_ROUTE)?)
    }

    fn inside(ns: BorrowedFd<'_>) -> io::Result<Rt> {
        let fd = ns.try_clone_to_owned()?;
        let sock = std::thread::spawn(move || -> io::Result<Socket> {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Socket::new(NETLINK_ROUTE)
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        Rt::from_socket(sock)
    }

    fn from_socket(mut sock: Socket) -> io::Result<Rt> {
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: older kernels lack these options.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Rt { sock, seq: 0 })
    }

    /// Sends one request with an ACK asked for; returns the link message it carried, if any.
    fn call(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Option<LinkMessage>, KernelError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(KernelError::from_io)?;
        let mut link = None;
        for _ in 0..64 {
            let (data, _) = self.sock.recv_from_full().map_err(KernelError::from_io)?;
            let mut rest = &data[..];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    break;
                }
                if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
                    if m.header.sequence_number == seq {
                        match m.payload {
                            NetlinkPayload::Error(e) => {
                                return match e.code {
                                    None => Ok(link),
                                    Some(code) => Err(KernelError {
                                        errno: code.get().abs(),
                                        ext_msg: ext_ack_message(m.header.flags, &e.header),
                                    }),
                                }
                            }
                            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                                link = Some(l)
                            }
                            _ => {}
                        }
                    }
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
            }
        }
        Err(KernelError {
            errno: 0,
            ext_msg: Some("no acknowledgement after 64 netlink messages".into()),
        })
    }

    /// The link named `name`, or `None` if this namespace has none.
    fn link(&mut self, name: &str) -> std::result::Result<Option<Link>, KernelError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.call(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(Some(l)) => Ok(Some(Link {
                index: l.header.index,
                mtu: l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                }),
            })),
            Ok(None) => Ok(None),
            Err(e) if e.errno == 19 => Ok(None), // ENODEV
            Err(e) => Err(e),
        }
    }

    /// RTM_SETLINK on `index` with `attrs`, and the link brought up or down if `up` says so.
    fn set_link(
        &mut self,
        index: u32,
        attrs: Vec<LinkAttribute>,
        up: Option<bool>,
    ) -> std::result::Result<(), KernelError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = up {
            msg.header.change_mask = LinkFlags::Up;
            if up {
                msg.header.flags = LinkFlags::Up;
            }
        }
        msg.attributes = attrs;
        self.call(RouteNetlinkMessage::SetLink(msg), 0).map(|_| ())
    }

    /// `ip addr replace ADDR dev INDEX`.
    fn add_address(&mut self, index: u32, addr: Cidr) -> std::result::Result<(), KernelError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix;
        msg.header.index = index;
        let ip = IpAddr::V4(addr.addr);
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        msg.attributes
            .push(AddressAttribute::Broadcast(addr.broadcast()));
        self.call(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// `ip route replace DST via GW dev INDEX`.
    fn add_route(
        &mut self,
        index: u32,
        dst: Cidr,
        gw: Ipv4Addr,
    ) -> std::result::Result<(), KernelError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = dst.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                dst.network(),
            )));
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.call(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
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
                "-n", &s.host, "link", "add", "vfx0", "mtu", "1400", "type", "veth", "peer",
                "name", "vfx0p",
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
}
