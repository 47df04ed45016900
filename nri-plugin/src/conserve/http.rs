//! The `/metrics` endpoint of the controller's [`Telemetry`].

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use super::Telemetry;
use crate::error::PluginError;

/// Binds `addr` for `/metrics` (fails at once, so a taken port stops the daemon's start). Needs
/// the tokio runtime's context, as for any tokio socket.
pub fn bind_metrics(addr: SocketAddr) -> Result<tokio::net::TcpListener, PluginError> {
    let fail = |source| PluginError::MetricsListen { addr, source };
    // Bound synchronously: NRI Configure, which binds it in pre-launched mode, is not async.
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    tokio::net::TcpListener::from_std(listener).map_err(fail)
}

/// Serves `GET /metrics` on `listener` in the background.
pub fn serve_metrics(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let t = telemetry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    t.render(),
                )
            }
        }),
    );
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics at /metrics");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
}
