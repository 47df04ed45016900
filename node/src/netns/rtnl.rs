//! One rtnetlink socket bound to one network namespace, and the few requests a move needs.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::BorrowedFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::limiter::netlink::{parse_replies, serialize, KernelError, Reply};
use conrdma_api::network::Cidr;

/// A link as rtnetlink reports it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub(super) index: u32,
    pub(super) mtu: Option<u32>,
}

/// An rtnetlink socket bound to one network namespace.
pub(super) struct Rt {
    pub(super) sock: Socket,
    pub(super) seq: u32,
}

impl Rt {
    pub(super) fn here() -> io::Result<Rt> {
        Rt::from_socket(Socket::new(NETLINK_ROUTE)?)
    }

    pub(super) fn inside(ns: BorrowedFd<'_>) -> io::Result<Rt> {
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

    pub(super) fn from_socket(mut sock: Socket) -> io::Result<Rt> {
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: older kernels lack these options.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Rt { sock, seq: 0 })
    }

    /// Sends one request with an ACK asked for; returns the link message it carried, if any.
    pub(super) fn call(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Option<LinkMessage>, KernelError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let buf = serialize(payload, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        self.sock.send(&buf, 0).map_err(KernelError::from_io)?;
        let mut link = None;
        for _ in 0..64 {
            let (data, _) = self.sock.recv_from_full().map_err(KernelError::from_io)?;
            for reply in parse_replies(&data, seq).map_err(KernelError::from_io)? {
                match reply {
                    Reply::Ack => return Ok(link),
                    Reply::Error(e) => return Err(e),
                    Reply::Link(l) => link = Some(l),
                }
            }
        }
        Err(KernelError {
            errno: 0,
            ext_msg: Some("no acknowledgement after 64 netlink messages".into()),
        })
    }

    /// The link named `name`, or `None` if this namespace has none.
    pub(super) fn link(&mut self, name: &str) -> std::result::Result<Option<Link>, KernelError> {
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
    pub(super) fn set_link(
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
    pub(super) fn add_address(
        &mut self,
        index: u32,
        addr: Cidr,
    ) -> std::result::Result<(), KernelError> {
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
    pub(super) fn add_route(
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
