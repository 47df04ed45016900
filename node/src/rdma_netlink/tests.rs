//! Unit tests of the RDMA netlink client: byte-exact requests, parsed replies, error lines.
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
