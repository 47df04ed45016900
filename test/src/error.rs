//! The harness's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the harness itself can fail with. CRI calls made through [`crate::Cri`] return
/// `tonic::Status` untouched instead, so tests can assert on containerd's exact message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The machine cannot run the end-to-end tests (not root, a dependency missing, ...).
    #[error("e2e environment not usable: {0}")]
    Environment(String),

    /// A binary the harness needs does not exist.
    #[error("binary `{name}` not found (looked in: {looked_in}); {hint}")]
    MissingBinary {
        name: String,
        looked_in: String,
        hint: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A helper command (ctr, runc, hack/build-image.sh) failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },

    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { after: Duration, what: String },

    /// containerd exited while the harness was waiting for it.
    #[error("containerd exited ({status}) while {during}; log {log_path}:\n{log_tail}")]
    ContainerdExited {
        status: String,
        during: String,
        log_path: PathBuf,
        log_tail: String,
    },

    /// containerd is not running (stopped or killed) and the call needs it.
    #[error("containerd is not running")]
    NotRunning,

    /// A CRI call the harness made on its own behalf (readiness, image check, cleanup) failed.
    #[error("CRI {call} failed: {status}")]
    Cri {
        call: &'static str,
        status: Box<tonic::Status>,
    },

    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),

    #[error("containerd config: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn cri(call: &'static str, status: tonic::Status) -> Self {
        Error::Cri {
            call,
            status: Box::new(status),
        }
    }
}

/// Result with the harness error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
