//! HTTP from tests over loopback: the placement webhook's JSON (and waiting for its view of a node
//! to reach a value), and plain-text endpoints such as the plugin's `/metrics`.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One request to `http://<addr><path>`; (status, JSON body or Null). A webhook that is not up yet
/// answers status 0.
pub fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let agent = agent();
    let url = format!("http://{addr}{path}");
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        (_, Some(b)) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(b.to_string().as_bytes()),
        (_, None) => agent.post(&url).send_empty(),
    };
    match sent {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// `GET http://<addr><path>` as text (e.g. Prometheus metrics); status 0 when nothing answers.
pub fn get_text(addr: &str, path: &str) -> (u16, String) {
    match agent().get(&format!("http://{addr}{path}")).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Sum of the guaranteed bandwidth the webhook holds for `node`, if it knows the node.
pub fn guaranteed_mbps(addr: &str, node: &str) -> Option<u64> {
    let (_, nodes) = call(addr, "GET", "/v1/nodes", None);
    let n = nodes["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)?
        .clone();
    let pools = n["pools"]
        .as_array()
        .or_else(|| n["report"]["pools"].as_array())?;
    Some(
        pools
            .iter()
            .map(|p| p["guaranteed_mbps"].as_u64().unwrap_or(0))
            .sum(),
    )
}

/// Waits until the webhook holds `want` Mbps guaranteed on `node`; panics with its view if not.
pub async fn wait_for_guaranteed(addr: &str, node: &str, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while guaranteed_mbps(addr, node) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "webhook never saw {want} Mbps guaranteed on {node}: {}",
            call(addr, "GET", "/v1/nodes", None).1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An extender filter/prioritize body as kube-scheduler sends it (nodeCacheCapable: node names).
pub fn extender_args(node: &str, bandwidth: &str) -> Value {
    serde_json::json!({
        "Pod": {"metadata": {"name": "next", "namespace": "ml", "uid": "u-next",
                "annotations": {"rdma.conrdma.io/bandwidth": bandwidth}},
                "spec": {"containers": [{"name": "c", "image": "x"}]}},
        "Nodes": null,
        "NodeNames": [node]
    })
}
