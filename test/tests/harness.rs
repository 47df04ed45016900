//! Smoke tests of the harness itself: a real containerd with NRI on, no plugin, a busybox pod.
//!
//! Needs root and `hack/install-deps.sh`; fails (does not skip) otherwise.

use std::time::{Duration, Instant};

use conrdma_e2e::containerd::{mounts_under, processes_under, shim_pids};
use conrdma_e2e::deps::{containerd_semver, ContainerdLine};
use conrdma_e2e::{Containerd, ContainerdOptions};

const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

async fn start() -> Containerd {
    let t = Instant::now();
    let cd = Containerd::start(ContainerdOptions::default())
        .await
        .unwrap_or_else(|e| panic!("starting containerd: {e}"));
    eprintln!("timing: containerd start + image import {:?}", t.elapsed());
    eprintln!(
        "containerd {} line: {}",
        cd.line(),
        cd.version().unwrap_or_else(|e| e.to_string())
    );
    cd
}

fn assert_clean(dir: &std::path::Path, addr: &str) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        mounts_under(dir).is_empty(),
        "leaked mounts under {}",
        dir.display()
    );
    assert!(shim_pids(addr).is_empty(), "leftover shims for {addr}");
    assert!(
        processes_under(dir).is_empty(),
        "leftover processes rooted in {}",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_container_exec_inspect_remove() {
    let cd = start().await;
    assert!(cd.nri_socket().exists(), "NRI socket missing");
    let log = cd.log();
    assert!(
        log.contains("runtime interface starting up"),
        "NRI did not start; log:\n{log}"
    );
    let cri = cd.cri();

    let t = Instant::now();
    let pod = cri
        .run_pod("smoke", "default", "uid-smoke", &[("example.com/a", "b")])
        .await
        .expect("RunPodSandbox");
    eprintln!("timing: RunPodSandbox {:?}", t.elapsed());

    let t = Instant::now();
    let ctr = cri
        .create_container(&pod, "sleeper", cd.image(), &["sleep", "3600"], &[])
        .await
        .expect("CreateContainer");
    eprintln!("timing: CreateContainer {:?}", t.elapsed());
    let t = Instant::now();
    cri.start_container(&ctr).await.expect("StartContainer");
    eprintln!("timing: StartContainer {:?}", t.elapsed());

    let t = Instant::now();
    let (code, out, err) = cri
        .exec_sync(&ctr, &["echo", "hello"], EXEC_TIMEOUT)
        .await
        .expect("ExecSync");
    eprintln!("timing: ExecSync {:?}", t.elapsed());
    assert_eq!((code, out.trim(), err.as_str()), (0, "hello", ""));

    let (code, _, _) = cri
        .exec_sync(&ctr, &["sh", "-c", "exit 3"], EXEC_TIMEOUT)
        .await
        .expect("ExecSync exit 3");
    assert_eq!(code, 3);

    let info = cri
        .container_status_verbose(&ctr)
        .await
        .expect("ContainerStatus verbose");
    let args = &info["runtimeSpec"]["process"]["args"];
    assert_eq!(
        args,
        &serde_json::json!(["sleep", "3600"]),
        "info: {info:#}"
    );
    assert_eq!(
        info["runtimeSpec"]["annotations"]["io.kubernetes.cri.container-type"],
        "container"
    );
    assert!(info["pid"].as_u64().unwrap_or(0) > 0, "info: {info:#}");

    let pinfo = cri
        .pod_status_verbose(&pod)
        .await
        .expect("PodSandboxStatus");
    assert_eq!(
        pinfo["runtimeSpec"]["annotations"]["io.kubernetes.cri.container-type"],
        "sandbox"
    );

    let pods = cri.list_pods().await.expect("ListPodSandbox");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, pod);
    let containers = cri.list_containers().await.expect("ListContainers");
    assert_eq!(containers.len(), 1);

    // Errors come back as the untouched tonic::Status.
    let err = cri
        .create_container(&pod, "bad", "localhost/no/such:image", &["true"], &[])
        .await
        .expect_err("unknown image must fail");
    eprintln!("unknown image: {:?} {}", err.code(), err.message());

    let t = Instant::now();
    cri.stop_container(&ctr, 0).await.expect("StopContainer");
    cri.remove_container(&ctr).await.expect("RemoveContainer");
    eprintln!("timing: Stop+RemoveContainer {:?}", t.elapsed());
    let t = Instant::now();
    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    eprintln!("timing: Stop+RemovePodSandbox {:?}", t.elapsed());
    assert!(cri.list_pods().await.expect("ListPodSandbox").is_empty());

    let dir = cd.dir().to_path_buf();
    let addr = cd.socket().to_string_lossy().into_owned();
    let t = Instant::now();
    cd.shutdown().await.expect("shutdown");
    eprintln!("timing: shutdown {:?}", t.elapsed());
    assert_clean(&dir, &addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_survives_containerd_restart() {
    let mut cd = start().await;
    let cri = cd.cri();
    let pod = cri
        .run_pod("restart", "default", "uid-restart", &[])
        .await
        .expect("RunPodSandbox");
    let ctr = cri
        .run_container(&pod, "sleeper", cd.image(), &["sleep", "3600"], &[])
        .await
        .expect("create+start");

    let mark = cd.log_mark();
    let t = Instant::now();
    cd.restart().await.expect("restart");
    eprintln!("timing: restart {:?}", t.elapsed());
    assert!(
        cd.log_since(mark).contains("runtime interface starting up"),
        "NRI did not come back"
    );

    let cri = cd.cri();
    let pods = cri.list_pods().await.expect("ListPodSandbox");
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pod.as_str()]
    );
    assert_eq!(
        pods[0].state,
        conrdma_e2e::cri::v1::PodSandboxState::SandboxReady as i32
    );
    let (code, out, _) = cri
        .exec_sync(&ctr, &["echo", "still here"], EXEC_TIMEOUT)
        .await
        .expect("ExecSync after restart");
    assert_eq!((code, out.trim()), (0, "still here"));

    // The sandbox config survives the restart, so new containers still get it.
    let ctr2 = cri
        .run_container(&pod, "second", cd.image(), &["sleep", "3600"], &[])
        .await
        .expect("second container after restart");
    assert_ne!(ctr, ctr2);

    // Kill containerd hard and let Drop clean up: pods and shims must not leak.
    cd.kill().expect("kill");
    let dir = cd.dir().to_path_buf();
    let addr = cd.socket().to_string_lossy().into_owned();
    assert!(
        !shim_pids(&addr).is_empty(),
        "shims should outlive containerd"
    );
    drop(cd);
    assert_clean(&dir, &addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_removes_running_pods() {
    let cd = start().await;
    let cri = cd.cri();
    let pod = cri
        .run_pod("dropped", "default", "uid-drop", &[])
        .await
        .expect("RunPodSandbox");
    cri.run_container(&pod, "sleeper", "", &["sleep", "3600"], &[])
        .await
        .expect("create+start with the default image");
    let dir = cd.dir().to_path_buf();
    let addr = cd.socket().to_string_lossy().into_owned();
    assert!(!mounts_under(&dir).is_empty(), "expected rootfs/shm mounts");
    let t = Instant::now();
    drop(cd);
    eprintln!("timing: drop with a running pod {:?}", t.elapsed());
    assert_clean(&dir, &addr);
}

/// The instance runs the line `CONRDMA_CONTAINERD` asks for, with that line's config format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_selected_line() {
    let cd = start().await;
    let (major, minor, _) = containerd_semver().expect("containerd version");
    let config: toml::Table = cd.config_text().parse().expect("config.toml");
    match cd.line() {
        ContainerdLine::Is17 => assert_eq!((major, minor), (1, 7)),
        ContainerdLine::Is2x => assert_eq!(major, 2),
    }
    assert_eq!(
        config["version"].as_integer(),
        Some(cd.line().config_version())
    );
    let log = cd.log();
    // 1.7 quotes the value (`version="1.7.24~ds1"`), 2.1 does not (`version=2.1.9+unknown`).
    let expect = [
        format!("version={major}.{minor}."),
        format!("version=\"{major}.{minor}."),
    ];
    assert!(
        expect.iter().any(|e| log.contains(e)),
        "log should say {}; log:\n{log}",
        expect[0]
    );
    cd.shutdown().await.expect("shutdown");
}
