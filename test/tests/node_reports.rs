//! The NRI plugin's node reports reach the real placement webhook, and kube-scheduler's filter call
//! then sees the node's remaining bandwidth: admission on the node and placement in the cluster
//! agree. Real containerd, real plugin process, real webhook process, loopback only.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use conrdma_e2e::webhook::{call, extender_args, wait_for_guaranteed};
use conrdma_e2e::{simulate_nic, workspace_bin, Containerd, ContainerdOptions};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

const TOKEN: &str = "node-reporter-token";

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
    let node = "worker-e2e";
    let node_cfg = format!(
        "[placement]\nurl = \"http://{addr}\"\ncredential_file = {:?}\nnode_name = \"{node}\"\ninterval_seconds = 30\n",
        dir.path().join("token")
    );
    std::fs::write(dir.path().join("node.toml"), node_cfg).unwrap();
    let mut cd = cd;
    let _plugin = cd
        .start_plugin_on(
            &nic,
            &dir.path().join("state"),
            &[
                "--config".as_ref(),
                dir.path().join("node.toml").as_os_str(),
            ],
        )
        .await
        .unwrap();

    // The webhook starts after the node (a DaemonSet order nobody controls): the plugin's first
    // report fails and its retry, not the 30 s tick, brings the empty node to the webhook in time.
    let mut webhook_cmd = Command::new(workspace_bin("conrdma-placement").unwrap());
    webhook_cmd
        .args(["--listen", &addr, "--config"])
        .arg(dir.path().join("placement.toml"));
    let _webhook = cd.spawn_process("placement", &mut webhook_cmd).unwrap();

    wait_for_guaranteed(&addr, node, 0, WAIT).await;
    let (status, res) = call(
        &addr,
        "POST",
        "/filter",
        Some(&extender_args(node, "70Gbps")),
    );
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
    wait_for_guaranteed(&addr, node, 40_000, WAIT).await;
    let (_, res) = call(
        &addr,
        "POST",
        "/filter",
        Some(&extender_args(node, "70Gbps")),
    );
    assert_eq!(res["NodeNames"], json!([]), "{res}");
    let reason = res["FailedNodes"][node].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("conrdma:") && reason.contains("70Gbps"),
        "kube-scheduler shows why: {res}"
    );
    let (_, res) = call(
        &addr,
        "POST",
        "/filter",
        Some(&extender_args(node, "60Gbps")),
    );
    assert_eq!(
        res["NodeNames"],
        json!([node]),
        "exactly what is left fits: {res}"
    );

    // Removing the pod gives the bandwidth back in the cluster view too.
    cri.stop_and_remove_pod(&pod).await.unwrap();
    wait_for_guaranteed(&addr, node, 0, WAIT).await;
    cd.shutdown().await.unwrap();
}
