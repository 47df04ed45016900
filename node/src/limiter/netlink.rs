//! The netlink limiter: what `ip link set <pf> vf <n> min_tx_rate A max_tx_rate B` does, on a
//! synchronous rtnetlink socket.
//!
//! - set: RTM_SETLINK on the PF (by name) carrying IFLA_VFINFO_LIST / IFLA_VF_INFO /
//!   IFLA_VF_RATE {vf, min_tx_rate, max_tx_rate}, with an ACK requested;
//! - get and counters: RTM_GETLINK on the PF with IFLA_EXT_MASK = RTEXT_FILTER_VF, then the PF's
//!   IFLA_VFINFO_LIST: IFLA_VF_RATE (or the older IFLA_VF_TX_RATE) and IFLA_VF_STATS.
//!
//! The kernel's answers are mapped to one-line reasons: EOPNOTSUPP (no VF rate control in the
//! driver), EINVAL (a value the driver refuses; for a minimum this is expected on drivers like
//! igb, and the maximum is then set alone), ENODEV, EPERM, EAGAIN; the kernel's extended-ack text
//! is appended when it sends one.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoRate, VfStats,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use super::{limiter_error, Applied, RateLimiter, VfCounters, VfRate};
use crate::error::{ErrorClass, NodeError, Result};

/// Flags of an NLMSG_ERROR header: the request was capped, extended-ack TLVs follow.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended-ack attribute carrying the kernel's message text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// Talks to the kernel of the network namespace the calling thread is in.
#[derive(Debug, Default)]
pub struct NetlinkLimiter {
    seq: AtomicU32,
}

impl NetlinkLimiter {
    pub fn new() -> NetlinkLimiter {
        NetlinkLimiter {
            seq: AtomicU32::new(1),
        }
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed).max(1)
    }

    /// The PF's link message with its VF list.
    fn pf_link(&self, pf: &str, vf: u32) -> Result<LinkMessage> {
        let seq = self.next_seq();
        let req = get_link_request(pf, seq);
        let replies = transact(&req, seq).map_err(|e| io_error(pf, vf, "reading", e))?;
        for reply in replies {
            match reply {
                Reply::Link(msg) => return Ok(msg),
                Reply::Error(e) => return Err(kernel_error(pf, vf, "reading", None, &e)),
                Reply::Ack => {}
            }
        }
        Err(limiter_error(
            pf,
            vf,
            "the kernel answered RTM_GETLINK without a link message".into(),
            ErrorClass::Internal,
        ))
    }

    fn set_rate(&self, pf: &str, vf: u32, rate: VfRate) -> std::result::Result<(), KernelError> {
        let seq = self.next_seq();
        let req = set_rate_request(pf, vf, rate, seq);
        let replies = transact(&req, seq).map_err(KernelError::from_io)?;
        for reply in replies {
            match reply {
                Reply::Ack => return Ok(()),
                Reply::Error(e) => return Err(e),
                Reply::Link(_) => {}
            }
        }
        Err(KernelError {
            errno: 0,
            ext_msg: Some("no acknowledgement from the kernel".into()),
        })
    }
}

impl RateLimiter for NetlinkLimiter {
    fn kind(&self) -> &'static str {
        super::LimiterKind::Netlink.as_str()
    }

    fn set(&self, pf: &str, vf: u32, rate: VfRate) -> Result<Applied> {
        super::check_rate(rate, pf, vf)?;
        let mut applied = rate;
        let mut note = None;
        match self.set_rate(pf, vf, rate) {
            Ok(()) => {}
            Err(e) if e.errno == Errno::EINVAL as i32 && rate.min_mbps > 0 => {
                // Drivers such as igb refuse any minimum: keep the ceiling, drop the guarantee.
                let max_only = VfRate::new(0, rate.max_mbps);
                self.set_rate(pf, vf, max_only)
                    .map_err(|e2| kernel_error(pf, vf, "setting", Some(max_only), &e2))?;
                applied = max_only;
                note = Some(format!(
                    "the driver of {pf} refused min_tx_rate {} Mbps for VF {vf} ({}): the guarantee is not enforced in hardware, max_tx_rate {} Mbps is",
                    rate.min_mbps,
                    e.describe(),
                    rate.max_mbps
                ));
            }
            Err(e) => return Err(kernel_error(pf, vf, "setting", Some(rate), &e)),
        }
        // Read back what the driver reports; a driver that reports nothing keeps what we set.
        let read_back = self.get(pf, vf).unwrap_or(applied);
        Ok(Applied {
            requested: rate,
            applied: read_back,
            min_enforced: rate.min_mbps == 0 || note.is_none(),
            note,
        })
    }

    fn get(&self, pf: &str, vf: u32) -> Result<VfRate> {
        let msg = self.pf_link(pf, vf)?;
        vf_entry(&msg, pf, vf).map(|e| e.rate)
    }

    fn counters(&self, pf: &str, vf: u32) -> Result<VfCounters> {
        let msg = self.pf_link(pf, vf)?;
        vf_entry(&msg, pf, vf).map(|e| e.counters)
    }
}

