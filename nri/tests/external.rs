//! `run_external` against a listening Unix socket that plays containerd.

mod common;

use std::time::Duration;

use common::*;
use conrdma_nri::*;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::time::timeout;

#[tokio::test]
async fn run_external_retries_reconnects_and_reregisters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nri.sock");
    let (handler, mut seen) = test_handler(EventMask::CREATE_CONTAINER);
    let (stop, stopped) = oneshot::channel::<()>();
    let id = PluginId::new("conrdma", "42").expect("id");
    let runner = {
        let path = path.clone();
        tokio::spawn(async move {
            run_external(&path, id, handler, async {
                let _ = stopped.await;
            })
            .await
        })
    };

    // No socket yet: the plugin must keep retrying until it appears.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!runner.is_finished());
    let listener = UnixListener::bind(&path).expect("bind");

    for round in 0..2 {
        let (stream, _) = timeout(T, listener.accept())
            .await
            .unwrap_or_else(|_| panic!("plugin connected in round {round}"))
            .expect("accept");
        let mut peer = Peer::start(stream, None).await;
        let reg = peer.next_registration().await;
        assert_eq!(
            (reg.plugin_name.as_str(), reg.plugin_idx.as_str()),
            ("conrdma", "42")
        );

        // Every session starts with Configure (and Synchronize) again.
        let resp = peer
            .plugin
            .configure(ctx(), &ConfigureRequest::new())
            .await
            .expect("configure");
        assert_eq!(resp.events, 0x8);
        assert!(matches!(next_seen(&mut seen).await, Seen::Configure(_)));
        let sync = SynchronizeRequest {
            containers: vec![container("c")],
            ..Default::default()
        };
        peer.plugin.synchronize(ctx(), &sync).await.expect("sync");
        assert_eq!(next_seen(&mut seen).await, Seen::Synchronize(0, 1));

        // containerd restarting looks like the socket closing.
        drop(peer);
    }

    stop.send(()).expect("stop");
    let result = timeout(T, runner)
        .await
        .expect("runner stops")
        .expect("task");
    assert!(result.is_ok(), "got {result:?}");
}

#[tokio::test]
async fn run_external_stops_while_waiting_to_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.sock");
    let (handler, _seen) = test_handler(EventMask::ALL);
    let id = PluginId::new("conrdma", "42").expect("id");
    let shutdown = tokio::time::sleep(Duration::from_millis(300));
    let result = timeout(T, run_external(&path, id, handler, shutdown))
        .await
        .expect("returns after shutdown");
    assert!(result.is_ok());
}
