//! containerd 2.3's side of the shim start handshake, played from upstream's bootstrap proto
//! (`specs/containerd/bootstrap.proto`): `start` gets a protobuf `BootstrapParams` on stdin and
//! must print a protobuf `BootstrapResult` (version 3, ttrpc) whose address serves
//! `containerd.task.v3.Task`, backed by the real runc shim of the installed containerd line.
//! No containerd 2.3 binary exists on this machine, so this is the whole of what is checked for
//! 2.3: the handshake and the task service behind it, not a 2.3 daemon driving pods.
//!
//! Needs root (shim sockets live in /run/containerd/s), `hack/install-deps.sh` and
//! `cargo build --workspace --bins`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conrdma_e2e::{deps, workspace_bin};
use conrdma_shim::bootstrap::{BootstrapParams, BootstrapResult, Extension};
use conrdma_shim::options::{RuntimeOptions, RUNTIMEOPTIONS_TYPE};
use containerd_shim_protos::api::{ConnectRequest, ConnectResponse, ShutdownRequest};
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use ttrpc::Request;

fn call(
    client: &ttrpc::Client,
    service: &str,
    method: &str,
    msg: &dyn protobuf::MessageDyn,
) -> ttrpc::Result<ttrpc::Response> {
    let mut req = Request::new();
    req.service = service.into();
    req.method = method.into();
    req.payload = msg.write_to_bytes_dyn().unwrap();
    req.timeout_nano = 5_000_000_000;
    client.request(req)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn containerd_2_3_start_gets_a_bootstrap_result_and_a_v3_task_service() {
    deps::require_root().unwrap();
    let shim = workspace_bin("containerd-shim-conrdma-v1").unwrap();
    let runc_shim = deps::runc_shim_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = "sandbox-23";
    let ns = "k8s.io";
    let bundle = dir.path().join(id);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
    )
    .unwrap();
    // A plain file where containerd would have a fifo: the proxy's log, shown on failure.
    std::fs::write(bundle.join("log"), "").unwrap();
    let log = || std::fs::read_to_string(bundle.join("log")).unwrap_or_default();
    // A containerd address unique to this test keeps its socket name apart from any other's.
    let address = dir.path().join("containerd.sock").display().to_string();

    // What 2.3 writes: identity, addresses, and the CRI options table as an extension.
    let mut opts = Any::new();
    opts.type_url = RUNTIMEOPTIONS_TYPE.into();
    opts.value = RuntimeOptions {
        config_body: format!("runc_shim = {:?}\n", runc_shim.display().to_string()),
        ..Default::default()
    }
    .encode();
    let mut params = BootstrapParams::new();
    params.instance_id = id.into();
    params.namespace = ns.into();
    params.containerd_version = "2.3.0".into();
    params.containerd_grpc_address = address.clone();
    params.containerd_ttrpc_address = format!("{address}.ttrpc");
    params.containerd_binary = "/nonexistent/containerd".into();
    let mut ext = Extension::new();
    ext.value = Some(opts).into();
    params.extensions.push(ext);

    let mut child = Command::new(&shim)
        .args([
            "-namespace",
            ns,
            "-address",
            &address,
            "-publish-binary",
            "/nonexistent/containerd",
            "-id",
            id,
            "start",
        ])
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", format!("{address}.ttrpc"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&params.write_to_bytes().unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "start wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = BootstrapResult::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(result.version, 3);
    assert_eq!(result.protocol, "ttrpc");
    assert!(
        result.address.starts_with("unix:///run/containerd/s/"),
        "{}",
        result.address
    );
    // The shim also keeps `<bundle>/address` for reconnects.
    assert_eq!(
        std::fs::read_to_string(bundle.join("address")).unwrap(),
        result.address
    );

    let client = ttrpc::Client::connect(&result.address).unwrap();
    let mut c = ConnectRequest::new();
    c.id = id.into();
    let res = call(&client, "containerd.task.v3.Task", "Connect", &c)
        .unwrap_or_else(|e| panic!("v3 Connect: {e}; proxy log:\n{}", log()));
    assert!(
        res.status
            .as_ref()
            .is_none_or(|s| s.code() == ttrpc::Code::OK),
        "{:?}",
        res.status
    );
    let proxy_pid = ConnectResponse::parse_from_bytes(&res.payload)
        .unwrap()
        .shim_pid;
    assert!(
        alive(proxy_pid),
        "Connect names the proxy ({proxy_pid}) as the shim"
    );
    // The same task service answers under the v2 name (what 1.7 and 2.0-2.2 call).
    let res = call(&client, "containerd.task.v2.Task", "Connect", &c).unwrap();
    assert_eq!(
        ConnectResponse::parse_from_bytes(&res.payload)
            .unwrap()
            .shim_pid,
        proxy_pid
    );

    // With no containers, Shutdown ends the runc child and with it the proxy.
    let mut s = ShutdownRequest::new();
    s.id = id.into();
    let _ = call(&client, "containerd.task.v3.Task", "Shutdown", &s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(proxy_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = alive(proxy_pid);
    if left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(proxy_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(!left, "the proxy outlived its runc child's Shutdown");
    let socket = result.address.trim_start_matches("unix://");
    assert!(!Path::new(socket).exists(), "the proxy removed its socket");
}