/// A kernel refusal: the positive errno and the extended-ack text, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub errno: i32,
    pub ext_msg: Option<String>,
}

impl KernelError {
    pub(crate) fn from_io(e: io::Error) -> KernelError {
        KernelError {
            errno: e.raw_os_error().unwrap_or(0),
            ext_msg: if e.raw_os_error().is_some() {
                None
            } else {
                Some(e.to_string())
            },
        }
    }

    /// The errno's symbolic name (`EINVAL`), as nix spells it.
    fn name(&self) -> String {
        match Errno::from_raw(self.errno) {
            _ if self.errno == 0 => "error".into(),
            Errno::UnknownErrno => format!("errno {}", self.errno),
            e => format!("{e:?}"),
        }
    }

    /// `EINVAL` or `EINVAL: <kernel text>`.
    pub fn describe(&self) -> String {
        match &self.ext_msg {
            Some(m) if !m.is_empty() => format!("{}: {m}", self.name()),
            _ => self.name(),
        }
    }
}

/// Maps a refusal onto a one-line reason and an error class.
pub fn kernel_error(
    pf: &str,
    vf: u32,
    action: &str,
    rate: Option<VfRate>,
    e: &KernelError,
) -> NodeError {
    use Errno::*;
    let what = rate.map_or(String::new(), |r| format!(" {r}"));
    let (reason, class) = match Errno::from_raw(e.errno) {
        EOPNOTSUPP => (
            format!(
                "{action}{what} failed ({}): the driver of {pf} has no VF rate control (not an SR-IOV PF, or its driver cannot limit VFs)",
                e.describe()
            ),
            ErrorClass::Precondition,
        ),
        EINVAL | ERANGE => (
            format!(
                "{action}{what} failed ({}): the driver refused the value (VF index out of range, a rate above the link speed, or a rate the driver does not support)",
                e.describe()
            ),
            ErrorClass::Precondition,
        ),
        ENODEV => (
            format!("{action} failed ({}): no network device {pf}", e.describe()),
            ErrorClass::NotFound,
        ),
        EPERM | EACCES => (
            format!(
                "{action}{what} failed ({}): changing VF rates needs CAP_NET_ADMIN in the PF's network namespace",
                e.describe()
            ),
            ErrorClass::Precondition,
        ),
        EAGAIN => (
            format!(
                "{action}{what} failed ({}): the driver is not ready (link down or at a speed it cannot limit); retry once the link is up",
                e.describe()
            ),
            ErrorClass::Precondition,
        ),
        _ => (
            format!("{action}{what} failed ({})", e.describe()),
            ErrorClass::Internal,
        ),
    };
    limiter_error(pf, vf, reason, class)
}

fn io_error(pf: &str, vf: u32, action: &str, e: io::Error) -> NodeError {
    if e.raw_os_error().is_some() {
        kernel_error(pf, vf, action, None, &KernelError::from_io(e))
    } else {
        limiter_error(
            pf,
            vf,
            format!("{action} over rtnetlink failed: {e}"),
            ErrorClass::Internal,
        )
    }
}

/// One VF's entry in a PF's VF info list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfEntry {
    pub rate: VfRate,
    pub counters: VfCounters,
}

/// Finds VF `vf` in the PF's IFLA_VFINFO_LIST.
pub fn vf_entry(msg: &LinkMessage, pf: &str, vf: u32) -> Result<VfEntry> {
    let list = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::VfInfoList(l) => Some(l),
        _ => None,
    });
    let num_vf = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::NumVf(n) => Some(*n),
        _ => None,
    });
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Err(limiter_error(
            pf,
            vf,
            "the PF reports no VFs (not an SR-IOV PF, or sriov_numvfs is 0)".into(),
            ErrorClass::NotFound,
        ));
    };
    for info in list {
        if let Some(entry) = parse_vf_info(info, vf) {
            return Ok(entry);
        }
    }
    Err(limiter_error(
        pf,
        vf,
        format!(
            "the PF has no VF {vf} (it reports {} VFs)",
            num_vf.unwrap_or(list.len() as u32)
        ),
        ErrorClass::NotFound,
    ))
}

