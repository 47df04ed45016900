//! End-to-end sessions over real Unix sockets: the plugin side is
//! `conrdma_nri::serve`, the containerd side is the test peer.

mod common;

use std::sync::Arc;

use common::*;
use conrdma_nri::mux::PLUGIN_CONN;
use conrdma_nri::ttrpc;
use conrdma_nri::*;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

fn plugin_id() -> PluginId {
    PluginId::new("conrdma", "10").expect("valid id")
}

/// Starts `serve` on one end of a socket pair and the peer on the other.
async fn session(
    mask: EventMask,
    gate: Option<oneshot::Receiver<()>>,
) -> (
    Peer,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
    JoinHandle<Result<(), NriError>>,
) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let (handler, seen) = test_handler(mask);
    let served = tokio::spawn(serve(ours, plugin_id(), handler));
    let peer = Peer::start(theirs, gate).await;
    (peer, seen, served)
}

#[tokio::test]
async fn registers_with_name_and_idx_and_configures_mask() {
    let mask = EventMask::CREATE_CONTAINER | EventMask::STOP_CONTAINER | EventMask::RUN_POD_SANDBOX;
    let (mut peer, mut seen, _served) = session(mask, None).await;

    let reg = peer.next_registration().await;
    assert_eq!(reg.plugin_name, "conrdma");
    assert_eq!(reg.plugin_idx, "10");
    assert_eq!(reg.nri_version, "v0.12.2");

    let req = ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: "1.7.24~ds1".into(),
        ..Default::default()
    };
    let resp = peer.plugin.configure(ctx(), &req).await.expect("configure");
    assert_eq!(resp.events, 0x1 | 0x8 | 0x200);
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Configure("containerd".into())
    );

    let sync = SynchronizeRequest {
        pods: vec![pod("p")],
        containers: vec![container("a"), container("b")],
        ..Default::default()
    };
    let resp = peer
        .plugin
        .synchronize(ctx(), &sync)
        .await
        .expect("synchronize");
    assert!(resp.update.is_empty());
    assert_eq!(next_seen(&mut seen).await, Seen::Synchronize(1, 2));
}

#[tokio::test]
async fn configure_is_answered_while_registration_reply_is_held_back() {
    let (release, gate) = oneshot::channel();
    let (mut peer, _seen, served) = session(EventMask::ALL, Some(gate)).await;

    // containerd sends Configure right after it accepts the registration,
    // before its reply; the plugin must answer without waiting for it.
    peer.next_registration().await;
    let resp = timeout(T, peer.plugin.configure(ctx(), &ConfigureRequest::new()))
        .await
        .expect("configure answered in time")
        .expect("configure ok");
    assert_eq!(resp.events, 0x7ff);
    assert!(!served.is_finished());

    release.send(()).expect("release registration");
    // The session stays up after the delayed reply.
    let resp = peer
        .plugin
        .create_container(
            ctx(),
            &CreateContainerRequest {
                container: Some(container("after")).into(),
                ..Default::default()
            },
        )
        .await
        .expect("create after registration");
    assert!(resp.adjust.is_some());
    assert!(!served.is_finished());
}

