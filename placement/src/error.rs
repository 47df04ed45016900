//! The crate's one error type. Messages are single lines; [`PlacementError::status`] maps each kind
//! onto the HTTP status a client sees.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conrdma_api::ApiError;

pub type Result<T, E = PlacementError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("missing or unknown bearer credential")]
    Unauthorized,

    #[error("malformed {what}: {reason}")]
    BadRequest { what: &'static str, reason: String },

    #[error("invalid config {origin}: {reason}")]
    Config { origin: String, reason: String },

    #[error("tls: {0}")]
    Tls(String),

    /// An I/O step of the webhook itself failed; `what` names the step and its object
    /// (`listening on 0.0.0.0:8443`).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Api(#[from] ApiError),
}

impl PlacementError {
    pub fn status(&self) -> StatusCode {
        match self {
            PlacementError::Unauthorized => StatusCode::UNAUTHORIZED,
            PlacementError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            PlacementError::Config { .. } | PlacementError::Tls(_) | PlacementError::Io { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            PlacementError::Api(e) => StatusCode::from_u16(e.class().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    pub(crate) fn bad(what: &'static str, reason: impl ToString) -> Self {
        PlacementError::BadRequest {
            what,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PlacementError::Io {
            what: format!("{action} {}", path.into().display()),
            source,
        }
    }
}

impl IntoResponse for PlacementError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, format!("{self}\n")).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
