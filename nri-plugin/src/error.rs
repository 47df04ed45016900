//! The plugin's error type and its mapping onto ttrpc status codes, so containerd (and through it the
//! CRI caller) sees both the class of failure and our one-line message.

use conrdma_core::error::{CoreError, ErrorClass};
use conrdma_nri::ttrpc::Code;
use conrdma_nri::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("NRI request without {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Nri(#[from] conrdma_nri::NriError),
    #[error("{0}")]
    Setup(String),
    /// containerd's CRI could not be asked (the sweep retries).
    #[error("containerd CRI: {0}")]
    Cri(String),
}

impl PluginError {
    pub fn code(&self) -> Code {
        match self {
            PluginError::Core(e) => match e.class() {
                ErrorClass::InvalidInput => Code::INVALID_ARGUMENT,
                ErrorClass::Exhausted => Code::RESOURCE_EXHAUSTED,
                ErrorClass::NotFound => Code::NOT_FOUND,
                ErrorClass::Precondition => Code::FAILED_PRECONDITION,
                ErrorClass::Internal => Code::INTERNAL,
            },
            PluginError::Malformed(_) => Code::INVALID_ARGUMENT,
            PluginError::Nri(_) | PluginError::Setup(_) => Code::INTERNAL,
            PluginError::Cri(_) => Code::UNAVAILABLE,
        }
    }
}

impl From<PluginError> for RpcError {
    fn from(e: PluginError) -> Self {
        // The prefix tells the user which component refused their pod.
        RpcError::new(e.code(), format!("conrdma: {e}"))
    }
}
