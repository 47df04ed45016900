//! A small synchronous RDMA netlink client: the NETLINK_RDMA "nldev" requests the iproute2 `rdma`
//! tool sends, for listing RDMA devices, creating and deleting Soft-RoCE (rxe) links and moving a
//! device into a container's network namespace.
//!
//! - `rdma link show`: RDMA_NLDEV_CMD_GET dump, then one RDMA_NLDEV_CMD_PORT_GET dump per device
//!   (the kernel only dumps ports of one device at a time) for the netdev bound to port 1;
//! - `rdma link add NAME type rxe netdev NETDEV`: RDMA_NLDEV_CMD_NEWLINK;
//! - `rdma link delete NAME`: RDMA_NLDEV_CMD_DELLINK by device index;
//! - `rdma dev set NAME netns NS`: RDMA_NLDEV_CMD_SET with RDMA_NLDEV_NET_NS_FD;
//! - `rdma system show`: RDMA_NLDEV_CMD_SYS_GET, for the netns mode;
//! - the uverbs char device of a device, as libibverbs finds it: RDMA_NLDEV_CMD_GET_CHARDEV.
//!
//! No crate speaks this family, so messages are encoded here: a 16-byte nlmsghdr whose type is
//! `RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, op)`, no family header, then NLA TLVs aligned to 4 bytes,
//! strings NUL-terminated (the kernel's policy wants NLA_NUL_STRING).
//!
//! The kernel's refusals become one-line errors that name the device and say what the errno
//! means for that request, with the kernel's extended-ack text when it sends one.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_RDMA, Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::error::{NodeError, Result};

mod errors;
#[cfg(test)]
mod tests;
mod wire;

use errors::*;
use wire::*;

/// An RDMA device as `rdma link show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaLinkInfo {
    /// The kernel's device index (stable while the device exists).
    pub index: u32,
    pub name: String,
    /// The netdev bound to port 1, when the kernel reports one: it does only for RoCE/iWARP
    /// devices whose netdev is in the socket's network namespace.
    pub netdev: Option<String>,
}

/// Whether every network namespace sees every RDMA device (shared, the kernel's default) or each
/// device belongs to one namespace (exclusive; needed to move devices between namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsMode {
    Shared,
    Exclusive,
}

/// A NETLINK_RDMA socket, bound to the network namespace it was created in.
pub struct RdmaNetlink {
    /// One request at a time: replies are matched by sequence number on a shared socket.
    sock: Mutex<Socket>,
    seq: AtomicU32,
}

impl std::fmt::Debug for RdmaNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaNetlink").finish_non_exhaustive()
    }
}

impl RdmaNetlink {
    /// A socket in the caller's network namespace.
    pub fn open() -> Result<RdmaNetlink> {
        let sock = new_socket().map_err(|e| failure(&Request::Open, &Failure::from(e), None))?;
        Ok(RdmaNetlink::with(sock))
    }

