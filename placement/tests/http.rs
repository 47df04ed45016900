//! The service over real HTTP on loopback, with bodies shaped like kube-scheduler's.

mod common;

use common::*;
use conrdma_placement::UnknownNodes;
use serde_json::{json, Value};

/// worker-1: 30G free on its one PF; worker-2: 50G free on one of two PFs; worker-3: never reported.
async fn cluster() -> Server {
    let s = start(|_, _| {}).await;
    post_node(
        s.addr,
        &node_report("worker-1", vec![pf("ens1f0", 100, 70, 8, 5)]),
    )
    .await;
    post_node(
        s.addr,
        &node_report(
            "worker-2",
            vec![pf("ens1f0", 100, 90, 8, 6), pf("ens1f1", 100, 50, 8, 7)],
        ),
    )
    .await;
    s
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn filter_with_node_names_like_a_node_cache_capable_scheduler() {
    let s = cluster().await;
    let args = fixture("extender-args-node-names.json");
    let r = call(s.addr, "POST", "/filter", None, &args.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("application/json"));
    let v = r.json();
    assert_eq!(
        keys(&v),
        [
            "Error",
            "FailedAndUnresolvableNodes",
            "FailedNodes",
            "NodeNames",
            "Nodes"
        ]
    );
    assert_eq!(v["NodeNames"], json!(["worker-2"]));
    assert_eq!(v["Nodes"], Value::Null);
    assert_eq!(v["Error"], "");
    let failed = v["FailedNodes"]["worker-1"].as_str().unwrap();
    assert!(failed.contains("40Gbps of guarantee left"), "{failed}");
    let unknown = v["FailedAndUnresolvableNodes"]["worker-3"]
        .as_str()
        .unwrap();
    assert!(unknown.contains("no report"), "{unknown}");
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn filter_with_full_node_objects_returns_them_unchanged() {
    let s = cluster().await;
    let args = fixture("extender-args-nodes.json");
    let r = call(s.addr, "POST", "/filter", None, &args.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["NodeNames"], Value::Null);
    let items = v["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0], args["Nodes"]["items"][1],
        "worker-2 comes back byte for byte"
    );
    assert!(v["FailedNodes"]["worker-1"].is_string());
    assert!(v["FailedAndUnresolvableNodes"]["worker-3"].is_string());
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn prioritize_returns_a_host_priority_list() {
    let s = start(|_, _| {}).await;
    // Both fit a 40G pod; best-fit prefers the PF it fills most tightly.
    post_node(
        s.addr,
        &node_report("worker-1", vec![pf("ens1f0", 100, 55, 8, 5)]),
    )
    .await;
    post_node(
        s.addr,
        &node_report("worker-2", vec![pf("ens1f0", 200, 0, 8, 8)]),
    )
    .await;
    for fixture_name in ["extender-args-node-names.json", "extender-args-nodes.json"] {
        let args = fixture(fixture_name);
        let r = call(s.addr, "POST", "/prioritize", None, &args.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 3);
        for e in list {
            assert_eq!(keys(e), ["Host", "Score"]);
            assert!((0..=10).contains(&e["Score"].as_i64().unwrap()), "{e}");
        }
        let score = |h: &str| {
            list.iter().find(|e| e["Host"] == h).unwrap()["Score"]
                .as_i64()
                .unwrap()
        };
        assert!(score("worker-1") > score("worker-2"), "{v}");
        assert_eq!(score("worker-1"), 10);
        assert_eq!(score("worker-3"), 0);
    }
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn pods_without_our_annotations_pass_through_untouched() {
    let s = start(|_, _| {}).await; // no node has ever reported
    for name in ["extender-args-node-names.json", "extender-args-nodes.json"] {
        let mut args = fixture(name);
        args["Pod"]["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/default-container": "x"});
        let v = call(s.addr, "POST", "/filter", None, &args.to_string())
            .await
            .json();
        if args["NodeNames"].is_null() {
            assert_eq!(v["Nodes"]["items"], args["Nodes"]["items"]);
        } else {
            assert_eq!(v["NodeNames"], args["NodeNames"]);
        }
        assert_eq!(v["FailedNodes"], json!({}));
        assert_eq!(v["FailedAndUnresolvableNodes"], json!({}));
        let p = call(s.addr, "POST", "/prioritize", None, &args.to_string())
            .await
            .json();
        assert!(p.as_array().unwrap().iter().all(|e| e["Score"] == 0));
        // No annotations at all (Go omits the empty map).
        args["Pod"]["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        let v = call(s.addr, "POST", "/filter", None, &args.to_string())
            .await
            .json();
        assert_eq!(v["FailedAndUnresolvableNodes"], json!({}));
    }
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_pod_annotations_fail_every_node_with_the_reason() {
    let s = cluster().await;
    let mut args = fixture("extender-args-node-names.json");
    args["Pod"]["metadata"]["annotations"]["rdma.conrdma.io/bandwidth"] = json!("40GB");
    let v = call(s.addr, "POST", "/filter", None, &args.to_string())
        .await
        .json();
    assert_eq!(v["NodeNames"], json!([]));
    for n in ["worker-1", "worker-2", "worker-3"] {
        let msg = v["FailedAndUnresolvableNodes"][n].as_str().unwrap();
        assert!(
            msg.contains("rdma.conrdma.io/bandwidth") && msg.contains("\"40GB\""),
            "{msg}"
        );
    }
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_extender_args_are_400() {
    let s = cluster().await;
    for (body, want) in [
        ("{", "ExtenderArgs"),
        (
            r#"{"Pod":{"metadata":{"annotations":{"rdma.conrdma.io/bandwidth":"1G"}}}}"#,
            "neither Nodes nor NodeNames",
        ),
        (r#"{"NodeNames":["a"]}"#, "Pod is missing"),
        (
            r#"{"Pod":{"metadata":{"annotations":{"rdma.conrdma.io/bandwidth":"1G"}}},"Nodes":{"items":[{"metadata":{}}]}}"#,
            "no metadata.name",
        ),
    ] {
        for verb in ["/filter", "/prioritize"] {
            let r = call(s.addr, "POST", verb, None, body).await;
            assert_eq!(r.status, 400, "{verb} {body}: {}", r.body);
            assert!(r.body.contains(want), "{}", r.body);
        }
    }
    s.running.stop().await.unwrap();
}

async fn node_count(s: &Server) -> usize {
    call(s.addr, "GET", "/v1/nodes", None, "").await.json()["nodes"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn reports_need_a_known_bearer_credential() {
    let s = start(|_, _| {}).await;
    let body =
        serde_json::to_string(&node_report("worker-1", vec![pf("ens1f0", 100, 0, 8, 8)])).unwrap();
    let usage = json!({"version": 1, "reports": [{
        "node": "worker-1", "pod": {"namespace": "ml", "name": "a", "uid": "u-a"},
        "pool": "default", "pf": "ens1f0", "vf": 0, "guaranteed_mbps": 0, "limit_mbps": 0,
        "tx_mbps": 1.0, "rx_mbps": 1.0, "window_start_unix_ms": 1, "window_end_unix_ms": 2}]})
    .to_string();
    for (path, body) in [("/v1/reports/node", &body), ("/v1/reports/usage", &usage)] {
        for token in [None, Some("wrong"), Some("")] {
            let r = call(s.addr, "POST", path, token, body).await;
            assert_eq!(r.status, 401, "{path} {token:?}: {}", r.body);
            assert!(r.body.contains("bearer credential"));
        }
        for header in [
            format!("Basic {TOKEN}"),
            TOKEN.to_string(),
            format!("Bearer {TOKEN}x"),
        ] {
            let r = call_auth(s.addr, "POST", path, Some(header.clone()), body).await;
            assert_eq!(r.status, 401, "{header}");
        }
    }
    let nodes = call(s.addr, "GET", "/v1/nodes", None, "").await.json();
    assert_eq!(nodes["nodes"], json!([]), "nothing stored");
    // Usage of an unreported node would show nowhere: check the store through metrics counters.
    let m = call(s.addr, "GET", "/metrics", None, "").await.body;
    assert!(!m.contains("outcome=\"accepted\""), "{m}");
    // Any credential of the file works; the scheme is case-insensitive.
    let r = call_auth(
        s.addr,
        "POST",
        "/v1/reports/node",
        Some(format!("bearer {TOKEN}")),
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        s.addr,
        "POST",
        "/v1/reports/usage",
        Some("shim-token"),
        &usage,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let nodes = call(s.addr, "GET", "/v1/nodes", None, "").await.json();
    assert_eq!(nodes["nodes"][0]["usage"][0]["uid"], "u-a");
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_reports_are_400_with_the_reason_and_nothing_is_stored() {
    let s = start(|_, _| {}).await;
    let good =
        serde_json::to_value(node_report("worker-1", vec![pf("ens1f0", 100, 0, 8, 8)])).unwrap();
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut v = good.clone();
    v["version"] = json!(7);
    cases.push((v, "version 7 is not supported"));
    let mut v = good.clone();
    v["pools"][0]["pfs"][0]["vfs_free"] = json!(9);
    v["pools"][0]["vfs_free"] = json!(9);
    cases.push((v, "pools[0].pfs[0].vfs_free 9 is above vfs_total 8"));
    let mut v = good.clone();
    v["colour"] = json!("blue");
    cases.push((v, "unknown field `colour`"));
    let mut v = good.clone();
    v["pools"][0]["capacity_mbps"] = json!("100G");
    cases.push((v, "invalid type"));
    for (body, want) in cases {
        let r = call(
            s.addr,
            "POST",
            "/v1/reports/node",
            Some(TOKEN),
            &body.to_string(),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.starts_with("malformed node report: "), "{}", r.body);
        assert!(r.body.contains(want), "{} lacks {want}", r.body);
        assert_eq!(r.body.trim_end().lines().count(), 1);
    }
    let r = call(s.addr, "POST", "/v1/reports/node", Some(TOKEN), "not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(node_count(&s).await, 0);

    let usage = |tx: Value| {
        json!({"version": 1, "reports": [{
            "node": "worker-1", "pod": {"namespace": "ml", "name": "trainer-0", "uid": "u-1"},
            "pool": "default", "pf": "ens1f0", "vf": 2, "guaranteed_mbps": 40000, "limit_mbps": 100000,
            "tx_mbps": tx, "rx_mbps": 10.5, "window_start_unix_ms": 1700000000000u64,
            "window_end_unix_ms": 1700000010000u64, "final": false}]})
        .to_string()
    };
    let r = call(
        s.addr,
        "POST",
        "/v1/reports/usage",
        Some(TOKEN),
        &usage(json!(-1.0)),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("reports[0].tx_mbps -1"), "{}", r.body);
    let r = call(
        s.addr,
        "POST",
        "/v1/reports/usage",
        Some(TOKEN),
        &usage(json!(31000.0)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"], 1);
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn usage_reports_show_in_nodes_and_metrics_and_steer_least_measured_usage() {
    let s = start(|c, _| c.policy = conrdma_placement::Policy::LeastMeasuredUsage).await;
    post_node(
        s.addr,
        &node_report("worker-1", vec![pf("ens1f0", 100, 40, 8, 7)]),
    )
    .await;
    post_node(
        s.addr,
        &node_report("worker-2", vec![pf("ens1f0", 100, 40, 8, 7)]),
    )
    .await;
    let batch = json!({"version": 1, "reports": [{
        "node": "worker-1", "pod": {"namespace": "ml", "name": "a", "uid": "u-a"},
        "pool": "default", "pf": "ens1f0", "vf": 0, "guaranteed_mbps": 40000, "limit_mbps": 100000,
        "tx_mbps": 80000.0, "rx_mbps": 1000.0, "window_start_unix_ms": 1, "window_end_unix_ms": 2}]});
    let r = call(
        s.addr,
        "POST",
        "/v1/reports/usage",
        Some(TOKEN),
        &batch.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let args = fixture("extender-args-node-names.json");
    let p = call(s.addr, "POST", "/prioritize", None, &args.to_string())
        .await
        .json();
    assert_eq!(p[0], json!({"Host": "worker-1", "Score": 2}));
    assert_eq!(p[1], json!({"Host": "worker-2", "Score": 10}));

    let nodes = call(s.addr, "GET", "/v1/nodes", None, "").await.json();
    assert_eq!(nodes["policy"], "least-measured-usage");
    let w1 = &nodes["nodes"][0];
    assert_eq!(w1["node"], "worker-1");
    assert_eq!(w1["pools"][0]["measured_tx_mbps"], 80000.0);
    assert_eq!(w1["pools"][0]["pfs"][0]["headroom_mbps"], 60000);
    assert_eq!(w1["usage"][0]["name"], "a");

    let m = call(s.addr, "GET", "/metrics", None, "").await;
    assert_eq!(m.status, 200);
    assert!(
        m.content_type.starts_with("text/plain"),
        "{}",
        m.content_type
    );
    for want in [
        "conrdma_placement_pool_capacity_mbps{node=\"worker-1\",pool=\"default\"} 100000",
        "conrdma_placement_pool_guaranteed_mbps{node=\"worker-2\",pool=\"default\"} 40000",
        "conrdma_placement_pool_measured_mbps{direction=\"tx\",node=\"worker-1\",pool=\"default\"} 80000",
        "conrdma_placement_node_report_age_seconds{node=\"worker-2\"}",
        "conrdma_placement_node_stale{node=\"worker-1\"} 0",
        "conrdma_placement_request_duration_seconds_bucket{endpoint=\"prioritize\",le=\"0.002\"}",
        "conrdma_placement_reports_total{kind=\"usage\",outcome=\"accepted\"} 1",
        "conrdma_placement_extender_pods_total{pod=\"rdma\",verb=\"prioritize\"} 1",
    ] {
        assert!(m.body.contains(want), "metrics lack {want}:\n{}", m.body);
    }
    // The final report forgets the pod.
    let mut fin = batch.clone();
    fin["reports"][0]["final"] = json!(true);
    fin["reports"][0]["window_end_unix_ms"] = json!(3);
    call(
        s.addr,
        "POST",
        "/v1/reports/usage",
        Some(TOKEN),
        &fin.to_string(),
    )
    .await;
    let nodes = call(s.addr, "GET", "/v1/nodes", None, "").await.json();
    assert_eq!(nodes["nodes"][0]["pools"][0]["measured_tx_mbps"], 0.0);
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn healthz() {
    let s = start(|_, _| {}).await;
    let r = call(s.addr, "GET", "/healthz", None, "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn stale_nodes_are_excluded_or_neutral_as_configured() {
    for unknown in [UnknownNodes::Exclude, UnknownNodes::Neutral] {
        let s = start(|c, _| {
            c.node_ttl_seconds = 1;
            c.unknown_nodes = unknown;
        })
        .await;
        post_node(
            s.addr,
            &node_report("worker-2", vec![pf("ens1f0", 100, 0, 8, 8)]),
        )
        .await;
        let args = fixture("extender-args-node-names.json").to_string();
        let v = call(s.addr, "POST", "/filter", None, &args).await.json();
        assert!(v["NodeNames"]
            .as_array()
            .unwrap()
            .contains(&json!("worker-2")));
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        let v = call(s.addr, "POST", "/filter", None, &args).await.json();
        let p = call(s.addr, "POST", "/prioritize", None, &args)
            .await
            .json();
        let w2 = p
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["Host"] == "worker-2")
            .unwrap()
            .clone();
        match unknown {
            UnknownNodes::Exclude => {
                assert_eq!(v["NodeNames"], json!([]));
                let msg = v["FailedAndUnresolvableNodes"]["worker-2"]
                    .as_str()
                    .unwrap();
                assert!(msg.contains("older than the 1s TTL"), "{msg}");
                assert_eq!(w2["Score"], 0);
            }
            UnknownNodes::Neutral => {
                assert_eq!(v["NodeNames"], json!(["worker-1", "worker-2", "worker-3"]));
                assert_eq!(v["FailedAndUnresolvableNodes"], json!({}));
                assert_eq!(w2["Score"], 5);
            }
        }
        let nodes = call(s.addr, "GET", "/v1/nodes", None, "").await.json();
        assert_eq!(nodes["nodes"][0]["stale"], true);
        // A fresh report brings it back.
        post_node(
            s.addr,
            &node_report("worker-2", vec![pf("ens1f0", 100, 0, 8, 8)]),
        )
        .await;
        let v = call(s.addr, "POST", "/filter", None, &args).await.json();
        assert!(v["NodeNames"]
            .as_array()
            .unwrap()
            .contains(&json!("worker-2")));
        s.running.stop().await.unwrap();
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let s = start(|c, _| c.max_body_bytes = 4096).await;
    let big = format!("{{\"NodeNames\":[\"{}\"]}}", "a".repeat(8192));
    let r = call(s.addr, "POST", "/filter", None, &big).await;
    assert_eq!(r.status, 413);
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn a_changed_tokens_file_is_picked_up() {
    let s = start(|_, _| {}).await;
    let body =
        serde_json::to_string(&node_report("worker-1", vec![pf("ens1f0", 100, 0, 8, 8)])).unwrap();
    std::fs::write(s.dir.path().join("tokens"), "rotated-credential\n").unwrap();
    let mut ok = false;
    for _ in 0..80 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if call(
            s.addr,
            "POST",
            "/v1/reports/node",
            Some("rotated-credential"),
            &body,
        )
        .await
        .status
            == 200
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "new credential accepted within 8s");
    let r = call(s.addr, "POST", "/v1/reports/node", Some(TOKEN), &body).await;
    assert_eq!(r.status, 401, "the old one is gone");
    s.running.stop().await.unwrap();
}
