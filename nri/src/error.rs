//! Error types: [`NriError`] for everything this crate does, [`RpcError`]
//! for what a [`crate::Handler`] returns to containerd.

use std::io;
use std::path::PathBuf;

/// Errors of the NRI protocol crate.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    /// The plugin name is empty.
    #[error("invalid NRI plugin name {0:?}: it must not be empty")]
    InvalidPluginName(String),

    /// The plugin index is not two ASCII digits.
    #[error("invalid NRI plugin index {0:?}: expected exactly two ASCII digits")]
    InvalidPluginIdx(String),

    /// Neither the environment nor `argv[0]` gave a name and index.
    #[error("cannot determine the NRI plugin id: set NRI_PLUGIN_NAME and NRI_PLUGIN_IDX or name the binary NN-name")]
    NoPluginId,

    /// An event mask uses bits that no supported NRI version defines.
    #[error(
        "invalid NRI event mask {0:#x}: only bits within 0x3fff (NRI v0.12 events) are defined"
    )]
    InvalidEventMask(u32),

    /// None of the events a plugin wants exist at the runtime's NRI level.
    #[error("none of the NRI events {wanted:#x} exist in the runtime's NRI {nri}: it knows only 0x7ff before v0.10.0")]
    NoEventsAtLevel {
        /// The wanted mask.
        wanted: u32,
        /// The runtime's NRI version.
        nri: crate::level::Version,
    },

    /// An event name in a mask list is not known.
    #[error("unknown NRI event name {0:?}: expected an NRI event such as CreateContainer or RemovePodSandbox, or all")]
    UnknownEventName(String),

    /// NRI_PLUGIN_SOCKET does not hold a descriptor number.
    #[error("NRI_PLUGIN_SOCKET={0:?} is not a file descriptor number")]
    InvalidSocketEnv(String),

    /// The descriptor named by NRI_PLUGIN_SOCKET cannot be used.
    #[error("fd {fd} from NRI_PLUGIN_SOCKET is not a usable stream socket: {source}")]
    BadSocketFd {
        /// Descriptor number taken from the environment.
        fd: i32,
        /// Why it was rejected.
        #[source]
        source: io::Error,
    },

    /// The pre-launch socket was already taken by an earlier call.
    #[error("the NRI_PLUGIN_SOCKET descriptor was already taken by an earlier call")]
    SocketAlreadyTaken,

    /// Connecting to the runtime's NRI socket failed.
    #[error("cannot connect to NRI socket {}: {source}", path.display())]
    Connect {
        /// Socket path that was dialled.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// The multiplexed connection failed.
    #[error("NRI connection failed: {0}")]
    Io(#[from] io::Error),

    /// The ttrpc server for the plugin service could not start.
    #[error("cannot start the NRI plugin service: {0}")]
    Server(#[source] ttrpc::Error),

    /// The runtime rejected or never answered RegisterPlugin.
    #[error("NRI plugin registration failed: {0}")]
    Registration(#[source] ttrpc::Error),

    /// The connection closed before registration completed.
    #[error("NRI connection closed before the plugin was registered")]
    ClosedBeforeRegistration,
}

/// An error a [`crate::Handler`] returns for one request.
///
/// containerd reports it as `rpc error: code = <code> desc = <message>`, so
/// the message reaches the CRI error text unchanged. An error on
/// CreateContainer makes container creation fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RpcError {
    /// gRPC status code.
    pub code: ttrpc::Code,
    /// Human-readable reason, passed through verbatim.
    pub message: String,
}

impl RpcError {
    /// An error with an explicit status code.
    pub fn new(code: ttrpc::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// UNKNOWN, the code containerd itself uses for plugin failures.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::UNKNOWN, message)
    }

    /// INVALID_ARGUMENT: the request itself is wrong.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::INVALID_ARGUMENT, message)
    }

    /// FAILED_PRECONDITION: the request cannot be served in the current state.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::FAILED_PRECONDITION, message)
    }

    /// RESOURCE_EXHAUSTED: not enough of a resource is left.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::RESOURCE_EXHAUSTED, message)
    }

    /// UNIMPLEMENTED: the plugin does not serve this call. NRI v0.12+
    /// runtimes then fall back to StateChange where the call has one.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::UNIMPLEMENTED, message)
    }

    /// INTERNAL: a bug or broken invariant in the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::INTERNAL, message)
    }

    /// UNAVAILABLE: a dependency of the plugin is not reachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ttrpc::Code::UNAVAILABLE, message)
    }
}

impl From<RpcError> for ttrpc::Error {
    fn from(e: RpcError) -> Self {
        // RpcStatus is sent as is; any other ttrpc error variant would be
        // turned into UNKNOWN with Debug-formatted text.
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code, e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_becomes_status_with_exact_message() {
        let err: ttrpc::Error = RpcError::resource_exhausted("only 10 Gbit/s left").into();
        match err {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), ttrpc::Code::RESOURCE_EXHAUSTED);
                assert_eq!(status.message(), "only 10 Gbit/s left");
            }
            other => panic!("unexpected error variant: {other:?}"),
        }
    }
}
