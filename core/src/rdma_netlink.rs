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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_RDMA, Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::error::{CoreError, Result};

// From include/uapi/rdma/rdma_netlink.h (checked against linux-libc-dev 6.1 and torvalds/linux).
/// `RDMA_NL_NLDEV`: the nldev client in the message type's upper bits.
const RDMA_NL_NLDEV: u16 = 5;
/// `enum rdma_nldev_command`.
const RDMA_NLDEV_CMD_GET: u16 = 1;
const RDMA_NLDEV_CMD_SET: u16 = 2;
const RDMA_NLDEV_CMD_NEWLINK: u16 = 3;
const RDMA_NLDEV_CMD_DELLINK: u16 = 4;
const RDMA_NLDEV_CMD_PORT_GET: u16 = 5;
const RDMA_NLDEV_CMD_SYS_GET: u16 = 6;
/// A client's char device for one device (Linux 5.3; nldev_get_chardev in
/// drivers/infiniband/core/nldev.c): a plain request, answered by one message, no dump.
const RDMA_NLDEV_CMD_GET_CHARDEV: u16 = 15;
/// `enum rdma_nldev_attr`.
const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1; // u32
const RDMA_NLDEV_ATTR_DEV_NAME: u16 = 2; // string
const RDMA_NLDEV_ATTR_PORT_INDEX: u16 = 3; // u32
const RDMA_NLDEV_ATTR_NDEV_NAME: u16 = 51; // string
const RDMA_NLDEV_ATTR_LINK_TYPE: u16 = 65; // string, e.g. "rxe"
const RDMA_NLDEV_SYS_ATTR_NETNS_MODE: u16 = 66; // u8: 1 shared, 0 exclusive
const RDMA_NLDEV_NET_NS_FD: u16 = 68; // u32
/// GET_CHARDEV's attributes. A reply also carries UVERBS_DRIVER_ID (73, u32), CHARDEV_ABI (71,
/// u64) and, on architectures without efficient unaligned access, PAD (0) before each u64.
const RDMA_NLDEV_ATTR_CHARDEV_TYPE: u16 = 69; // string: the client, "uverbs", "umad", ...
const RDMA_NLDEV_ATTR_CHARDEV_NAME: u16 = 70; // string: the /dev node name, no directory
const RDMA_NLDEV_ATTR_CHARDEV: u16 = 72; // u64: huge_encode_dev(dev_t), see decode_dev
/// The client asked for (nldev_policy: NLA_NUL_STRING of RDMA_NLDEV_ATTR_CHARDEV_TYPE_SIZE, 32).
const CHARDEV_TYPE_UVERBS: &str = "uverbs";

// From include/uapi/linux/netlink.h.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// NLM_F_ROOT | NLM_F_MATCH.
const NLM_F_DUMP: u16 = 0x300;
/// On NLMSG_ERROR: the original request was not echoed (NETLINK_CAP_ACK) / ack TLVs follow.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `enum nlmsgerr_attrs`: the extended ack's message text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the type's top two bits.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;

/// Name limits the kernel enforces: IB_DEVICE_NAME_MAX (include/rdma/ib_verbs.h) and IFNAMSIZ,
/// both counting the NUL.
const IB_DEVICE_NAME_MAX: usize = 64;
const IFNAMSIZ: usize = 16;

/// How long to wait for each answer: the kernel answers at once, but a VM under software
/// emulation can be slow to create an rxe device.
const REPLY_TIMEOUT_SECS: i64 = 30;

/// `RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, op)`.
const fn nldev_type(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

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
        Err(CoreError::NotFound(format!(
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

// --- encoding ------------------------------------------------------------------------------------

/// An attribute value we send.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value<'a> {
    U32(u32),
    /// Sent NUL-terminated.
    Str(&'a str),
}

/// One nldev message: header, then each attribute padded to 4 bytes.
fn encode(op: u16, flags: u16, seq: u32, attrs: &[(u16, Value<'_>)]) -> Vec<u8> {
    let mut buf = vec![0u8; NLMSG_HDRLEN];
    for (kind, value) in attrs {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0]); // nla_len, filled in below
        buf.extend_from_slice(&kind.to_ne_bytes());
        match value {
            Value::U32(v) => buf.extend_from_slice(&v.to_ne_bytes()),
            Value::Str(s) => {
                buf.extend_from_slice(s.as_bytes());
                buf.push(0);
            }
        }
        // Names are checked against the kernel's limits first, so this always fits.
        let len = u16::try_from(buf.len() - start).unwrap_or(u16::MAX);
        buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        buf.resize(align4(buf.len()), 0);
    }
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&nldev_type(op).to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid stays 0: the kernel fills in our port id.
    buf
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// RDMA_NLDEV_CMD_GET dump: every device.
fn get_dump_request(seq: u32) -> Vec<u8> {
    encode(RDMA_NLDEV_CMD_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, &[])
}

/// RDMA_NLDEV_CMD_PORT_GET dump of one device's ports (the kernel requires DEV_INDEX).
fn port_dump_request(index: u32, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_PORT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &[(RDMA_NLDEV_ATTR_DEV_INDEX, Value::U32(index))],
    )
}

/// RDMA_NLDEV_CMD_NEWLINK: a `link_type` device named `name` on `netdev`.
fn newlink_request(name: &str, link_type: &str, netdev: &str, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &[
            (RDMA_NLDEV_ATTR_DEV_NAME, Value::Str(name)),
            (RDMA_NLDEV_ATTR_LINK_TYPE, Value::Str(link_type)),
            (RDMA_NLDEV_ATTR_NDEV_NAME, Value::Str(netdev)),
        ],
    )
}

/// RDMA_NLDEV_CMD_DELLINK of device `index`.
fn dellink_request(index: u32, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_DELLINK,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &[(RDMA_NLDEV_ATTR_DEV_INDEX, Value::U32(index))],
    )
}

/// RDMA_NLDEV_CMD_SET moving device `index` to the netns open as fd `netns_fd`.
fn set_netns_request(index: u32, netns_fd: u32, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_SET,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &[
            (RDMA_NLDEV_ATTR_DEV_INDEX, Value::U32(index)),
            (RDMA_NLDEV_NET_NS_FD, Value::U32(netns_fd)),
        ],
    )
}

/// RDMA_NLDEV_CMD_SYS_GET (a plain request: the kernel has no dump for it).
fn sys_get_request(seq: u32) -> Vec<u8> {
    encode(RDMA_NLDEV_CMD_SYS_GET, NLM_F_REQUEST | NLM_F_ACK, seq, &[])
}

/// RDMA_NLDEV_CMD_GET_CHARDEV: the char device client `chardev_type` made for device `index`
/// (without PORT_INDEX: uverbs refuses a port with EINVAL).
fn get_chardev_request(index: u32, chardev_type: &str, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_GET_CHARDEV,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &[
            (RDMA_NLDEV_ATTR_DEV_INDEX, Value::U32(index)),
            (RDMA_NLDEV_ATTR_CHARDEV_TYPE, Value::Str(chardev_type)),
        ],
    )
}

