//! The placement webhook's report ingestion: the bodies of `POST /v1/reports/node` and
//! `POST /v1/reports/usage` are decoded with serde_json into `NodeReport` / `UsageBatch` and
//! checked with their `validate` (as `placement::http::accept` does), then stored in a `Store`
//! (`put_node` / `put_usage`) and read back the way filter/prioritize and `/v1/nodes` do.
//! The fuzz bytes are tried as both kinds of body.

use std::time::{Duration, Instant};

use conrdma_api::report::{NodeReport, UsageBatch};
use conrdma_api::{Rate, Request};
use conrdma_placement::config::Config;
use conrdma_placement::store::{Settings, Store};

fn main() {
    let settings = Settings::from(&Config::with_tokens_file("/nonexistent/tokens"));
    let requests = [
        Request::default(),
        Request {
            guarantee: Some(Rate::parse("10Gbps").expect("rate")),
            ..Request::default()
        },
        Request {
            guarantee: Some(Rate::parse("1Gbps").expect("rate")),
            pool: Some("default".into()),
            ..Request::default()
        },
    ];
    afl::fuzz!(|data: &[u8]| {
        let now = Instant::now();
        let mut store = Store::new(settings.clone());
        let mut nodes = vec!["node-a".to_string()];
        if let Ok(report) = serde_json::from_slice::<NodeReport>(data) {
            if report.validate().is_ok() {
                nodes.push(report.node.clone());
                // Twice: a node's report replaces its previous one.
                store.put_node(report.clone(), now, 1_700_000_000_000);
                store.put_node(report, now, 1_700_000_000_000);
            }
        }
        if let Ok(batch) = serde_json::from_slice::<UsageBatch>(data) {
            if batch.validate().is_ok() {
                nodes.extend(batch.reports.iter().map(|r| r.node.clone()));
                store.put_usage(batch.clone(), now);
                store.put_usage(batch, now);
            }
        }
        for node in &nodes {
            let _ = store.measured(node, None, now);
            let _ = store.measured(node, Some("default"), now);
            for req in &requests {
                let fit = store.evaluate(node, req, now);
                let _ = store.verdict(fit);
                let _ = store.reason(fit, req);
                let _ = store.score(fit);
            }
        }
        let _ = serde_json::to_vec(&store.snapshot(now));
        store.prune(now + Duration::from_secs(7200));
    });
}
