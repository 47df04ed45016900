//! The kernel's refusals as one-line errors naming the device and the request.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use super::wire::*;
use super::NetnsMode;
use crate::error::{NodeError, Result};

// --- errors --------------------------------------------------------------------------------------

/// Why a request failed: the kernel said no (or a syscall did), or its answer made no sense.
#[derive(Debug)]
pub(super) enum Failure {
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
pub(super) enum Request<'a> {
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
    pub(super) fn describe(&self) -> String {
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
pub(super) fn check_name(
    req: &Request<'_>,
    what: &str,
    name: &str,
    max_with_nul: usize,
) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty".to_string()
    } else if name.len() >= max_with_nul {
        format!("is longer than {} bytes", max_with_nul - 1)
    } else if name.contains(['%', '/']) || name.chars().any(|c| c.is_whitespace() || c == '\0') {
        "contains %, /, NUL or white space".to_string()
    } else {
        return Ok(());
    };
    Err(NodeError::Invalid(format!(
        "{} refused: the {what} {name:?} {reason}",
        req.describe()
    )))
}

/// Maps a failure onto a one-line error whose class says whose fault it is. `mode` is the netns
/// mode when it was read after the failure.
pub(super) fn failure(req: &Request<'_>, f: &Failure, mode: Option<NetnsMode>) -> NodeError {
    let e = match f {
        Failure::Kernel(e) => e,
        Failure::Io(io) => return internal(req, io.to_string()),
    };
    let what = req.describe();
    let failed = |reason: &str| format!("{what} failed ({}): {reason}", e.describe());
    let errno = Errno::from_raw(e.errno);
    // The node lacks something (module, capability, mode): a precondition.
    let node = |reason: String| NodeError::Config {
        origin: "(the kernel's RDMA subsystem)".into(),
        reason: failed(&reason),
    };
    match (req, errno) {
        (Request::Open, Errno::EPROTONOSUPPORT) => node(
            "the kernel has no RDMA netlink: the ib_core module is not loaded (modprobe ib_core)"
                .into(),
        ),
        (Request::EnterNetns(_), Errno::EINVAL | Errno::EBADF) => NodeError::Invalid(failed(
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
        (Request::AddRxe { netdev, .. }, Errno::ENODEV | Errno::ENOENT) => NodeError::NotFound(
            failed(&format!("no network device {netdev} in this network namespace")),
        ),
        (Request::AddRxe { netdev, .. }, Errno::EEXIST) => NodeError::Invalid(failed(&format!(
            "{netdev} already has an rxe device (one per netdev)"
        ))),
        // The kernel's answer when the name is taken (assign_name in drivers/infiniband/core).
        (Request::AddRxe { name, .. }, Errno::ENFILE) => NodeError::Invalid(failed(&format!(
            "an RDMA device named {name} already exists"
        ))),
        (Request::AddRxe { .. }, Errno::EINVAL) => node(
            "the kernel has no rxe link type (the rdma_rxe module is missing or cannot load) or refused the names"
                .into(),
        ),
        (Request::Delete { name }, Errno::EINVAL) => NodeError::Invalid(failed(&format!(
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
        (Request::Move { name }, Errno::EINVAL | Errno::EBADF) => NodeError::Invalid(failed(
            &format!("the file descriptor is not a network namespace, or {name} just went away"),
        )),
        (Request::Move { name }, Errno::ENODEV) => NodeError::NotFound(failed(&format!(
            "{name} is no longer in this network namespace"
        ))),
        // The kernel answers EINVAL for an index it does not know in the socket's netns.
        (Request::Uverbs { name }, Errno::EINVAL) => NodeError::NotFound(failed(&format!(
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
pub(super) fn internal(req: &Request<'_>, reason: String) -> NodeError {
    NodeError::io(
        "RDMA netlink failed at",
        PathBuf::from(req.describe()),
        io::Error::other(reason),
    )
}
