//! The nldev wire format: constants, request encoding and reply decoding.

use std::io;

use nix::errno::Errno;

use super::NetnsMode;

// From include/uapi/rdma/rdma_netlink.h (checked against linux-libc-dev 6.1 and torvalds/linux).
/// `RDMA_NL_NLDEV`: the nldev client in the message type's upper bits.
pub(super) const RDMA_NL_NLDEV: u16 = 5;
/// `enum rdma_nldev_command`.
pub(super) const RDMA_NLDEV_CMD_GET: u16 = 1;
pub(super) const RDMA_NLDEV_CMD_SET: u16 = 2;
pub(super) const RDMA_NLDEV_CMD_NEWLINK: u16 = 3;
pub(super) const RDMA_NLDEV_CMD_DELLINK: u16 = 4;
pub(super) const RDMA_NLDEV_CMD_PORT_GET: u16 = 5;
pub(super) const RDMA_NLDEV_CMD_SYS_GET: u16 = 6;
/// A client's char device for one device (Linux 5.3; nldev_get_chardev in
/// drivers/infiniband/core/nldev.c): a plain request, answered by one message, no dump.
pub(super) const RDMA_NLDEV_CMD_GET_CHARDEV: u16 = 15;
/// `enum rdma_nldev_attr`.
pub(super) const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1; // u32
pub(super) const RDMA_NLDEV_ATTR_DEV_NAME: u16 = 2; // string
pub(super) const RDMA_NLDEV_ATTR_PORT_INDEX: u16 = 3; // u32
pub(super) const RDMA_NLDEV_ATTR_NDEV_NAME: u16 = 51; // string
pub(super) const RDMA_NLDEV_ATTR_LINK_TYPE: u16 = 65; // string, e.g. "rxe"
pub(super) const RDMA_NLDEV_SYS_ATTR_NETNS_MODE: u16 = 66; // u8: 1 shared, 0 exclusive
pub(super) const RDMA_NLDEV_NET_NS_FD: u16 = 68; // u32
/// GET_CHARDEV's attributes. A reply also carries UVERBS_DRIVER_ID (73, u32), CHARDEV_ABI (71,
/// u64) and, on architectures without efficient unaligned access, PAD (0) before each u64.
pub(super) const RDMA_NLDEV_ATTR_CHARDEV_TYPE: u16 = 69; // string: the client, "uverbs", "umad", ...
pub(super) const RDMA_NLDEV_ATTR_CHARDEV_NAME: u16 = 70; // string: the /dev node name, no directory
pub(super) const RDMA_NLDEV_ATTR_CHARDEV: u16 = 72; // u64: huge_encode_dev(dev_t), see decode_dev
/// The client asked for (nldev_policy: NLA_NUL_STRING of RDMA_NLDEV_ATTR_CHARDEV_TYPE_SIZE, 32).
pub(super) const CHARDEV_TYPE_UVERBS: &str = "uverbs";

// From include/uapi/linux/netlink.h.
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
/// NLM_F_ROOT | NLM_F_MATCH.
pub(super) const NLM_F_DUMP: u16 = 0x300;
/// On NLMSG_ERROR: the original request was not echoed (NETLINK_CAP_ACK) / ack TLVs follow.
pub(super) const NLM_F_CAPPED: u16 = 0x100;
pub(super) const NLM_F_ACK_TLVS: u16 = 0x200;
/// `enum nlmsgerr_attrs`: the extended ack's message text.
pub(super) const NLMSGERR_ATTR_MSG: u16 = 1;
/// NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the type's top two bits.
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(super) const NLMSG_HDRLEN: usize = 16;

/// Name limits the kernel enforces: IB_DEVICE_NAME_MAX (include/rdma/ib_verbs.h) and IFNAMSIZ,
/// both counting the NUL.
pub(super) const IB_DEVICE_NAME_MAX: usize = 64;
pub(super) const IFNAMSIZ: usize = 16;

/// How long to wait for each answer: the kernel answers at once, but a VM under software
/// emulation can be slow to create an rxe device.
pub(super) const REPLY_TIMEOUT_SECS: i64 = 30;

