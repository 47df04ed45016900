//! The shim's one error type, mapped onto ttrpc status codes for containerd (which shows the
//! message to the kubelet, so every message is one line that says what to do).

use conrdma_api::ErrorClass;
use conrdma_node::NodeError;
use protobuf::Enum;
use ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Fail closed: the container must not run as asked (e.g. it lost its allocation).
    #[error("conrdma: {0}")]
    Refused(String),

    /// Something in the request or its spec is malformed.
    #[error("conrdma: {0}")]
    Invalid(String),

    /// The runtime's options table (containerd config) is wrong.
    #[error("conrdma: runtime options: {0}")]
    Config(String),

    /// The domain library refused or failed (rates, annotations, limiter).
    #[error("conrdma: {0}")]
    Core(#[from] NodeError),

    /// The runc shim we delegate to is gone or did not answer.
    #[error("conrdma: runc shim: {0}")]
    Child(String),

    #[error("conrdma: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            what: what.into(),
            source,
        }
    }

    /// The failure class, as the API and node crates classify theirs.
    pub fn class(&self) -> ErrorClass {
        match self {
            ShimError::Refused(_) => ErrorClass::Precondition,
            ShimError::Invalid(_) | ShimError::Config(_) => ErrorClass::InvalidInput,
            ShimError::Core(e) => e.class(),
            ShimError::Child(_) => ErrorClass::Unavailable,
            ShimError::Io { .. } => ErrorClass::Internal,
        }
    }

    pub fn code(&self) -> Code {
        class_code(self.class())
    }

    pub fn status(&self) -> ttrpc::Status {
        ttrpc::get_status(self.code(), self.to_string())
    }
}

/// The ttrpc code of a failure class.
pub fn class_code(class: ErrorClass) -> Code {
    Code::from_i32(class.grpc_code()).unwrap_or(Code::INTERNAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_class_has_its_grpc_code() {
        use ErrorClass::*;
        for (class, code) in [
            (InvalidInput, Code::INVALID_ARGUMENT),
            (Exhausted, Code::RESOURCE_EXHAUSTED),
            (NotFound, Code::NOT_FOUND),
            (Precondition, Code::FAILED_PRECONDITION),
            (Unavailable, Code::UNAVAILABLE),
            (Internal, Code::INTERNAL),
        ] {
            assert_eq!(class_code(class), code, "{class:?}");
        }
    }

    #[test]
    fn codes() {
        assert_eq!(
            ShimError::Refused("x".into()).code(),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            ShimError::Invalid("x".into()).code(),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(ShimError::Child("x".into()).code(), Code::UNAVAILABLE);
        let io = ShimError::io("x", std::io::Error::other("y"));
        assert_eq!(io.code(), Code::INTERNAL);
        let e = ShimError::Core(NodeError::NotFound("no VF".into()));
        assert_eq!(e.code(), Code::NOT_FOUND);
        let s = e.status();
        assert_eq!(s.message, "conrdma: no VF");
        assert_eq!(
            ShimError::Config("bad".into()).to_string(),
            "conrdma: runtime options: bad"
        );
    }
}