#[tokio::test]
async fn create_container_returns_adjustment() {
    let (mut peer, mut seen, _served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;

    let req = CreateContainerRequest {
        pod: Some(pod("pod-a")).into(),
        container: Some(container("web")).into(),
        ..Default::default()
    };
    let resp = peer
        .plugin
        .create_container(ctx(), &req)
        .await
        .expect("create");
    assert_eq!(next_seen(&mut seen).await, Seen::Create("web".into()));
    assert_eq!(resp.adjust.as_ref(), Some(&small_adjustment()));
    let adjust = resp.adjust.as_ref().expect("adjustment");
    assert_eq!(
        adjust.annotations.get("conrdma.io/vf").map(String::as_str),
        Some("0000:3b:00.2")
    );
    let devices = &adjust.linux.as_ref().expect("linux").devices;
    assert_eq!(devices[0].path, "/dev/infiniband/uverbs3");
    assert_eq!((devices[0].major, devices[0].minor), (231, 195));
}

#[tokio::test]
async fn large_response_arrives_intact_in_small_frames() {
    let (ours, plugin_side_of_proxy) = UnixStream::pair().expect("pair");
    let (peer_side_of_proxy, theirs) = UnixStream::pair().expect("pair");
    let mut frames = frame_proxy(plugin_side_of_proxy, peer_side_of_proxy);
    let (handler, _seen) = test_handler(EventMask::ALL);
    let _served = tokio::spawn(serve(ours, plugin_id(), handler));
    let mut peer = Peer::start(theirs, None).await;
    peer.next_registration().await;

    let req = CreateContainerRequest {
        container: Some(container("big")).into(),
        ..Default::default()
    };
    let resp = peer
        .plugin
        .create_container(ctx(), &req)
        .await
        .expect("create");
    let annotations = &resp.adjust.as_ref().expect("adjustment").annotations;
    assert_eq!(annotations, &big_annotations());

    let mut conn1_bytes = 0;
    let mut conn1_frames = 0;
    while let Ok(frame) = frames.try_recv() {
        assert!(
            frame.len <= 4096,
            "frame of {} bytes on conn {}",
            frame.len,
            frame.conn
        );
        if frame.conn == PLUGIN_CONN {
            conn1_bytes += frame.len;
            conn1_frames += 1;
        }
    }
    // The reply alone is over 20 KB, so it must have been split.
    assert!(
        conn1_bytes > 20_000,
        "only {conn1_bytes} bytes seen on conn 1"
    );
    assert!(conn1_frames >= 5, "only {conn1_frames} frames on conn 1");
}

#[tokio::test]
async fn handler_error_reaches_caller_with_code_and_exact_message() {
    let (mut peer, mut seen, served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;

    let req = CreateContainerRequest {
        container: Some(container("fail")).into(),
        ..Default::default()
    };
    let err = peer
        .plugin
        .create_container(ctx(), &req)
        .await
        .expect_err("creation must fail");
    match err {
        ttrpc::Error::RpcStatus(status) => {
            assert_eq!(status.code(), ttrpc::Code::RESOURCE_EXHAUSTED);
            assert_eq!(status.message(), FAIL_MESSAGE);
        }
        other => panic!("expected an RPC status, got {other:?}"),
    }
    assert_eq!(next_seen(&mut seen).await, Seen::Create("fail".into()));
    // An error fails the request, not the session.
    assert!(!served.is_finished());
    peer.plugin
        .configure(ctx(), &ConfigureRequest::new())
        .await
        .expect("still serving");
}

#[tokio::test]
async fn stop_update_state_change_and_shutdown_reach_handler() {
    let (mut peer, mut seen, _served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;

    let stop = StopContainerRequest {
        pod: Some(pod("p")).into(),
        container: Some(container("db")).into(),
        ..Default::default()
    };
    let resp = peer
        .plugin
        .stop_container(ctx(), &stop)
        .await
        .expect("stop");
    assert_eq!(next_seen(&mut seen).await, Seen::Stop("db".into()));
    assert_eq!(resp.update.len(), 1);
    assert_eq!(resp.update[0].container_id, "db-neighbour");
    assert!(resp.update[0].ignore_failure);

    let update = UpdateContainerRequest {
        container: Some(container("db")).into(),
        ..Default::default()
    };
    let resp = peer
        .plugin
        .update_container(ctx(), &update)
        .await
        .expect("update");
    assert!(resp.update.is_empty());
    assert_eq!(next_seen(&mut seen).await, Seen::Update("db".into()));

    for event in [Event::RUN_POD_SANDBOX, Event::REMOVE_CONTAINER] {
        let ev = StateChangeEvent {
            event: event.into(),
            pod: Some(pod("p")).into(),
            ..Default::default()
        };
        peer.plugin
            .state_change(ctx(), &ev)
            .await
            .expect("state change");
        assert_eq!(next_seen(&mut seen).await, Seen::State(event, "p".into()));
    }

    peer.plugin
        .shutdown(ctx(), &Empty::new())
        .await
        .expect("shutdown");
    assert_eq!(next_seen(&mut seen).await, Seen::Shutdown);
}

#[tokio::test]
async fn serve_returns_when_peer_closes_socket() {
    let (mut peer, _seen, served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;
    // Let the registration reply reach the plugin before closing.
    peer.plugin
        .configure(ctx(), &ConfigureRequest::new())
        .await
        .expect("configure");
    drop(peer);
    let result = timeout(T, served).await.expect("serve ends").expect("task");
    assert!(result.is_ok(), "clean EOF should be Ok, got {result:?}");
}

#[tokio::test]
async fn closing_before_registration_reply_is_an_error() {
    let (release, gate) = oneshot::channel::<()>();
    let (mut peer, _seen, served) = session(EventMask::ALL, Some(gate)).await;
    peer.next_registration().await;
    drop(peer);
    drop(release);
    let result = timeout(T, served).await.expect("serve ends").expect("task");
    assert!(
        matches!(
            result,
            Err(NriError::ClosedBeforeRegistration) | Err(NriError::Registration(_))
        ),
        "got {result:?}"
    );
}

#[tokio::test]
async fn handler_can_be_shared_across_sessions() {
    // The same Arc serves two sessions at once (one per socket).
    let (handler, _seen) = test_handler(EventMask::ALL);
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        tokio::spawn(serve(ours, plugin_id(), Arc::clone(&handler)));
        let mut peer = Peer::start(theirs, None).await;
        peer.next_registration().await;
        peers.push(peer);
    }
    for peer in &peers {
        peer.plugin
            .configure(ctx(), &ConfigureRequest::new())
            .await
            .expect("configure");
    }
}

/// Configure as a given runtime release sends it.
fn configure_from(version: &str, nri_version: &str) -> ConfigureRequest {
    ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: version.into(),
        nri_version: nri_version.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn subscription_never_has_bits_the_runtime_rejects() {
    // A handler that wants a v0.10 event next to CreateContainer.
    let wanted = EventMask::CREATE_CONTAINER | EventMask::UPDATE_POD_SANDBOX;
    let cases = [
        (configure_from("1.7.24~ds1", ""), 0x8),
        (configure_from("2.1.9+unknown", ""), 0x8),
        (configure_from("2.2.1", ""), 0x8 | 0x800),
        (configure_from("2.3.0", "v0.12.0"), 0x8 | 0x800),
        (ConfigureRequest::new(), 0x8),
    ];
    for (req, events) in cases {
        let (mut peer, _seen, _served) = session(wanted, None).await;
        peer.next_registration().await;
        let resp = peer.plugin.configure(ctx(), &req).await.expect("configure");
        assert_eq!(resp.events, events, "runtime {:?}", req.runtime_version);
    }

    // "All events" is spelled out and leaves validation out on any level.
    for (req, events) in [
        (configure_from("2.1.9", ""), 0x7ff),
        (configure_from("2.3.0", "v0.12.0"), 0x1fff),
    ] {
        let (mut peer, _seen, _served) = session(EventMask::from_bits(0).expect("0"), None).await;
        peer.next_registration().await;
        let resp = peer.plugin.configure(ctx(), &req).await.expect("configure");
        assert_eq!(resp.events, events);
    }

    // Nothing left to subscribe to: Configure fails with a reason.
    let (mut peer, _seen, _served) = session(EventMask::UPDATE_POD_SANDBOX, None).await;
    peer.next_registration().await;
    let err = peer
        .plugin
        .configure(ctx(), &configure_from("1.7.24", ""))
        .await
        .expect_err("no events left");
    match err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
            assert!(s.message().contains("0x800"), "{}", s.message());
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn split_synchronize_echoes_more_and_hands_over_the_whole_state_once() {
    let (mut peer, mut seen, _served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;

    let parts = [
        (vec![pod("a")], vec![container("a1")], true),
        (vec![], vec![container("a2"), container("a3")], true),
        (vec![pod("b")], vec![container("b1")], false),
    ];
    for (pods, containers, more) in parts {
        let req = SynchronizeRequest {
            pods,
            containers,
            more,
            ..Default::default()
        };
        let resp = peer.plugin.synchronize(ctx(), &req).await.expect("part");
        // The runtime drops a plugin that answers a part differently.
        assert_eq!(resp.more, more);
        assert!(resp.update.is_empty());
    }
    assert_eq!(next_seen(&mut seen).await, Seen::Synchronize(2, 4));

    // The next (unsplit) Synchronize starts afresh.
    let req = SynchronizeRequest {
        pods: vec![pod("c")],
        ..Default::default()
    };
    let resp = peer.plugin.synchronize(ctx(), &req).await.expect("whole");
    assert!(!resp.more);
    assert_eq!(next_seen(&mut seen).await, Seen::Synchronize(1, 0));
}

#[tokio::test]
async fn dedicated_event_rpcs_of_nri_0_12_reach_the_handler() {
    let (mut peer, mut seen, _served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;
    let p = || -> protobuf::MessageField<PodSandbox> { Some(pod("p")).into() };
    let c = || -> protobuf::MessageField<Container> { Some(container("c")).into() };
    let plugin = &peer.plugin;

    // Each call must reach the handler as the state change of its event, for pod "p".
    macro_rules! relayed {
        ($rpc:ident, $req:ident { $($f:ident: $v:expr),* }, $event:ident) => {
            let req = $req { $($f: $v,)* ..Default::default() };
            plugin.$rpc(ctx(), &req).await.expect(stringify!($rpc));
            assert_eq!(next_seen(&mut seen).await, Seen::State(Event::$event, "p".into()));
        };
    }
    relayed! { run_pod_sandbox, RunPodSandboxRequest { pod: p() }, RUN_POD_SANDBOX }
    relayed! { start_container, StartContainerRequest { pod: p(), container: c() }, START_CONTAINER }
    relayed! { remove_container, RemoveContainerRequest { pod: p(), container: c() }, REMOVE_CONTAINER }
    relayed! { stop_pod_sandbox, StopPodSandboxRequest { pod: p() }, STOP_POD_SANDBOX }
    relayed! { remove_pod_sandbox, RemovePodSandboxRequest { pod: p() }, REMOVE_POD_SANDBOX }
}

#[tokio::test]
async fn methods_not_served_answer_unimplemented() {
    // An NRI v0.12 runtime treats any other code as a failed call.
    let (mut peer, _seen, _served) = session(EventMask::ALL, None).await;
    peer.next_registration().await;

    let validate = ValidateContainerAdjustmentRequest {
        container: Some(container("c")).into(),
        ..Default::default()
    };
    let err = peer
        .plugin
        .validate_container_adjustment(ctx(), &validate)
        .await
        .expect_err("not served");
    assert!(
        matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::UNIMPLEMENTED),
        "{err:?}"
    );

    // A method a later NRI might add.
    let mut req = ttrpc::Request::new();
    req.set_service("nri.pkg.api.v1alpha1.Plugin".into());
    req.set_method("SomeFutureEvent".into());
    req.set_timeout_nano(2_000_000_000);
    let resp = peer.raw.request(req).await;
    let code = match resp {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        Ok(r) => r.status().code(),
        Err(other) => panic!("unexpected error {other:?}"),
    };
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED);
}
