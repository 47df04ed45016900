//! The one error type of the node library. Every message is a single line that names what was wrong
//! and, for user input, what is accepted, because it ends up verbatim in a CRI error or an HTTP body.

use std::path::PathBuf;

pub use conrdma_api::error::{ApiError, ErrorClass};

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad cluster-side input (an annotation, a rate, a record).
    #[error(transparent)]
    Api(#[from] ApiError),

    #[error("{0}")]
    Insufficient(String),

    #[error("{0}")]
    NotFound(String),

    /// Bad input that is not an annotation or a rate (e.g. a command-line value).
    #[error("{0}")]
    Invalid(String),

    #[error("invalid node config {origin}: {reason}")]
    Config { origin: String, reason: String },

    #[error("cannot read {path}: {reason}")]
    Discovery { path: PathBuf, reason: String },

    #[error("ledger {path} is unreadable ({reason}); refusing to start rather than double-book VFs: fix or move the file")]
    LedgerCorrupt { path: PathBuf, reason: String },

    /// A VF rate could not be set or read; `class` says whose fault it is.
    #[error("VF rate on {pf} vf {vf}: {reason}")]
    Limiter {
        pf: String,
        vf: u32,
        reason: String,
        class: ErrorClass,
    },

    /// Moving a VF netdev (or its RDMA device) into or out of a pod's network namespace failed.
    #[error("{reason}")]
    PodNetwork { reason: String, class: ErrorClass },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            NodeError::Api(e) => e.class(),
            NodeError::Invalid(_) => ErrorClass::InvalidInput,
            NodeError::Insufficient(_) => ErrorClass::Exhausted,
            NodeError::NotFound(_) => ErrorClass::NotFound,
            NodeError::Config { .. }
            | NodeError::Discovery { .. }
            | NodeError::LedgerCorrupt { .. } => ErrorClass::Precondition,
            NodeError::Limiter { class, .. } | NodeError::PodNetwork { class, .. } => *class,
            NodeError::Io { .. } => ErrorClass::Internal,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        NodeError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