fn parse_vf_info(info: &LinkVfInfo, vf: u32) -> Option<VfEntry> {
    let id = info.0.iter().find_map(|i| match i {
        VfInfo::Rate(r) => Some(r.vf_id),
        VfInfo::TxRate(r) => Some(r.vf_id),
        VfInfo::Mac(m) => Some(m.vf_id),
        _ => None,
    })?;
    if id != vf {
        return None;
    }
    let mut entry = VfEntry {
        rate: VfRate::NONE,
        counters: VfCounters::default(),
    };
    let mut have_rate = false;
    for i in &info.0 {
        match i {
            VfInfo::Rate(r) => {
                entry.rate = VfRate::new(r.min_tx_rate.into(), r.max_tx_rate.into());
                have_rate = true;
            }
            VfInfo::TxRate(r) if !have_rate => entry.rate.max_mbps = r.rate.into(),
            VfInfo::Stats(stats) => {
                for s in stats {
                    match s {
                        VfStats::TxBytes(v) => entry.counters.tx_bytes = *v,
                        VfStats::RxBytes(v) => entry.counters.rx_bytes = *v,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(entry)
}

fn link_message(pf: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(pf.to_string()));
    msg
}

pub(crate) fn serialize(payload: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// RTM_SETLINK on `pf` with one IFLA_VF_RATE, ACK requested.
pub fn set_rate_request(pf: &str, vf: u32, rate: VfRate, seq: u32) -> Vec<u8> {
    let mut msg = link_message(pf);
    // `check` keeps both values within u32.
    let min = u32::try_from(rate.min_mbps).unwrap_or(u32::MAX);
    let max = u32::try_from(rate.max_mbps).unwrap_or(u32::MAX);
    msg.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![
            VfInfo::Rate(VfInfoRate::new(vf, min, max)),
        ])]));
    serialize(
        RouteNetlinkMessage::SetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// RTM_GETLINK on `pf` asking for the VF info list.
pub fn get_link_request(pf: &str, seq: u32) -> Vec<u8> {
    let mut msg = link_message(pf);
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
    serialize(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST, seq)
}

/// A parsed answer to one of our requests.
#[derive(Debug)]
pub enum Reply {
    Ack,
    Error(KernelError),
    Link(LinkMessage),
}

/// Parses every netlink message in one datagram, keeping those for `seq`.
pub fn parse_replies(mut buf: &[u8], seq: u32) -> io::Result<Vec<Reply>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "netlink message length {len} does not fit the {} bytes received",
                    buf.len()
                ),
            ));
        }
        let one = &buf[..len];
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad netlink reply: {e}"),
            )
        })?;
        if msg.header.sequence_number == seq {
            match msg.payload {
                NetlinkPayload::Error(e) => match e.code {
                    None => out.push(Reply::Ack),
                    Some(code) => out.push(Reply::Error(KernelError {
                        errno: code.get().abs(),
                        ext_msg: ext_ack_message(msg.header.flags, &e.header),
                    })),
                },
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    out.push(Reply::Link(l))
                }
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(out)
}

/// The kernel's extended-ack text from an NLMSG_ERROR payload (after the errno): the original
/// request header (and body unless capped), then TLVs.
pub fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    let orig_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize
    };
    let mut tlvs = payload.get(((orig_len + 3) & !3)..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            let s = String::from_utf8_lossy(&text[..end]).trim().to_string();
            return (!s.is_empty()).then_some(s);
        }
        tlvs = &tlvs[((len + 3) & !3).min(tlvs.len())..];
    }
    None
}