// --- decoding ------------------------------------------------------------------------------------

/// One nldev message from the kernel: its type and attributes (type without flag bits, value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    kind: u16,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Msg {
    fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn u32(&self, kind: u16) -> Option<u32> {
        let v = self.attr(kind)?;
        Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
    }

    fn u64(&self, kind: u16) -> Option<u64> {
        let v = self.attr(kind)?;
        Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
    }

    fn u8(&self, kind: u16) -> Option<u8> {
        self.attr(kind)?.first().copied()
    }

    fn str(&self, kind: u16) -> Option<String> {
        let v = self.attr(kind)?;
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        Some(String::from_utf8_lossy(&v[..end]).into_owned())
    }
}

/// A kernel refusal: the positive errno and the extended-ack text, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelError {
    errno: i32,
    ext_msg: Option<String>,
}

impl KernelError {
    fn errno(errno: i32) -> KernelError {
        KernelError {
            errno,
            ext_msg: None,
        }
    }

    /// `EINVAL` or `EINVAL: <kernel text>`.
    fn describe(&self) -> String {
        let name = errno_name(self.errno);
        match &self.ext_msg {
            Some(m) if !m.is_empty() => format!("{name}: {m}"),
            _ => name,
        }
    }
}

fn errno_name(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("errno {errno}"),
        e => format!("{e:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Msg(Msg),
    /// NLMSG_ERROR with code 0.
    Ack,
    /// NLMSG_ERROR, or NLMSG_DONE ending a dump with an error.
    Error(KernelError),
    /// NLMSG_DONE ending a dump cleanly.
    Done,
}

fn bad_reply(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Every netlink message in one datagram that answers request `seq` (others are stale answers to
/// a request given up on, and are skipped).
fn parse_replies(mut buf: &[u8], seq: u32) -> io::Result<Vec<Reply>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad_reply(format!(
                "netlink message length {len} does not fit the {} bytes received",
                buf.len()
            )));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let payload = &buf[NLMSG_HDRLEN..len];
        if msg_seq == seq {
            out.push(match kind {
                NLMSG_ERROR | NLMSG_DONE => {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        // A DONE without a payload (very old kernels) is a clean end.
                        .unwrap_or(0);
                    match (kind, code) {
                        (NLMSG_ERROR, 0) => Reply::Ack,
                        (_, 0) => Reply::Done,
                        (_, code) => Reply::Error(KernelError {
                            errno: code.abs(),
                            ext_msg: ext_ack_message(kind, flags, &payload[4..]),
                        }),
                    }
                }
                _ => Reply::Msg(Msg {
                    kind,
                    attrs: parse_attrs(payload)?,
                }),
            });
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The TLVs of a message body.
fn parse_attrs(mut buf: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(bad_reply(format!(
                "attribute {kind} length {len} does not fit the {} bytes left",
                buf.len()
            )));
        }
        out.push((kind, buf[4..len].to_vec()));
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The kernel's extended-ack text from what follows the error code: for NLMSG_ERROR the echoed
/// request header (and body unless capped) comes first; for NLMSG_DONE the TLVs follow at once.
fn ext_ack_message(kind: u16, flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if kind == NLMSG_DONE {
        0
    } else if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let b = after_code.get(..4)?;
        align4(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let tlvs = parse_attrs(after_code.get(skip..)?).ok()?;
    let (_, text) = tlvs.into_iter().find(|(k, _)| *k == NLMSGERR_ATTR_MSG)?;
    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
    let s = String::from_utf8_lossy(&text[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// (index, name) of a device in a GET reply.
fn device_of(msg: &Msg) -> io::Result<(u32, String)> {
    match (
        msg.u32(RDMA_NLDEV_ATTR_DEV_INDEX),
        msg.str(RDMA_NLDEV_ATTR_DEV_NAME),
    ) {
        (Some(index), Some(name)) => Ok((index, name)),
        _ => Err(bad_reply(format!(
            "a device in the kernel's RDMA_NLDEV_CMD_GET dump lacks DEV_INDEX or DEV_NAME: {msg:?}"
        ))),
    }
}

/// The netdev the kernel reports for port 1 in a PORT_GET dump.
fn port1_netdev(ports: &[Msg]) -> Option<String> {
    ports
        .iter()
        .filter(|m| m.kind == nldev_type(RDMA_NLDEV_CMD_PORT_GET))
        .find(|m| m.u32(RDMA_NLDEV_ATTR_PORT_INDEX) == Some(1))
        .and_then(|m| m.str(RDMA_NLDEV_ATTR_NDEV_NAME))
        .filter(|n| !n.is_empty())
}

/// The netns mode in a SYS_GET reply.
fn netns_mode_of(msgs: &[Msg]) -> io::Result<NetnsMode> {
    let mode = msgs
        .iter()
        .filter(|m| m.kind == nldev_type(RDMA_NLDEV_CMD_SYS_GET))
        .find_map(|m| m.u8(RDMA_NLDEV_SYS_ATTR_NETNS_MODE));
    match mode {
        Some(0) => Ok(NetnsMode::Exclusive),
        Some(1) => Ok(NetnsMode::Shared),
        Some(n) => Err(bad_reply(format!("the kernel reports netns mode {n}"))),
        None => Err(bad_reply(
            "the kernel's RDMA_NLDEV_CMD_SYS_GET answer has no NETNS_MODE".into(),
        )),
    }
}

/// The char device in a GET_CHARDEV reply: its node name and numbers.
fn chardev_of(msgs: &[Msg]) -> io::Result<crate::discovery::CharDev> {
    let msg = msgs
        .iter()
        .find(|m| m.kind == nldev_type(RDMA_NLDEV_CMD_GET_CHARDEV))
        .ok_or_else(|| {
            bad_reply("the kernel acknowledged RDMA_NLDEV_CMD_GET_CHARDEV without an answer".into())
        })?;
    match (
        msg.str(RDMA_NLDEV_ATTR_CHARDEV_NAME)
            .filter(|n| !n.is_empty()),
        msg.u64(RDMA_NLDEV_ATTR_CHARDEV),
    ) {
        (Some(name), Some(dev)) => {
            let (major, minor) = decode_dev(dev);
            Ok(crate::discovery::CharDev { name, major, minor })
        }
        _ => Err(bad_reply(format!(
            "the kernel's RDMA_NLDEV_CMD_GET_CHARDEV answer lacks CHARDEV_NAME or CHARDEV: {msg:?}"
        ))),
    }
}

/// (major, minor) of the kernel's `huge_encode_dev(dev)` (include/linux/kdev_t.h), which is
/// `new_encode_dev(dev)` = `(minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)` in 32 bits:
/// decoded as glibc's `gnu_dev_major`/`gnu_dev_minor` do, which agree with the kernel's
/// `new_decode_dev` on every 32-bit value (the kernel's major has 12 bits, its minor 20) and give
/// stat's st_rdev split the same way.
fn decode_dev(dev: u64) -> (i64, i64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    // 32 bits each, so both fit.
    (major as i64, minor as i64)
}

// --- errors --------------------------------------------------------------------------------------

/// Why a request failed: the kernel said no (or a syscall did), or its answer made no sense.
#[derive(Debug)]
enum Failure {
    Kernel(KernelError),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.raw_os_error() {
            Some(errno) => Failure::Kernel(KernelError::errno(errno)),
            None => Failure::Io(e),
        }
    }
}

/// What we were doing, to name it in errors.
#[derive(Debug, Clone, Copy)]
enum Request<'a> {
    Open,
    EnterNetns(i32),
    List,
    Ports { name: &'a str },
    AddRxe { name: &'a str, netdev: &'a str },
    Delete { name: &'a str },
    Move { name: &'a str },
    Mode,
    Uverbs { name: &'a str },
}

impl Request<'_> {
    fn describe(&self) -> String {
        match self {
            Request::Open => "opening an RDMA netlink socket".into(),
            Request::EnterNetns(fd) => format!("entering the network namespace of fd {fd}"),
            Request::List => "listing RDMA devices (rdma link show)".into(),
            Request::Ports { name } => format!("reading the ports of RDMA device {name}"),
            Request::AddRxe { name, netdev } => {
                format!("rdma link add {name} type rxe netdev {netdev}")
            }
            Request::Delete { name } => format!("rdma link delete {name}"),
            Request::Move { name } => format!("rdma dev set {name} netns"),
            Request::Mode => "reading the RDMA netns mode (rdma system show)".into(),
            Request::Uverbs { name } => format!("reading the uverbs char device of {name}"),
        }
    }
}

/// Input the kernel would refuse with a bare EINVAL, refused here with a reason.
fn check_name(req: &Request<'_>, what: &str, name: &str, max_with_nul: usize) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty".to_string()
    } else if name.len() >= max_with_nul {
        format!("is longer than {} bytes", max_with_nul - 1)
    } else if name.contains(['%', '/']) || name.chars().any(|c| c.is_whitespace() || c == '\0') {
        "contains %, /, NUL or white space".to_string()
    } else {
        return Ok(());
    };
    Err(CoreError::Invalid(format!(
        "{} refused: the {what} {name:?} {reason}",
        req.describe()
    )))
}

/// Maps a failure onto a one-line error whose class says whose fault it is. `mode` is the netns
/// mode when it was read after the failure.
fn failure(req: &Request<'_>, f: &Failure, mode: Option<NetnsMode>) -> CoreError {
    let e = match f {
        Failure::Kernel(e) => e,
        Failure::Io(io) => return internal(req, io.to_string()),
    };
    let what = req.describe();
    let failed = |reason: &str| format!("{what} failed ({}): {reason}", e.describe());
    let errno = Errno::from_raw(e.errno);
    // The node lacks something (module, capability, mode): a precondition.
    let node = |reason: String| CoreError::Config {
        origin: "(the kernel's RDMA subsystem)".into(),
        reason: failed(&reason),
    };
    match (req, errno) {
        (Request::Open, Errno::EPROTONOSUPPORT) => node(
            "the kernel has no RDMA netlink: the ib_core module is not loaded (modprobe ib_core)"
                .into(),
        ),
        (Request::EnterNetns(_), Errno::EINVAL | Errno::EBADF) => CoreError::Invalid(failed(
            "the file descriptor is not an open network namespace",
        )),
        (Request::EnterNetns(_), Errno::EPERM) => {
            node("entering a network namespace needs CAP_SYS_ADMIN".into())
        }
        (_, Errno::EPERM | Errno::EACCES) => node(match req {
            Request::AddRxe { netdev, .. } => format!(
                "creating an RDMA link needs CAP_NET_ADMIN, and rxe refuses VLAN netdevs such as {netdev} might be"
            ),
            Request::Move { name } => format!(
                "moving {name} needs CAP_NET_ADMIN over the target network namespace"
            ),
            _ => "this needs CAP_NET_ADMIN in the socket's network namespace".into(),
        }),
        (Request::AddRxe { netdev, .. }, Errno::ENODEV | Errno::ENOENT) => CoreError::NotFound(
            failed(&format!("no network device {netdev} in this network namespace")),
        ),
        (Request::AddRxe { netdev, .. }, Errno::EEXIST) => CoreError::Invalid(failed(&format!(
            "{netdev} already has an rxe device (one per netdev)"
        ))),
        // The kernel's answer when the name is taken (assign_name in drivers/infiniband/core).
        (Request::AddRxe { name, .. }, Errno::ENFILE) => CoreError::Invalid(failed(&format!(
            "an RDMA device named {name} already exists"
        ))),
        (Request::AddRxe { .. }, Errno::EINVAL) => node(
            "the kernel has no rxe link type (the rdma_rxe module is missing or cannot load) or refused the names"
                .into(),
        ),
        (Request::Delete { name }, Errno::EINVAL) => CoreError::Invalid(failed(&format!(
            "{name} is not a software RDMA link (only rxe and siw devices can be deleted), or it just went away"
        ))),
        (Request::Move { name }, Errno::EOPNOTSUPP) => node(match mode {
            Some(NetnsMode::Shared) => "the RDMA subsystem is in shared netns mode, where devices cannot move: `rdma system set netns exclusive` first (possible only while no other network namespace exists)".into(),
            Some(NetnsMode::Exclusive) => format!(
                "the driver of {name} cannot move between network namespaces (it cannot disassociate user contexts)"
            ),
            None => format!(
                "the RDMA subsystem is in shared netns mode, or the driver of {name} cannot move between network namespaces"
            ),
        }),
        (Request::Move { name }, Errno::EINVAL | Errno::EBADF) => CoreError::Invalid(failed(
            &format!("the file descriptor is not a network namespace, or {name} just went away"),
        )),
        (Request::Move { name }, Errno::ENODEV) => CoreError::NotFound(failed(&format!(
            "{name} is no longer in this network namespace"
        ))),
        // The kernel answers EINVAL for an index it does not know in the socket's netns.
        (Request::Uverbs { name }, Errno::EINVAL) => CoreError::NotFound(failed(&format!(
            "{name} is no longer in this network namespace"
        ))),
        // ib_get_client_nl_info: no uverbs client data for the device, even after it asked
        // modprobe for rdma-client-uverbs.
        (Request::Uverbs { name }, Errno::EOPNOTSUPP) => node(format!(
            "{name} has no uverbs char device: the ib_uverbs module is not loaded (modprobe ib_uverbs) or its driver offers no user verbs"
        )),
        (_, Errno::EOPNOTSUPP) => node("the kernel does not support this operation".into()),
        (_, Errno::EBUSY) => node("the RDMA subsystem is busy with this device; retry".into()),
        (_, Errno::EAGAIN) => internal(
            req,
            format!("no answer from the kernel within {REPLY_TIMEOUT_SECS} s"),
        ),
        _ => internal(req, format!("{} ({})", e.describe(), errno.desc())),
    }
}

/// Something that should not happen (a malformed answer, an unexpected errno): an I/O error.
fn internal(req: &Request<'_>, reason: String) -> CoreError {
    CoreError::io(
        "RDMA netlink failed at",
        PathBuf::from(req.describe()),
        io::Error::other(reason),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use std::os::fd::AsFd;

    /// A kernel message as the kernel builds one, for parser tests.
    fn kernel_msg(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&4242u32.to_ne_bytes());
        buf.extend_from_slice(body);
        buf.resize(align4(buf.len()), 0);
        buf
    }

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize(align4(v.len()), 0);
        v
    }

    fn strz(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// Decodes one request of ours back into (type, flags, seq, attributes).
    fn decode_request(buf: &[u8]) -> (u16, u16, u32, Vec<(u16, Vec<u8>)>) {
        assert_eq!(buf.len() % 4, 0, "messages are 4-byte aligned");
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len(), "nlmsg_len covers the whole request");
        assert_eq!(&buf[12..16], &[0; 4], "nlmsg_pid is left to the kernel");
        (
            u16::from_ne_bytes([buf[4], buf[5]]),
            u16::from_ne_bytes([buf[6], buf[7]]),
            u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            parse_attrs(&buf[NLMSG_HDRLEN..]).unwrap(),
        )
    }

    #[test]
    fn message_types_follow_rdma_nl_get_type() {
        // RDMA_NL_NLDEV = 5, so (5 << 10) + op, as iproute2's rdma tool sends them.
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_GET), 5121);
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_SET), 5122);
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_NEWLINK), 5123);
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_DELLINK), 5124);
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_PORT_GET), 5125);
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_SYS_GET), 5126);
        assert_eq!(nldev_type(RDMA_NLDEV_CMD_GET_CHARDEV), 5135);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn requests_are_byte_exact() {
        #[rustfmt::skip]
        let get: &[u8] = &[
            16, 0, 0, 0,  0x01, 0x14,  0x01, 0x03,  9, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(get_dump_request(9), get);

        #[rustfmt::skip]
        let ports: &[u8] = &[
            24, 0, 0, 0,  0x05, 0x14,  0x01, 0x03,  10, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 1, 0,  3, 0, 0, 0,                       // DEV_INDEX 3
        ];
        assert_eq!(port_dump_request(3, 10), ports);

        #[rustfmt::skip]
        let newlink: &[u8] = &[
            48, 0, 0, 0,  0x03, 0x14,  0x05, 0x00,  7, 0, 0, 0,  0, 0, 0, 0,
            9, 0, 2, 0,  b'r', b'x', b'e', b'0',  0, 0, 0, 0,    // DEV_NAME "rxe0\0" + pad
            8, 0, 65, 0,  b'r', b'x', b'e', 0,                   // LINK_TYPE "rxe\0"
            9, 0, 51, 0,  b'e', b't', b'h', b'0',  0, 0, 0, 0,   // NDEV_NAME "eth0\0" + pad
        ];
        assert_eq!(newlink_request("rxe0", "rxe", "eth0", 7), newlink);

        #[rustfmt::skip]
        let dellink: &[u8] = &[
            24, 0, 0, 0,  0x04, 0x14,  0x05, 0x00,  8, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 1, 0,  0x02, 0x01, 0, 0,                 // DEV_INDEX 258
        ];
        assert_eq!(dellink_request(258, 8), dellink);

        #[rustfmt::skip]
        let set: &[u8] = &[
            32, 0, 0, 0,  0x02, 0x14,  0x05, 0x00,  11, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 1, 0,  4, 0, 0, 0,                       // DEV_INDEX 4
            8, 0, 68, 0,  17, 0, 0, 0,                     // RDMA_NLDEV_NET_NS_FD 17
        ];
        assert_eq!(set_netns_request(4, 17, 11), set);

        #[rustfmt::skip]
        let sys: &[u8] = &[
            16, 0, 0, 0,  0x06, 0x14,  0x05, 0x00,  12, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(sys_get_request(12), sys);

        #[rustfmt::skip]
        let chardev: &[u8] = &[
            36, 0, 0, 0,  0x0f, 0x14,  0x05, 0x00,  13, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 1, 0,  3, 0, 0, 0,                             // DEV_INDEX 3
            11, 0, 69, 0,  b'u', b'v', b'e', b'r', b'b', b's', 0,  0,  // CHARDEV_TYPE "uverbs\0" + pad
        ];
        assert_eq!(get_chardev_request(3, "uverbs", 13), chardev);
    }

    #[test]
    fn requests_decode_to_the_intended_attributes() {
        let dump = NLM_F_REQUEST | NLM_F_DUMP;
        let ack = NLM_F_REQUEST | NLM_F_ACK;
        assert_eq!(
            decode_request(&get_dump_request(1)),
            (5121, dump, 1, vec![])
        );
        assert_eq!(
            decode_request(&port_dump_request(7, 2)),
            (5125, dump, 2, vec![(1, 7u32.to_ne_bytes().to_vec())])
        );
        assert_eq!(
            decode_request(&newlink_request("conrdma-nl0", "rxe", "enp0s1v12", 3)),
            (
                5123,
                ack,
                3,
                vec![
                    (2, strz("conrdma-nl0")),
                    (65, strz("rxe")),
                    (51, strz("enp0s1v12")),
                ]
            )
        );
        assert_eq!(
            decode_request(&dellink_request(9, 4)),
            (5124, ack, 4, vec![(1, 9u32.to_ne_bytes().to_vec())])
        );
        assert_eq!(
            decode_request(&set_netns_request(9, 33, 5)),
            (
                5122,
                ack,
                5,
                vec![
                    (1, 9u32.to_ne_bytes().to_vec()),
                    (68, 33u32.to_ne_bytes().to_vec())
                ]
            )
        );
        assert_eq!(decode_request(&sys_get_request(6)), (5126, ack, 6, vec![]));
        assert_eq!(
            decode_request(&get_chardev_request(9, CHARDEV_TYPE_UVERBS, 7)),
            (
                5135,
                ack,
                7,
                vec![(1, 9u32.to_ne_bytes().to_vec()), (69, strz("uverbs"))]
            )
        );
        // Every name length pads to the next 4 bytes.
        for n in 1..9 {
            let name = "x".repeat(n);
            let (_, _, _, attrs) = decode_request(&newlink_request(&name, "rxe", "e", 1));
            assert_eq!(attrs[0], (2, strz(&name)));
        }
    }

    #[test]
    fn a_dump_and_its_end_are_parsed() {
        let mut dev = tlv(RDMA_NLDEV_ATTR_DEV_INDEX, &3u32.to_ne_bytes());
        dev.extend(tlv(RDMA_NLDEV_ATTR_DEV_NAME, &strz("rxe1")));
        dev.extend(tlv(RDMA_NLDEV_ATTR_PORT_INDEX, &1u32.to_ne_bytes()));
        // A u64 the parser must step over (NODE_GUID = 5).
        dev.extend(tlv(5, &0x1122_3344_5566_7788u64.to_ne_bytes()));
        let mut port = tlv(RDMA_NLDEV_ATTR_DEV_INDEX, &3u32.to_ne_bytes());
        port.extend(tlv(RDMA_NLDEV_ATTR_DEV_NAME, &strz("rxe1")));
        port.extend(tlv(RDMA_NLDEV_ATTR_PORT_INDEX, &1u32.to_ne_bytes()));
        port.extend(tlv(50, &7u32.to_ne_bytes())); // NDEV_INDEX
        port.extend(tlv(RDMA_NLDEV_ATTR_NDEV_NAME, &strz("enp0s1v1")));
        const NLM_F_MULTI: u16 = 2;

        let mut buf = kernel_msg(5121, NLM_F_MULTI, 9, &dev);
        buf.extend(kernel_msg(5121, NLM_F_MULTI, 8, &dev)); // a stale answer
        buf.extend(kernel_msg(NLMSG_DONE, NLM_F_MULTI, 9, &0i32.to_ne_bytes()));
        let replies = parse_replies(&buf, 9).unwrap();
        assert_eq!(replies.len(), 2, "{replies:?}");
        let Reply::Msg(m) = &replies[0] else {
            panic!("{replies:?}")
        };
        assert_eq!(device_of(m).unwrap(), (3, "rxe1".to_string()));
        assert_eq!(m.attr(5).map(<[u8]>::len), Some(8));
        assert_eq!(replies[1], Reply::Done);

        let buf = kernel_msg(5125, NLM_F_MULTI, 10, &port);
        let replies = parse_replies(&buf, 10).unwrap();
        let [Reply::Msg(p)] = replies.as_slice() else {
            panic!("not one port message: {replies:?}")
        };
        assert_eq!(
            port1_netdev(std::slice::from_ref(p)),
            Some("enp0s1v1".into())
        );
        // Port 2's netdev is not port 1's, and a GET reply is not a port.
        let mut p2 = p.clone();
        p2.attrs[2].1 = 2u32.to_ne_bytes().to_vec();
        assert_eq!(port1_netdev(&[p2, m.clone()]), None);

        // A device reply without a name is refused rather than listed as "".
        let bare = Msg {
            kind: 5121,
            attrs: vec![(1, 3u32.to_ne_bytes().to_vec())],
        };
        assert!(device_of(&bare).is_err());
        // Truncated input is an error, not a panic.
        assert!(parse_replies(&buf[..buf.len() - 4], 10).is_err());
        assert!(parse_attrs(&[200, 0, 1, 0]).is_err());
    }

    #[test]
    fn errors_and_extended_acks_are_read() {
        // NLMSG_ERROR, capped, with the kernel's text: code, our header, then the TLVs.
        let mut body = (-19i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&newlink_request("rxe9", "rxe", "nope0", 4)[..NLMSG_HDRLEN]);
        body.extend(tlv(NLMSGERR_ATTR_MSG, &strz("Device not found")));
        body.extend(tlv(2, &0u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        let buf = kernel_msg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 4, &body);
        assert_eq!(
            parse_replies(&buf, 4).unwrap(),
            vec![Reply::Error(KernelError {
                errno: 19,
                ext_msg: Some("Device not found".into())
            })]
        );
        // Not capped: the whole request is echoed before the TLVs.
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&newlink_request("rxe9", "rxe", "nope0", 4));
        body.extend(tlv(NLMSGERR_ATTR_MSG, &strz("bad attribute")));
        let buf = kernel_msg(NLMSG_ERROR, NLM_F_ACK_TLVS, 4, &body);
        let replies = parse_replies(&buf, 4).unwrap();
        let [Reply::Error(e)] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        assert_eq!(e.describe(), "EINVAL: bad attribute");
        // Without ack TLVs there is no text.
        let buf = kernel_msg(NLMSG_ERROR, NLM_F_CAPPED, 4, &(-95i32).to_ne_bytes());
        assert_eq!(
            parse_replies(&buf, 4).unwrap(),
            vec![Reply::Error(KernelError::errno(95))]
        );
        // An ACK is an error message with code 0.
        let buf = kernel_msg(NLMSG_ERROR, NLM_F_CAPPED, 4, &[0; 20]);
        assert_eq!(parse_replies(&buf, 4).unwrap(), vec![Reply::Ack]);
        // A dump that fails ends with NLMSG_DONE carrying the errno, TLVs right after it.
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend(tlv(NLMSGERR_ATTR_MSG, &strz("no such index")));
        let buf = kernel_msg(NLMSG_DONE, 2 | NLM_F_ACK_TLVS, 6, &body);
        assert_eq!(
            parse_replies(&buf, 6).unwrap(),
            vec![Reply::Error(KernelError {
                errno: 22,
                ext_msg: Some("no such index".into())
            })]
        );
    }

    #[test]
    fn netns_mode_is_read_from_sys_get() {
        let msg = |mode: u8| Msg {
            kind: 5126,
            attrs: vec![
                (RDMA_NLDEV_SYS_ATTR_NETNS_MODE, vec![mode]),
                (70, vec![1]), // COPY_ON_FORK
            ],
        };
        assert_eq!(netns_mode_of(&[msg(1)]).unwrap(), NetnsMode::Shared);
        assert_eq!(netns_mode_of(&[msg(0)]).unwrap(), NetnsMode::Exclusive);
        assert!(netns_mode_of(&[msg(7)]).is_err());
        assert!(netns_mode_of(&[]).is_err());
    }

    /// `new_encode_dev` of include/linux/kdev_t.h, which `huge_encode_dev` returns as a u64.
    fn huge_encode_dev(major: u64, minor: u64) -> u64 {
        (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
    }

    #[test]
    fn dev_numbers_decode_as_the_kernel_encodes_them() {
        // ib_uverbs' fixed major with a minor past the fixed range, a dynamic major (the one
        // uverbs takes beyond 32 devices) and large numbers on both sides.
        for (major, minor) in [
            (231, 195),
            (240, 5),
            (231, 192),
            (0, 0),
            (231, 300),
            (511, 70_000),
            (4095, 1_048_575),
        ] {
            let dev = huge_encode_dev(major, minor);
            assert_eq!(decode_dev(dev), (major as i64, minor as i64), "{dev:#x}");
            // The same split glibc's gnu_dev_major/minor make of st_rdev.
            assert_eq!(
                (nix::sys::stat::major(dev), nix::sys::stat::minor(dev)),
                (major, minor)
            );
        }
        assert_eq!(huge_encode_dev(231, 195), 0xe7c3);
        assert_eq!(decode_dev(0xe7c3), (231, 195));
        assert_eq!(decode_dev(0xf005), (240, 5));
        // The minor's upper bits sit above the major: 231:300 is 0x10e72c.
        assert_eq!(decode_dev(0x10_e72c), (231, 300));
        // Beyond 32 bits (not sent by the kernel), glibc's layout: major's high bits at 32+.
        let wide = nix::sys::stat::makedev(0x12345, 0x6789a);
        assert_eq!(decode_dev(wide), (0x12345, 0x6789a));
    }

    #[test]
    fn a_chardev_reply_is_parsed() {
        /// More `enum rdma_nldev_attr` values a reply carries.
        const RDMA_NLDEV_ATTR_PAD: u16 = 0;
        const RDMA_NLDEV_ATTR_CHARDEV_ABI: u16 = 71;
        const RDMA_NLDEV_ATTR_UVERBS_DRIVER_ID: u16 = 73;
        let pad = tlv(RDMA_NLDEV_ATTR_PAD, &[]);
        // In nldev_get_chardev's order: what uverbs' get_nl_info puts, then CHARDEV, ABI, NAME;
        // each u64 after a PAD as on architectures that align them.
        let mut body = tlv(RDMA_NLDEV_ATTR_UVERBS_DRIVER_ID, &17u32.to_ne_bytes());
        body.extend(&pad);
        body.extend(tlv(
            RDMA_NLDEV_ATTR_CHARDEV,
            &huge_encode_dev(231, 195).to_ne_bytes(),
        ));
        body.extend(&pad);
        body.extend(tlv(RDMA_NLDEV_ATTR_CHARDEV_ABI, &6u64.to_ne_bytes()));
        body.extend(tlv(RDMA_NLDEV_ATTR_CHARDEV_NAME, &strz("uverbs3")));
        let mut buf = kernel_msg(5135, 0, 21, &body);
        // The ACK the request asked for, in the same datagram.
        buf.extend(kernel_msg(NLMSG_ERROR, NLM_F_CAPPED, 21, &[0; 20]));
        let replies = parse_replies(&buf, 21).unwrap();
        let [Reply::Msg(m), Reply::Ack] = replies.as_slice() else {
            panic!("not a message and its ACK: {replies:?}")
        };
        let dev = chardev_of(std::slice::from_ref(m)).unwrap();
        assert_eq!(
            dev,
            crate::discovery::CharDev {
                name: "uverbs3".into(),
                major: 231,
                minor: 195
            }
        );
        assert_eq!(dev.dev_path(), "/dev/infiniband/uverbs3");

        // A dynamic major, without PADs (x86: efficient unaligned access).
        let mut body = tlv(
            RDMA_NLDEV_ATTR_CHARDEV,
            &huge_encode_dev(240, 5).to_ne_bytes(),
        );
        body.extend(tlv(RDMA_NLDEV_ATTR_CHARDEV_ABI, &6u64.to_ne_bytes()));
        body.extend(tlv(RDMA_NLDEV_ATTR_CHARDEV_NAME, &strz("uverbs37")));
        let replies = parse_replies(&kernel_msg(5135, 0, 22, &body), 22).unwrap();
        let [Reply::Msg(m)] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        let dev = chardev_of(std::slice::from_ref(m)).unwrap();
        assert_eq!(
            (dev.name.as_str(), dev.major, dev.minor),
            ("uverbs37", 240, 5)
        );

        // Missing pieces are errors that say what is missing, not a device "" or 0:0.
        let mut no_name = m.clone();
        no_name
            .attrs
            .retain(|(k, _)| *k != RDMA_NLDEV_ATTR_CHARDEV_NAME);
        let e = chardev_of(&[no_name]).unwrap_err();
        assert!(
            e.to_string().contains("lacks CHARDEV_NAME or CHARDEV"),
            "{e}"
        );
        let mut empty_name = m.clone();
        empty_name
            .attrs
            .retain(|(k, _)| *k != RDMA_NLDEV_ATTR_CHARDEV_NAME);
        empty_name
            .attrs
            .push((RDMA_NLDEV_ATTR_CHARDEV_NAME, vec![0]));
        assert!(chardev_of(&[empty_name]).is_err());
        let mut short_dev = m.clone();
        short_dev.attrs[0].1.truncate(4);
        assert!(chardev_of(&[short_dev]).is_err());
        // Only an ACK: no answer.
        let e = chardev_of(&[]).unwrap_err();
        assert!(e.to_string().contains("without an answer"), "{e}");
        // Another command's reply is not a char device.
        let mut other = m.clone();
        other.kind = nldev_type(RDMA_NLDEV_CMD_GET);
        assert!(chardev_of(&[other]).is_err());
    }

    fn k(errno: Errno) -> Failure {
        Failure::Kernel(KernelError::errno(errno as i32))
    }

    #[test]
    fn errno_messages_are_one_line_and_name_the_device() {
        let add = Request::AddRxe {
            name: "rxe9",
            netdev: "nope0",
        };
        let e = failure(&add, &k(Errno::ENODEV), None);
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert_eq!(
            e.to_string(),
            "rdma link add rxe9 type rxe netdev nope0 failed (ENODEV): no network device nope0 in this network namespace"
        );
        let e = failure(
            &add,
            &Failure::Kernel(KernelError {
                errno: 17,
                ext_msg: Some("already there".into()),
            }),
            None,
        );
        assert_eq!(e.class(), ErrorClass::InvalidInput);
        assert!(
            e.to_string()
                .contains("(EEXIST: already there): nope0 already has an rxe device"),
            "{e}"
        );
        let e = failure(&add, &k(Errno::ENFILE), None);
        assert!(
            e.to_string()
                .contains("an RDMA device named rxe9 already exists"),
            "{e}"
        );
        let e = failure(&add, &k(Errno::EINVAL), None);
        assert_eq!(e.class(), ErrorClass::Precondition);
        assert!(e.to_string().contains("no rxe link type"), "{e}");
        let e = failure(&add, &k(Errno::EPERM), None);
        assert_eq!(e.class(), ErrorClass::Precondition);
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");

        let mv = Request::Move { name: "rxe0" };
        let e = failure(&mv, &k(Errno::EOPNOTSUPP), Some(NetnsMode::Shared));
        assert_eq!(e.class(), ErrorClass::Precondition);
        assert!(
            e.to_string().contains(
                "rdma dev set rxe0 netns failed (EOPNOTSUPP): the RDMA subsystem is in shared netns mode"
            ),
            "{e}"
        );
        let e = failure(&mv, &k(Errno::EOPNOTSUPP), Some(NetnsMode::Exclusive));
        assert!(
            e.to_string()
                .contains("the driver of rxe0 cannot move between network namespaces"),
            "{e}"
        );
        let e = failure(&mv, &k(Errno::EBADF), None);
        assert_eq!(e.class(), ErrorClass::InvalidInput);

        let e = failure(&Request::Delete { name: "mlx5_0" }, &k(Errno::EINVAL), None);
        assert_eq!(e.class(), ErrorClass::InvalidInput);
        assert!(
            e.to_string().contains("mlx5_0 is not a software RDMA link"),
            "{e}"
        );

        let e = failure(&Request::Open, &k(Errno::EPROTONOSUPPORT), None);
        assert_eq!(e.class(), ErrorClass::Precondition);
        assert!(
            e.to_string().contains("ib_core module is not loaded"),
            "{e}"
        );
        let uv = Request::Uverbs { name: "rxe2" };
        let e = failure(&uv, &k(Errno::EINVAL), None);
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert_eq!(
            e.to_string(),
            "reading the uverbs char device of rxe2 failed (EINVAL): rxe2 is no longer in this network namespace"
        );
        let e = failure(&uv, &k(Errno::EOPNOTSUPP), None);
        assert_eq!(e.class(), ErrorClass::Precondition);
        assert!(
            e.to_string().contains(
                "reading the uverbs char device of rxe2 failed (EOPNOTSUPP): rxe2 has no uverbs char device: the ib_uverbs module is not loaded"
            ),
            "{e}"
        );
        let e = failure(&uv, &Failure::Io(bad_reply("odd".into())), None);
        assert_eq!(e.class(), ErrorClass::Internal);
        assert!(
            e.to_string()
                .contains("reading the uverbs char device of rxe2"),
            "{e}"
        );

        let e = failure(&Request::EnterNetns(5), &k(Errno::EINVAL), None);
        assert_eq!(e.class(), ErrorClass::InvalidInput);
        assert!(e.to_string().contains("fd 5"), "{e}");

        let e = failure(&Request::List, &k(Errno::EAGAIN), None);
        assert_eq!(e.class(), ErrorClass::Internal);
        assert!(e.to_string().contains("no answer from the kernel"), "{e}");
        let e = failure(&Request::Mode, &k(Errno::ENOMEM), None);
        assert_eq!(e.class(), ErrorClass::Internal);
        assert!(
            e.to_string()
                .ends_with(&format!(": ENOMEM ({})", Errno::ENOMEM.desc())),
            "{e}"
        );
        assert_eq!(errno_name(4095), "errno 4095");

        for e in [
            failure(&add, &k(Errno::ENODEV), None),
            failure(&mv, &k(Errno::EOPNOTSUPP), None),
            failure(&Request::List, &Failure::Io(bad_reply("x".into())), None),
            failure(
                &Request::Uverbs { name: "rxe0" },
                &k(Errno::EOPNOTSUPP),
                None,
            ),
        ] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        let req = Request::AddRxe {
            name: "a",
            netdev: "b",
        };
        assert!(check_name(&req, "netdev name", "enp0s1v0", IFNAMSIZ).is_ok());
        assert!(check_name(&req, "netdev name", &"x".repeat(15), IFNAMSIZ).is_ok());
        for bad in ["", "rxe%d", "a/b", "a b", &"x".repeat(16)] {
            let e = check_name(&req, "netdev name", bad, IFNAMSIZ).unwrap_err();
            assert_eq!(e.class(), ErrorClass::InvalidInput, "{bad:?}");
            assert!(e
                .to_string()
                .starts_with("rdma link add a type rxe netdev b refused"));
        }
        assert!(check_name(
            &req,
            "RDMA device name",
            &"r".repeat(63),
            IB_DEVICE_NAME_MAX
        )
        .is_ok());
        assert!(check_name(
            &req,
            "RDMA device name",
            &"r".repeat(64),
            IB_DEVICE_NAME_MAX
        )
        .is_err());
    }

    /// The real kernel: where ib_core is loaded, listing works and unknown names are NotFound;
    /// where it is not, the socket cannot open and the error says why.
    #[test]
    fn real_kernel_answers_or_says_what_is_missing() {
        let have_ib_core = std::path::Path::new("/sys/module/ib_core").exists();
        let self_ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        match RdmaNetlink::open() {
            Ok(nl) => {
                let links = nl.links().expect("rdma link show over netlink");
                eprintln!("RDMA devices here: {links:?}");
                let mode = nl.netns_mode().expect("rdma system show over netlink");
                eprintln!("RDMA netns mode: {mode:?}");
                let e = nl.delete_link("conrdma-none").unwrap_err();
                assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
                assert!(
                    e.to_string().starts_with(
                        "rdma link delete conrdma-none failed: no RDMA device conrdma-none"
                    ),
                    "{e}"
                );
                let e = nl.uverbs("conrdma-none").unwrap_err();
                assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
                assert!(
                    e.to_string().starts_with(
                        "reading the uverbs char device of conrdma-none failed: no RDMA device conrdma-none"
                    ),
                    "{e}"
                );
                // Where ib_uverbs is loaded every device has one, as sysfs says.
                if std::path::Path::new("/sys/module/ib_uverbs").exists() {
                    for l in &links {
                        match nl.uverbs(&l.name) {
                            Ok(u) => {
                                let sys = format!("/sys/class/infiniband_verbs/{}", u.name);
                                let ibdev = std::fs::read_to_string(format!("{sys}/ibdev"));
                                assert_eq!(ibdev.unwrap().trim(), l.name);
                                let dev = std::fs::read_to_string(format!("{sys}/dev"));
                                assert_eq!(dev.unwrap().trim(), format!("{}:{}", u.major, u.minor));
                            }
                            Err(e) => assert_eq!(e.class(), ErrorClass::Precondition, "{e}"),
                        }
                    }
                }
                // The same view from a socket made on another thread inside our own netns.
                let inside = RdmaNetlink::open_in(self_ns.as_fd()).unwrap();
                assert_eq!(inside.links().unwrap(), links);
            }
            Err(e) if !have_ib_core => {
                assert_eq!(e.class(), ErrorClass::Precondition, "{e}");
                assert!(
                    e.to_string().contains("(EPROTONOSUPPORT)")
                        && e.to_string().contains("ib_core module is not loaded"),
                    "{e}"
                );
                // The thread path fails the same way.
                let e2 = RdmaNetlink::open_in(self_ns.as_fd()).unwrap_err();
                assert_eq!(e2.to_string(), e.to_string());
                eprintln!(
                    "skipping the RDMA netlink requests: this kernel has no ib_core (/sys/module/ib_core is absent): {e}"
                );
            }
            Err(e) => panic!("ib_core is loaded, yet: {e}"),
        }
    }

    #[test]
    fn real_kernel_refuses_a_file_that_is_no_netns() {
        let not_ns = std::fs::File::open("/dev/null").unwrap();
        let e = RdmaNetlink::open_in(not_ns.as_fd()).unwrap_err();
        assert_eq!(e.class(), ErrorClass::InvalidInput, "{e}");
        assert!(
            e.to_string().contains(&format!(
                "entering the network namespace of fd {} failed (EINVAL): the file descriptor is not an open network namespace",
                not_ns.as_raw_fd()
            )),
            "{e}"
        );
    }
}
