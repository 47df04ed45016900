//! The NRI plugin's node reports reach the real placement webhook, and kube-scheduler's filter call
//! then sees the node's remaining bandwidth: admission on the node and placement in the cluster
//! agree. Real containerd, real plugin process, real webhook process, loopback only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use conrdma_e2e::{simulate_nic, workspace_bin, Containerd, ContainerdOptions};
use serde_json::{json, Value};

const TOKEN: &str = "node-reporter-token";

fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let text = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Bodies may be chunked; the JSON is the part between the first '{' and the last '}'.
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&text[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

fn guaranteed(addr: &str, node: &str) -> Option<u64> {
    let (_, nodes) = http(addr, "GET", "/v1/nodes", None);
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

async fn wait_for(addr: &str, node: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while guaranteed(addr, node) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "webhook never saw {want} Mbps guaranteed on {node}: {:?}",
            http(addr, "GET", "/v1/nodes", None).1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn filter_args(node: &str, bandwidth: &str) -> Value {
    json!({
        "Pod": {"metadata": {"name": "next", "namespace": "ml", "uid": "u-next",
                "annotations": {"rdma.conrdma.io/bandwidth": bandwidth}},
                "spec": {"containers": [{"name": "c", "image": "x"}]}},
        "Nodes": null,
        "NodeNames": [node]
    })
}

#[tokio::test]
async fn plugin_reports_feed_the_scheduler_extender() {
    let dir = tempfile::tempdir().unwrap();
    let nic = dir.path().join("nic");
    simulate_nic(&nic, 1, 4, "100G").unwrap();
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("placement.toml"),
        format!("tokens_file = {:?}\n", dir.path().join("tokens")),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");

    let cd = Containerd::start(ContainerdOptions::default())
        .await
        .unwrap();
    let mut webhook_cmd = Command::new(workspace_bin("conrdma-placement").unwrap());
    webhook_cmd
        .args(["--listen", &addr, "--config"])
        .arg(dir.path().join("placement.toml"));
    let _webhook = cd.spawn_process("placement", &mut webhook_cmd).unwrap();

    let node = "worker-e2e";
    let node_cfg = format!(
        "[placement]\nurl = \"http://{addr}\"\ncredential_file = {:?}\nnode_name = \"{node}\"\ninterval_seconds = 30\n",
        dir.path().join("token")
    );
    std::fs::write(dir.path().join("node.toml"), node_cfg).unwrap();
    let mut cd = cd;
    let _plugin = cd
        .start_nri_plugin([
            "--root".as_ref(),
            nic.as_os_str(),
            "--state-dir".as_ref(),
            dir.path().join("state").as_os_str(),
            "--config".as_ref(),
            dir.path().join("node.toml").as_os_str(),
        ])
        .await
        .unwrap();

    // The first report (at start) shows an empty node.
    wait_for(&addr, node, 0).await;
    let (status, res) = http(&addr, "POST", "/filter", Some(&filter_args(node, "70Gbps")));
    assert_eq!(status, 200);
    assert_eq!(res["NodeNames"], json!([node]), "{res}");

    // A pod admitted on the node shows up at once (reports go out on every change).
    let cri = cd.cri();
    let pod = cri
        .run_pod(
            "a",
            "default",
            "uid-a",
            &[("rdma.conrdma.io/bandwidth", "40Gbps")],
        )
        .await
        .unwrap();
    cri.run_container(&pod, "main", "", &["sleep", "3600"], &[])
        .await
        .unwrap();
    wait_for(&addr, node, 40_000).await;
    let (_, res) = http(&addr, "POST", "/filter", Some(&filter_args(node, "70Gbps")));
    assert_eq!(res["NodeNames"], json!([]), "{res}");
    let reason = res["FailedNodes"][node].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("conrdma:") && reason.contains("70Gbps"),
        "kube-scheduler shows why: {res}"
    );
    let (_, res) = http(&addr, "POST", "/filter", Some(&filter_args(node, "60Gbps")));
    assert_eq!(
        res["NodeNames"],
        json!([node]),
        "exactly what is left fits: {res}"
    );

    // Removing the pod gives the bandwidth back in the cluster view too.
    cri.stop_and_remove_pod(&pod).await.unwrap();
    wait_for(&addr, node, 0).await;
    cd.shutdown().await.unwrap();
}