/// Sends one request on a fresh socket and reads until its answer is complete (an ACK or error,
/// or a link message for a GET).
fn transact(req: &[u8], seq: u32) -> io::Result<Vec<Reply>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Best effort: older kernels lack these options.
    let _ = sock.set_ext_ack(true);
    let _ = sock.set_cap_ack(true);
    sock.send(req, 0)?;
    let mut all = Vec::new();
    // A GET without NLM_F_ACK ends with its one link message; a SET ends with its ACK/error.
    for _ in 0..64 {
        let (buf, _) = sock.recv_from_full()?;
        let replies = parse_replies(&buf, seq)?;
        let done = !replies.is_empty();
        all.extend(replies);
        if done {
            return Ok(all);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no answer to our request after 64 netlink messages",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::ErrorMessage;
    use netlink_packet_route::link::VfInfoTxRate;
    use std::num::NonZeroI32;

    fn parse(buf: &[u8]) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::deserialize(buf).unwrap()
    }

    #[test]
    fn set_request_carries_one_vf_rate() {
        let buf = set_rate_request("ens1f0", 3, VfRate::new(10_000, 25_000), 7);
        let msg = parse(&buf);
        assert_eq!(msg.header.sequence_number, 7);
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msg.header.message_type, 19, "RTM_SETLINK");
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(l)) = msg.payload else {
            panic!("not a SETLINK: {:?}", msg.payload);
        };
        assert_eq!(l.header.index, 0, "addressed by name");
        assert!(l
            .attributes
            .contains(&LinkAttribute::IfName("ens1f0".into())));
        let list = l
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::VfInfoList(v) => Some(v.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            list,
            vec![LinkVfInfo(vec![VfInfo::Rate(VfInfoRate::new(
                3, 10_000, 25_000
            ))])]
        );
        // The raw bytes: IFLA_VF_RATE (type 6) with {vf, min, max} as native u32s.
        let mut rate = vec![16u8, 0, 6, 0];
        for v in [3u32, 10_000, 25_000] {
            rate.extend_from_slice(&v.to_ne_bytes());
        }
        assert!(
            buf.windows(rate.len()).any(|w| w == rate.as_slice()),
            "IFLA_VF_RATE bytes missing"
        );
    }

    #[test]
    fn get_request_asks_for_vfs() {
        let msg = parse(&get_link_request("enp1s0", 9));
        assert_eq!(msg.header.message_type, 18, "RTM_GETLINK");
        assert_eq!(msg.header.flags, NLM_F_REQUEST);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(l)) = msg.payload else {
            panic!("not a GETLINK");
        };
        assert!(l
            .attributes
            .contains(&LinkAttribute::ExtMask(vec![LinkExtentMask::Vf])));
    }

    fn pf_with_vfs() -> LinkMessage {
        let mut l = link_message("ens1f0");
        l.attributes.push(LinkAttribute::NumVf(2));
        l.attributes.push(LinkAttribute::VfInfoList(vec![
            LinkVfInfo(vec![
                VfInfo::Rate(VfInfoRate::new(0, 0, 300)),
                VfInfo::Stats(vec![VfStats::TxBytes(5), VfStats::RxBytes(6)]),
            ]),
            LinkVfInfo(vec![
                VfInfo::TxRate(VfInfoTxRate::new(1, 50)),
                VfInfo::Rate(VfInfoRate::new(1, 10, 100)),
                VfInfo::Stats(vec![
                    VfStats::RxPackets(1),
                    VfStats::TxBytes(1_000),
                    VfStats::RxBytes(2_000),
                ]),
            ]),
        ]));
        l
    }

    #[test]
    fn vf_info_list_is_read_per_vf() {
        // Through the wire format, as the kernel would send it.
        let mut header = NetlinkHeader::default();
        header.sequence_number = 4;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(pf_with_vfs())),
        );
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        let mut replies = parse_replies(&buf, 4).unwrap();
        assert!(
            parse_replies(&buf, 5).unwrap().is_empty(),
            "other seq ignored"
        );
        let Some(Reply::Link(l)) = replies.pop() else {
            panic!("no link reply");
        };
        let e1 = vf_entry(&l, "ens1f0", 1).unwrap();
        assert_eq!(e1.rate, VfRate::new(10, 100));
        assert_eq!(
            e1.counters,
            VfCounters {
                tx_bytes: 1_000,
                rx_bytes: 2_000
            }
        );
        assert_eq!(vf_entry(&l, "ens1f0", 0).unwrap().rate, VfRate::new(0, 300));
        let e = vf_entry(&l, "ens1f0", 5).unwrap_err();
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert!(
            e.to_string().contains("has no VF 5 (it reports 2 VFs)"),
            "{e}"
        );
        let e = vf_entry(&link_message("lo"), "lo", 0).unwrap_err();
        assert!(e.to_string().contains("reports no VFs"), "{e}");
    }

    #[test]
    fn old_kernels_tx_rate_is_the_max() {
        let info = LinkVfInfo(vec![VfInfo::TxRate(VfInfoTxRate::new(2, 70))]);
        assert_eq!(parse_vf_info(&info, 2).unwrap().rate, VfRate::new(0, 70));
        assert!(parse_vf_info(&info, 1).is_none());
    }

    fn error_datagram(seq: u32, errno: i32, flags: u16, ext: Option<&str>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut orig = set_rate_request("eth0", 0, VfRate::new(1, 2), seq);
        orig.truncate(NLMSG_HDRLEN);
        if let Some(text) = ext {
            let mut v = text.as_bytes().to_vec();
            v.push(0);
            let len = (4 + v.len()) as u16;
            orig.extend_from_slice(&len.to_ne_bytes());
            orig.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            orig.extend_from_slice(&v);
            while orig.len() % 4 != 0 {
                orig.push(0);
            }
        }
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(-errno);
        e.header = orig;
        let mut msg: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::new(header, NetlinkPayload::Error(e));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn errors_and_extended_acks_are_read() {
        let buf = error_datagram(
            3,
            22,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            Some("VF rate out of range"),
        );
        let replies = parse_replies(&buf, 3).unwrap();
        let [Reply::Error(e)] = replies.as_slice() else {
            panic!("{replies:?}");
        };
        assert_eq!(e.errno, 22);
        assert_eq!(e.describe(), "EINVAL: VF rate out of range");
        let buf = error_datagram(3, 95, NLM_F_CAPPED, None);
        let replies = parse_replies(&buf, 3).unwrap();
        let [Reply::Error(e)] = replies.as_slice() else {
            panic!("{replies:?}");
        };
        assert_eq!(e.describe(), "EOPNOTSUPP");
        // An ACK is an error message with code 0.
        let mut header = NetlinkHeader::default();
        header.sequence_number = 8;
        let mut msg: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::new(header, NetlinkPayload::Error(ErrorMessage::default()));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        assert!(matches!(
            parse_replies(&buf, 8).unwrap().as_slice(),
            [Reply::Ack]
        ));
    }

    #[test]
    fn errno_messages_are_clear() {
        let k = |errno| KernelError {
            errno,
            ext_msg: None,
        };
        let r = Some(VfRate::new(0, 300));
        let e = kernel_error("lo", 0, "setting", r, &k(95));
        assert_eq!(e.class(), ErrorClass::Precondition);
        assert_eq!(
            e.to_string(),
            "VF rate on lo vf 0: setting min_tx_rate 0 Mbps, max_tx_rate 300 Mbps failed (EOPNOTSUPP): the driver of lo has no VF rate control (not an SR-IOV PF, or its driver cannot limit VFs)"
        );
        let e = kernel_error("eth0", 9, "setting", r, &k(22));
        assert!(
            e.to_string().contains("(EINVAL): the driver refused"),
            "{e}"
        );
        let e = kernel_error("nope0", 0, "reading", None, &k(19));
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert!(e.to_string().contains("no network device nope0"), "{e}");
        assert!(kernel_error("a", 0, "setting", r, &k(1))
            .to_string()
            .contains("CAP_NET_ADMIN"));
        assert!(kernel_error("a", 0, "setting", r, &k(11))
            .to_string()
            .contains("link down"));
    }

    /// Runs `f` on a thread in a network namespace of its own (namespaces are per thread), so
    /// the test touches no device of the host.
    fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET): the tests run as root");
            f()
        })
        .join()
        .expect("netns thread")
    }

    #[test]
    fn real_kernel_refuses_devices_without_vfs_clearly() {
        let (set, get, counters, missing, reset) = in_fresh_netns(|| {
            let l = NetlinkLimiter::new();
            (
                l.set("lo", 0, VfRate::new(0, 300)),
                l.get("lo", 0),
                l.counters("lo", 0),
                l.set("nope0", 0, VfRate::new(0, 300)),
                l.reset("lo", 0),
            )
        });
        let e = set.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Precondition, "{e}");
        assert!(e.to_string().contains("(EOPNOTSUPP)"), "{e}");
        assert!(e.to_string().contains("has no VF rate control"), "{e}");
        for e in [get.unwrap_err(), counters.unwrap_err()] {
            assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
            assert!(
                e.to_string().contains("lo vf 0: the PF reports no VFs"),
                "{e}"
            );
        }
        let e = missing.unwrap_err();
        assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
        assert!(e.to_string().contains("no network device nope0"), "{e}");
        assert!(reset.is_err());
    }

    #[test]
    fn real_kernel_veth_has_no_vfs_either() {
        let out = in_fresh_netns(|| {
            let ok = std::process::Command::new("ip")
                .args(["link", "add", "cv0", "type", "veth", "peer", "name", "cv1"])
                .status();
            match ok {
                Ok(s) if s.success() => {
                    Some(NetlinkLimiter::new().set("cv0", 0, VfRate::new(5, 10)))
                }
                // No iproute2 or no veth module: the lo test covers the refusal path.
                _ => None,
            }
        });
        if let Some(r) = out {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("cv0 vf 0") && e.contains("EOPNOTSUPP"), "{e}");
        }
    }
}
