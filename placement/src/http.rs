//! The HTTP front: routes, bearer authentication, and the mapping of bodies onto the store.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use conrdma_api::report::{NodeReport, UsageBatch, NODE_REPORT_PATH, USAGE_REPORT_PATH};
use serde::Serialize;

use crate::config::{Config, Tokens};
use crate::error::{PlacementError, Result};
use crate::extender::{host_priorities_json, ExtenderArgs};
use crate::metrics::Metrics;
use crate::store::{unix_ms, NodeView, Settings, Store};
use crate::verbs;

/// Shared state of the running service.
pub struct App {
    store: RwLock<Store>,
    tokens: RwLock<Tokens>,
    pub metrics: Metrics,
    max_body: usize,
    request_timeout: Duration,
}

impl App {
    pub fn new(cfg: &Config, tokens: Tokens) -> Result<App> {
        Ok(App {
            store: RwLock::new(Store::new(Settings::from(cfg))),
            tokens: RwLock::new(tokens),
            metrics: Metrics::new().map_err(|e| PlacementError::Config {
                origin: "metrics".into(),
                reason: e.to_string(),
            })?,
            max_body: cfg.max_body_bytes,
            request_timeout: cfg.request_timeout(),
        })
    }

    /// A poisoned lock only means a panic elsewhere while holding it; the store has no invariant
    /// that a half-done update could break (every update is one insert or remove), so go on.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the accepted credentials (the tokens file changed).
    pub fn set_tokens(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<()> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        match presented {
            Some(t)
                if self
                    .tokens
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .accepts(t.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err(PlacementError::Unauthorized),
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    let limit = app.max_body;
    Router::new()
        .route(NODE_REPORT_PATH, post(node_report))
        .route(USAGE_REPORT_PATH, post(usage_report))
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/v1/nodes", get(nodes))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(app.clone(), deadline))
        .with_state(app)
}

/// Bounds reading and answering one request (a slow body included): past `request_timeout` the
/// client gets 408 and the connection is closed, so a trickling upload cannot hold its slot.
async fn deadline(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(app.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            format!(
                "request not received and answered within {} s\n",
                app.request_timeout.as_secs()
            ),
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
}

fn count(app: &App, kind: &str, outcome: &str) {
    app.metrics
        .reports
        .with_label_values(&[kind, outcome])
        .inc();
}

fn outcome_of(e: &PlacementError) -> &'static str {
    match e {
        PlacementError::Unauthorized => "unauthorized",
        _ => "malformed",
    }
}

/// What the report endpoints share: the credential, the body's schema and its checks. A refusal is
/// counted and timed here, so each endpoint only stores what was accepted.
struct ReportKind {
    /// Label in the `reports` metric.
    label: &'static str,
    /// Name in error messages.
    what: &'static str,
    /// Name of the latency series.
    series: &'static str,
}

const NODE: ReportKind = ReportKind {
    label: "node",
    what: "node report",
    series: "report_node",
};
const USAGE: ReportKind = ReportKind {
    label: "usage",
    what: "usage reports",
    series: "report_usage",
};

fn accept<T: serde::de::DeserializeOwned>(
    app: &App,
    kind: &ReportKind,
    headers: &HeaderMap,
    body: &[u8],
    validate: impl FnOnce(&T) -> std::result::Result<(), conrdma_api::report::InvalidReport>,
    start: Instant,
) -> Result<T> {
    let res = app.authorize(headers).and_then(|()| {
        let doc: T = serde_json::from_slice(body).map_err(|e| PlacementError::bad(kind.what, e))?;
        validate(&doc).map_err(|e| PlacementError::bad(kind.what, e))?;
        Ok(doc)
    });
    if let Err(e) = &res {
        count(app, kind.label, outcome_of(e));
        tracing::debug!(error = %e, "{} refused", kind.what);
        app.metrics.observe(kind.series, start);
    }
    res
}

async fn node_report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Accepted>> {
    let start = Instant::now();
    let report = accept(&app, &NODE, &headers, &body, NodeReport::validate, start)?;
    tracing::trace!(node = %report.node, "node report");
    app.write()
        .put_node(report, Instant::now(), unix_ms(SystemTime::now()));
    count(&app, NODE.label, "accepted");
    app.metrics.observe(NODE.series, start);
    Ok(Json(Accepted { accepted: 1 }))
}

async fn usage_report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Accepted>> {
    let start = Instant::now();
    let batch = accept(&app, &USAGE, &headers, &body, UsageBatch::validate, start)?;
    let n = batch.reports.len();
    app.write().put_usage(batch, Instant::now());
    app.metrics
        .reports
        .with_label_values(&[USAGE.label, "accepted"])
        .inc_by(n as u64);
    app.metrics.observe(USAGE.series, start);
    Ok(Json(Accepted { accepted: n }))
}

fn parse_args(body: &[u8]) -> Result<ExtenderArgs<'_>> {
    serde_json::from_slice(body).map_err(|e| PlacementError::bad("ExtenderArgs", e))
}

/// The reply `axum::Json` would make, from JSON encoded by the caller into a buffer sized once
/// (axum's grows from 128 bytes by doubling).
fn json_reply(json: serde_json::Result<Vec<u8>>) -> Response {
    match json {
        Ok(buf) => ([(header::CONTENT_TYPE, "application/json")], buf).into_response(),
        // As `axum::Json` answers: cannot happen for these types (every map key is a string).
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn pod_kind(args: &ExtenderArgs) -> &'static str {
    match verbs::pod_request(args) {
        Ok(Ok(Some(_))) => "rdma",
        Ok(Ok(None)) => "other",
        _ => "invalid",
    }
}

async fn filter(State(app): State<Arc<App>>, body: Bytes) -> Result<Response> {
    let start = Instant::now();
    let args = parse_args(&body)?;
    let kind = pod_kind(&args);
    let out = verbs::filter(&app.read(), args, Instant::now())?;
    if kind != "other" {
        tracing::debug!(
            passed = out
                .node_names
                .as_ref()
                .map(Vec::len)
                .or(out.nodes.as_ref().map(|n| n.items.len())),
            failed = out.failed_nodes.len() + out.failed_and_unresolvable_nodes.len(),
            "filter"
        );
    }
    app.metrics.pods.with_label_values(&["filter", kind]).inc();
    let resp = json_reply(out.to_json());
    app.metrics.observe("filter", start);
    Ok(resp)
}

async fn prioritize(State(app): State<Arc<App>>, body: Bytes) -> Result<Response> {
    let start = Instant::now();
    let args = parse_args(&body)?;
    let kind = pod_kind(&args);
    let out = verbs::prioritize(&app.read(), args, Instant::now())?;
    app.metrics
        .pods
        .with_label_values(&["prioritize", kind])
        .inc();
    let resp = json_reply(host_priorities_json(&out));
    app.metrics.observe("prioritize", start);
    Ok(resp)
}

#[derive(Serialize)]
struct NodesBody {
    policy: &'static str,
    node_ttl_seconds: u64,
    unknown_nodes: &'static str,
    max_score: i64,
    nodes: Vec<NodeView>,
}

async fn nodes(State(app): State<Arc<App>>) -> Json<NodesBody> {
    let start = Instant::now();
    let store = app.read();
    let s = store.settings();
    let body = NodesBody {
        policy: s.policy.name(),
        node_ttl_seconds: s.node_ttl.as_secs(),
        unknown_nodes: match s.unknown_nodes {
            crate::config::UnknownNodes::Exclude => "exclude",
            crate::config::UnknownNodes::Neutral => "neutral",
        },
        max_score: s.max_score,
        nodes: store.snapshot(Instant::now()),
    };
    drop(store);
    app.metrics.observe("nodes", start);
    Json(body)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = {
        let store = app.read();
        app.metrics.render(&store, Instant::now())
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
