//! The API crate's one error type, and the failure classes every front end maps onto its wire code.
//! Messages are single lines naming what was wrong and what is accepted: they end up verbatim in a
//! CRI error or an HTTP body.

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

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
    /// The node itself is misconfigured, or a thing the request relies on changed under it
    /// (gRPC FAILED_PRECONDITION, HTTP 503).
    Precondition,
    /// The service is not ready yet; retrying later may succeed (gRPC UNAVAILABLE, HTTP 503).
    Unavailable,
    /// I/O failed underneath us (gRPC INTERNAL, HTTP 500).
    Internal,
}

impl ErrorClass {
    /// The gRPC status code ttrpc carries for this class (the numbers are gRPC's own).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorClass::InvalidInput => 3,
            ErrorClass::NotFound => 5,
            ErrorClass::Exhausted => 8,
            ErrorClass::Precondition => 9,
            ErrorClass::Internal => 13,
            ErrorClass::Unavailable => 14,
        }
    }

    /// The HTTP status for this class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::InvalidInput => 400,
            ErrorClass::NotFound => 404,
            ErrorClass::Exhausted => 409,
            ErrorClass::Precondition | ErrorClass::Unavailable => 503,
            ErrorClass::Internal => 500,
        }
    }
}

/// Bad values in what the cluster and the node exchange: annotations, rates, records.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
}

impl ApiError {
    /// Every API error is the caller's input.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::InvalidInput
    }
}