    /// A socket in the network namespace `netns` (an open /proc/<pid>/ns/net or
    /// /var/run/netns/<name> file): created on a short-lived thread that enters it first, so the
    /// caller's thread never changes namespace (the socket stays bound to where it was created).
    pub fn open_in(netns: BorrowedFd<'_>) -> Result<RdmaNetlink> {
        let made = std::thread::scope(|s| {
            s.spawn(
                || -> std::result::Result<Socket, (Request<'static>, Failure)> {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| {
                            (
                                Request::EnterNetns(netns.as_raw_fd()),
                                Failure::Kernel(KernelError::errno(e as i32)),
                            )
                        },
                    )?;
                    new_socket().map_err(|e| (Request::Open, Failure::from(e)))
                },
            )
            .join()
        });
        match made {
            Ok(Ok(sock)) => Ok(RdmaNetlink::with(sock)),
            Ok(Err((req, f))) => Err(failure(&req, &f, None)),
            Err(_) => Err(failure(
                &Request::EnterNetns(netns.as_raw_fd()),
                &Failure::Io(io::Error::other(
                    "the thread entering the namespace panicked",
                )),
                None,
            )),
        }
    }

    fn with(sock: Socket) -> RdmaNetlink {
        RdmaNetlink {
            sock: Mutex::new(sock),
            seq: AtomicU32::new(1),
        }
    }

    /// Every RDMA device the socket's netns can see, with the netdev of port 1 where the kernel
    /// reports one (RDMA_NLDEV_CMD_GET dump + RDMA_NLDEV_CMD_PORT_GET dump per device).
    pub fn links(&self) -> Result<Vec<RdmaLinkInfo>> {
        let mut out = Vec::new();
        for (index, name) in self.devices()? {
            match self.transact(|seq| port_dump_request(index, seq), true) {
                Ok(ports) => out.push(RdmaLinkInfo {
                    index,
                    name,
                    netdev: port1_netdev(&ports),
                }),
                // The device went away between the two dumps: list what exists now.
                Err(Failure::Kernel(e)) if e.errno == Errno::EINVAL as i32 => {}
                Err(f) => return Err(failure(&Request::Ports { name: &name }, &f, None)),
            }
        }
        Ok(out)
    }

    /// `rdma link add NAME type rxe netdev NETDEV` (RDMA_NLDEV_CMD_NEWLINK with DEV_NAME,
    /// LINK_TYPE "rxe" and NDEV_NAME).
    pub fn add_rxe(&self, name: &str, netdev: &str) -> Result<()> {
        let req = Request::AddRxe { name, netdev };
        check_name(&req, "RDMA device name", name, IB_DEVICE_NAME_MAX)?;
        check_name(&req, "netdev name", netdev, IFNAMSIZ)?;
        self.transact(|seq| newlink_request(name, "rxe", netdev, seq), false)
            .map(drop)
            .map_err(|f| failure(&req, &f, None))
    }

    /// `rdma link delete NAME` (RDMA_NLDEV_CMD_DELLINK by DEV_INDEX); an unknown name is NotFound.
    pub fn delete_link(&self, name: &str) -> Result<()> {
        let req = Request::Delete { name };
        let index = self.index_of(&req, name)?;
        self.transact(|seq| dellink_request(index, seq), false)
            .map(drop)
            .map_err(|f| failure(&req, &f, None))
    }

    /// `rdma dev set NAME netns NS` (RDMA_NLDEV_CMD_SET with DEV_INDEX and RDMA_NLDEV_NET_NS_FD,
    /// the u32 number of `netns` in this process); needs the exclusive netns mode.
    pub fn move_to_netns(&self, name: &str, netns: BorrowedFd<'_>) -> Result<()> {
        let req = Request::Move { name };
        let index = self.index_of(&req, name)?;
        // The kernel resolves the fd in the sending process's table, while handling the request.
        let fd = u32::try_from(netns.as_raw_fd()).unwrap_or(u32::MAX);
        match self.transact(|seq| set_netns_request(index, fd, seq), false) {
            Ok(_) => Ok(()),
            Err(f) => {
                // EOPNOTSUPP has two causes; the mode tells them apart.
                let mode = match &f {
                    Failure::Kernel(e) if e.errno == Errno::EOPNOTSUPP as i32 => {
                        self.netns_mode().ok()
                    }
                    _ => None,
                };
                Err(failure(&req, &f, mode))
            }
        }
    }

    /// The uverbs character device of RDMA device `name` as the socket's network namespace sees it
    /// (RDMA_NLDEV_CMD_GET_CHARDEV with DEV_INDEX and CHARDEV_TYPE "uverbs"): its node name (e.g.
    /// "uverbs3") and dev_t split into major/minor. An unknown name is NotFound; a device without
    /// user verbs (ib_uverbs not loaded, or a driver with none) is a precondition error.
    pub fn uverbs(&self, name: &str) -> Result<crate::discovery::CharDev> {
        let req = Request::Uverbs { name };
        let index = self.index_of(&req, name)?;
        let msgs = self
            .transact(
                |seq| get_chardev_request(index, CHARDEV_TYPE_UVERBS, seq),
                false,
            )
            .map_err(|f| failure(&req, &f, None))?;
        chardev_of(&msgs).map_err(|e| failure(&req, &Failure::Io(e), None))
    }

    /// The RDMA subsystem's netns mode, as `rdma system show` prints it (RDMA_NLDEV_CMD_SYS_GET,
    /// RDMA_NLDEV_SYS_ATTR_NETNS_MODE).
    pub fn netns_mode(&self) -> Result<NetnsMode> {
        let req = Request::Mode;
        let msgs = self
            .transact(sys_get_request, false)
            .map_err(|f| failure(&req, &f, None))?;
        netns_mode_of(&msgs).map_err(|e| failure(&req, &Failure::Io(e), None))
    }

    /// (index, name) of every RDMA device the socket's netns can see (RDMA_NLDEV_CMD_GET dump).
    fn devices(&self) -> Result<Vec<(u32, String)>> {
        let req = Request::List;
        let msgs = self
            .transact(get_dump_request, true)
            .map_err(|f| failure(&req, &f, None))?;
        msgs.iter()
            .filter(|m| m.kind == nldev_type(RDMA_NLDEV_CMD_GET))
            .map(|m| device_of(m).map_err(|e| failure(&req, &Failure::Io(e), None)))
            .collect()
    }

    /// The index of device `name` in this socket's view; NotFound names what there is instead.
    fn index_of(&self, req: &Request<'_>, name: &str) -> Result<u32> {
        let devices = self.devices()?;
        if let Some((index, _)) = devices.iter().find(|(_, n)| n == name) {
            return Ok(*index);
        }
        let known: Vec<&str> = devices.iter().map(|(_, n)| n.as_str()).collect();
        Err(NodeError::NotFound(format!(
            "{} failed: no RDMA device {name} in this network namespace (it has: {})",
            req.describe(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed).max(1)
    }

    /// Sends one request and collects the messages answering it: until NLMSG_DONE for a dump,
    /// until the ACK for a request (every non-dump request asks for one).
    fn transact(
        &self,
        build: impl FnOnce(u32) -> Vec<u8>,
        dump: bool,
    ) -> std::result::Result<Vec<Msg>, Failure> {
        let seq = self.next_seq();
        let req = build(seq);
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        sock.send(&req, 0)?;
        let mut msgs = Vec::new();
        loop {
            let (buf, _) = sock.recv_from_full()?;
            for reply in parse_replies(&buf, seq)? {
                match reply {
                    Reply::Msg(m) => msgs.push(m),
                    Reply::Error(e) => return Err(Failure::Kernel(e)),
                    Reply::Ack if !dump => return Ok(msgs),
                    Reply::Done if dump => return Ok(msgs),
                    Reply::Ack | Reply::Done => {}
                }
            }
        }
    }
}

/// A NETLINK_RDMA socket talking to the kernel only, with extended acks and a reply timeout.
fn new_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_RDMA)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Best effort: kernels without them still answer, just with less to say.
    let _ = sock.set_ext_ack(true);
    let _ = sock.set_cap_ack(true);
    setsockopt(
        &sock,
        sockopt::ReceiveTimeout,
        &TimeVal::seconds(REPLY_TIMEOUT_SECS),
    )
    .map_err(io::Error::from)?;
    Ok(sock)
}
