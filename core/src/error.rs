//! The one error type of the core library. Every message is a single line that names what was wrong
//! and, for user input, what is accepted, because it ends up verbatim in a CRI error or an HTTP body.

use std::path::PathBuf;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// What kind of failure an error is, so each front end can map it onto its wire status
/// (ttrpc/gRPC code or HTTP status) without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller sent something malformed (gRPC INVALID_ARGUMENT, HTTP 400).
    InvalidInput,
    /// Well-formed, but the node cannot satisfy it now (gRPC RESOURCE_EXHAUSTED, HTTP 409).
    Exhausted,
    /// Names something this node does not have (gRPC NOT_FOUND, HTTP 404).
    NotFound,
    /// The node itself is misconfigured or its state unreadable (gRPC FAILED_PRECONDITION, HTTP 503).
    Precondition,
    /// I/O failed underneath us (gRPC INTERNAL, HTTP 500).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid rate {value:?}: {reason}; accepted: {accepted}", accepted = crate::rate::ACCEPTED_FORM)]
    InvalidRate { value: String, reason: String },

    #[error("invalid annotation {key}={value:?}: {reason}; accepted: {accepted}")]
    InvalidAnnotation {
        key: String,
        value: String,
        reason: String,
        accepted: String,
    },

    #[error("unknown annotation {key}: accepted keys under {prefix} are {known}", prefix = crate::ANNOTATION_PREFIX)]
    UnknownAnnotation { key: String, known: String },

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

impl CoreError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CoreError::InvalidRate { .. }
            | CoreError::InvalidAnnotation { .. }
            | CoreError::UnknownAnnotation { .. }
            | CoreError::Invalid(_) => ErrorClass::InvalidInput,
            CoreError::Insufficient(_) => ErrorClass::Exhausted,
            CoreError::NotFound(_) => ErrorClass::NotFound,
            CoreError::Config { .. }
            | CoreError::Discovery { .. }
            | CoreError::LedgerCorrupt { .. } => ErrorClass::Precondition,
            CoreError::Limiter { class, .. } | CoreError::PodNetwork { class, .. } => *class,
            CoreError::Io { .. } => ErrorClass::Internal,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
