//! The plugin's error type and its mapping onto ttrpc status codes, so containerd (and through it the
//! CRI caller) sees both the class of failure and our one-line message.

use conrdma_api::{ApiError, ErrorClass};
use conrdma_node::NodeError;
use conrdma_nri::protobuf::Enum;
use conrdma_nri::ttrpc::Code;
use conrdma_nri::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Core(#[from] NodeError),
    #[error("NRI request without {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Nri(#[from] conrdma_nri::NriError),
    /// The pod's request is malformed (annotations, rates).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The plugin has no node yet: its configuration failed; containerd may retry.
    #[error("node not ready: {0}")]
    NotReady(String),
    /// The VF the ledger holds for the pod is gone from the node (driver unbound, device removed).
    #[error("VF {vf} of {pf} held by this pod is no longer on the node (driver unbound?)")]
    VfGone { pf: String, vf: u32 },
    /// The plugin could not set itself up (metrics, sockets): a startup failure.
    #[error("{0}")]
    Setup(String),
    /// containerd's CRI could not be asked (the sweep retries).
    #[error("containerd CRI: {0}")]
    Cri(String),
    /// The controller's Prometheus metrics could not be created (a name clash: a bug).
    #[error("conserve metrics cannot be registered: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics address is taken or not ours: a startup failure.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A background thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

impl PluginError {
    pub fn code(&self) -> Code {
        match self {
            PluginError::Core(e) => class_code(e.class()),
            PluginError::Api(e) => class_code(e.class()),
            PluginError::NotReady(_) => Code::UNAVAILABLE,
            PluginError::VfGone { .. } => Code::FAILED_PRECONDITION,
            PluginError::Malformed(_) => Code::INVALID_ARGUMENT,
            PluginError::Nri(_)
            | PluginError::Setup(_)
            | PluginError::Metrics(_)
            | PluginError::MetricsListen { .. }
            | PluginError::Thread { .. } => Code::INTERNAL,
            PluginError::Cri(_) => Code::UNAVAILABLE,
        }
    }
}

/// The ttrpc code of a failure class.
fn class_code(class: ErrorClass) -> Code {
    Code::from_i32(class.grpc_code()).unwrap_or(Code::INTERNAL)
}

impl From<PluginError> for RpcError {
    fn from(e: PluginError) -> Self {
        // The prefix tells the user which component refused their pod.
        RpcError::new(e.code(), format!("conrdma: {e}"))
    }
}