/// `RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, op)`.
pub(super) const fn nldev_type(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

// --- encoding ------------------------------------------------------------------------------------

/// An attribute value we send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value<'a> {
    U32(u32),
    /// Sent NUL-terminated.
    Str(&'a str),
}

/// One nldev message: header, then each attribute padded to 4 bytes.
pub(super) fn encode(op: u16, flags: u16, seq: u32, attrs: &[(u16, Value<'_>)]) -> Vec<u8> {
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

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// RDMA_NLDEV_CMD_GET dump: every device.
pub(super) fn get_dump_request(seq: u32) -> Vec<u8> {
    encode(RDMA_NLDEV_CMD_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, &[])
}

/// RDMA_NLDEV_CMD_PORT_GET dump of one device's ports (the kernel requires DEV_INDEX).
pub(super) fn port_dump_request(index: u32, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_PORT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &[(RDMA_NLDEV_ATTR_DEV_INDEX, Value::U32(index))],
    )
}

/// RDMA_NLDEV_CMD_NEWLINK: a `link_type` device named `name` on `netdev`.
pub(super) fn newlink_request(name: &str, link_type: &str, netdev: &str, seq: u32) -> Vec<u8> {
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
pub(super) fn dellink_request(index: u32, seq: u32) -> Vec<u8> {
    encode(
        RDMA_NLDEV_CMD_DELLINK,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &[(RDMA_NLDEV_ATTR_DEV_INDEX, Value::U32(index))],
    )
}

/// RDMA_NLDEV_CMD_SET moving device `index` to the netns open as fd `netns_fd`.
pub(super) fn set_netns_request(index: u32, netns_fd: u32, seq: u32) -> Vec<u8> {
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
pub(super) fn sys_get_request(seq: u32) -> Vec<u8> {
    encode(RDMA_NLDEV_CMD_SYS_GET, NLM_F_REQUEST | NLM_F_ACK, seq, &[])
}

/// RDMA_NLDEV_CMD_GET_CHARDEV: the char device client `chardev_type` made for device `index`
/// (without PORT_INDEX: uverbs refuses a port with EINVAL).
pub(super) fn get_chardev_request(index: u32, chardev_type: &str, seq: u32) -> Vec<u8> {
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
pub(super) struct Msg {
    pub(super) kind: u16,
    pub(super) attrs: Vec<(u16, Vec<u8>)>,
}

impl Msg {
    pub(super) fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    pub(super) fn u32(&self, kind: u16) -> Option<u32> {
        let v = self.attr(kind)?;
        Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
    }

    pub(super) fn u64(&self, kind: u16) -> Option<u64> {
        let v = self.attr(kind)?;
        Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
    }

    pub(super) fn u8(&self, kind: u16) -> Option<u8> {
        self.attr(kind)?.first().copied()
    }

    pub(super) fn str(&self, kind: u16) -> Option<String> {
        let v = self.attr(kind)?;
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        Some(String::from_utf8_lossy(&v[..end]).into_owned())
    }
}

/// A kernel refusal: the positive errno and the extended-ack text, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KernelError {
    pub(super) errno: i32,
    pub(super) ext_msg: Option<String>,
}

impl KernelError {
    pub(super) fn errno(errno: i32) -> KernelError {
        KernelError {
            errno,
            ext_msg: None,
        }
    }

    /// `EINVAL` or `EINVAL: <kernel text>`.
    pub(super) fn describe(&self) -> String {
        let name = errno_name(self.errno);
        match &self.ext_msg {
            Some(m) if !m.is_empty() => format!("{name}: {m}"),
            _ => name,
        }
    }
}

pub(super) fn errno_name(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("errno {errno}"),
        e => format!("{e:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Msg(Msg),
    /// NLMSG_ERROR with code 0.
    Ack,
    /// NLMSG_ERROR, or NLMSG_DONE ending a dump with an error.
    Error(KernelError),
    /// NLMSG_DONE ending a dump cleanly.
    Done,
}

pub(super) fn bad_reply(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Every netlink message in one datagram that answers request `seq` (others are stale answers to
/// a request given up on, and are skipped).
pub(super) fn parse_replies(mut buf: &[u8], seq: u32) -> io::Result<Vec<Reply>> {
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
pub(super) fn parse_attrs(mut buf: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
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
pub(super) fn ext_ack_message(kind: u16, flags: u16, after_code: &[u8]) -> Option<String> {
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
pub(super) fn device_of(msg: &Msg) -> io::Result<(u32, String)> {
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
pub(super) fn port1_netdev(ports: &[Msg]) -> Option<String> {
    ports
        .iter()
        .filter(|m| m.kind == nldev_type(RDMA_NLDEV_CMD_PORT_GET))
        .find(|m| m.u32(RDMA_NLDEV_ATTR_PORT_INDEX) == Some(1))
        .and_then(|m| m.str(RDMA_NLDEV_ATTR_NDEV_NAME))
        .filter(|n| !n.is_empty())
}

/// The netns mode in a SYS_GET reply.
pub(super) fn netns_mode_of(msgs: &[Msg]) -> io::Result<NetnsMode> {
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
pub(super) fn chardev_of(msgs: &[Msg]) -> io::Result<crate::discovery::CharDev> {
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
pub(super) fn decode_dev(dev: u64) -> (i64, i64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    // 32 bits each, so both fit.
    (major as i64, minor as i64)
}
