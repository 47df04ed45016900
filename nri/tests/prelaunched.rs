//! Pre-launched mode: the socket comes from NRI_PLUGIN_SOCKET. One test in
//! its own binary, because it changes the process environment.

mod common;

use std::os::fd::IntoRawFd;

use common::*;
use conrdma_nri::*;
use tokio::net::UnixStream;
use tokio::time::timeout;

#[tokio::test]
async fn prelaunched_socket_is_taken_from_env_and_served() {
    std::env::remove_var(SOCKET_ENV);
    assert!(prelaunched_stream().expect("unset is fine").is_none());

    std::env::set_var(SOCKET_ENV, "three");
    assert!(matches!(
        prelaunched_stream(),
        Err(NriError::InvalidSocketEnv(v)) if v == "three"
    ));

    // A closed descriptor number is refused without being taken.
    let closed_fd = std::fs::File::open("/dev/null")
        .expect("open")
        .into_raw_fd();
    nix::unistd::close(closed_fd).expect("close");
    std::env::set_var(SOCKET_ENV, closed_fd.to_string());
    assert!(matches!(
        prelaunched_stream(),
        Err(NriError::BadSocketFd { .. })
    ));

    // What containerd does: one end of a socket pair, by number.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    let fd = ours.into_raw_fd();
    std::env::set_var(SOCKET_ENV, fd.to_string());
    let stream = prelaunched_stream()
        .expect("usable socket")
        .expect("env is set");
    assert!(matches!(
        prelaunched_stream(),
        Err(NriError::SocketAlreadyTaken)
    ));

    theirs.set_nonblocking(true).expect("nonblocking");
    let theirs = UnixStream::from_std(theirs).expect("tokio stream");
    let (handler, mut seen) = test_handler(EventMask::ALL);
    let id = PluginId::new("rdma", "05").expect("id");
    let served = tokio::spawn(serve(stream, id, handler));
    let mut peer = Peer::start(theirs, None).await;
    let reg = peer.next_registration().await;
    assert_eq!(reg.plugin_name, "rdma");
    let config = ConfigureRequest {
        config: "[vf]\nmin_gbps = 1\n".into(),
        ..Default::default()
    };
    peer.plugin
        .configure(ctx(), &config)
        .await
        .expect("configure");
    assert!(matches!(next_seen(&mut seen).await, Seen::Configure(_)));

    drop(peer);
    let result = timeout(T, served).await.expect("serve ends").expect("task");
    assert!(result.is_ok(), "got {result:?}");
}
