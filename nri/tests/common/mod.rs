//! Test doubles: a containerd-side peer built from the same mux and the
//! generated ttrpc code, a recording plugin handler, and a frame-inspecting
//! proxy.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conrdma_nri::generated::api_ttrpc::{create_runtime, PluginClient, Runtime};
use conrdma_nri::mux::{Mux, HEADER_LEN, PLUGIN_CONN, RUNTIME_CONN};
use conrdma_nri::ttrpc;
use conrdma_nri::ttrpc::asynchronous::transport::{Listener, Socket};
use conrdma_nri::ttrpc::asynchronous::{Client, Server, TtrpcContext};
use conrdma_nri::*;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Generous bound for anything that should happen "now".
pub const T: Duration = Duration::from_secs(5);

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(2))
}

/// containerd's Runtime service as seen by the plugin.
struct FakeRuntime {
    registrations: mpsc::UnboundedSender<RegisterPluginRequest>,
    /// When set, the RegisterPlugin reply waits for this gate.
    gate: Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: RegisterPluginRequest,
    ) -> ttrpc::Result<Empty> {
        let _ = self.registrations.send(req);
        let gate = self.gate.lock().expect("gate lock").take();
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        Ok(Empty::new())
    }
}

/// The containerd side of one session.
pub struct Peer {
    pub plugin: PluginClient,
    /// The same connection, for requests the generated client cannot make.
    pub raw: Client,
    pub registrations: mpsc::UnboundedReceiver<RegisterPluginRequest>,
    _server: Server,
    _mux: Mux,
}

impl Peer {
    /// Plays containerd on `stream`. With `gate`, the RegisterPlugin reply
    /// is held back until the gate fires.
    pub async fn start<S>(stream: S, gate: Option<oneshot::Receiver<()>>) -> Peer
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mux, [plugin_io, runtime_io]) = Mux::start(stream, [PLUGIN_CONN, RUNTIME_CONN]);
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = FakeRuntime {
            registrations: tx,
            gate: Mutex::new(gate),
        };
        let incoming =
            futures::stream::once(async move { Ok(runtime_io) }).chain(futures::stream::pending());
        let mut server = Server::new()
            .register_service(create_runtime(Arc::new(runtime)))
            .add_listener(Listener::new(incoming));
        server.start().await.expect("peer server");
        let raw = Client::new(Socket::new(plugin_io));
        let plugin = PluginClient::new(raw.clone());
        Peer {
            plugin,
            raw,
            registrations: rx,
            _server: server,
            _mux: mux,
        }
    }

    pub async fn next_registration(&mut self) -> RegisterPluginRequest {
        tokio::time::timeout(T, self.registrations.recv())
            .await
            .expect("registration in time")
            .expect("registration channel open")
    }
}

/// What the test handler saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Configure(String),
    Synchronize(usize, usize),
    Create(String),
    Update(String),
    Stop(String),
    State(Event, String),
    Shutdown,
}

/// A handler that records calls and answers by container name:
/// "fail" -> error, "big" -> ~20 KB of annotations, others -> a small adjustment.
pub struct TestHandler {
    pub seen: mpsc::UnboundedSender<Seen>,
    pub mask: EventMask,
}

pub const FAIL_MESSAGE: &str =
    "conrdma: no VF with 25 Gbit/s left on mlx5_0 (free: 10 Gbit/s) \"quoted\" ünïcode";

pub fn big_annotations() -> HashMap<String, String> {
    (0..200)
        .map(|i| {
            (
                format!("conrdma.io/key-{i:03}"),
                format!("{i:03}-{}", "v".repeat(96)),
            )
        })
        .collect()
}

pub fn small_adjustment() -> ContainerAdjustment {
    let mut adjust = ContainerAdjustment::new();
    adjust
        .annotations
        .insert("conrdma.io/vf".into(), "0000:3b:00.2".into());
    adjust.env.push(KeyValue {
        key: "CONRDMA_DEVICE".into(),
        value: "mlx5_3".into(),
        ..Default::default()
    });
    let mut linux = LinuxContainerAdjustment::new();
    linux.devices.push(LinuxDevice {
        path: "/dev/infiniband/uverbs3".into(),
        type_: "c".into(),
        major: 231,
        minor: 195,
        ..Default::default()
    });
    adjust.linux = protobuf::MessageField::some(linux);
    adjust
}

fn cname(c: &protobuf::MessageField<Container>) -> String {
    c.as_ref().map(|c| c.name.clone()).unwrap_or_default()
}

#[async_trait::async_trait]
impl Handler for TestHandler {
    async fn configure(&self, req: ConfigureRequest) -> Result<EventMask, RpcError> {
        let _ = self.seen.send(Seen::Configure(req.runtime_name));
        Ok(self.mask)
    }

    async fn synchronize(&self, req: SynchronizeRequest) -> Result<Vec<ContainerUpdate>, RpcError> {
        let _ = self
            .seen
            .send(Seen::Synchronize(req.pods.len(), req.containers.len()));
        Ok(vec![])
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, RpcError> {
        let name = cname(&req.container);
        let _ = self.seen.send(Seen::Create(name.clone()));
        let mut resp = CreateContainerResponse::new();
        match name.as_str() {
            "fail" => return Err(RpcError::resource_exhausted(FAIL_MESSAGE)),
            "big" => {
                let mut adjust = ContainerAdjustment::new();
                adjust.annotations = big_annotations();
                resp.adjust = protobuf::MessageField::some(adjust);
            }
            _ => resp.adjust = protobuf::MessageField::some(small_adjustment()),
        }
        Ok(resp)
    }

    async fn update_container(
        &self,
        req: UpdateContainerRequest,
    ) -> Result<Vec<ContainerUpdate>, RpcError> {
        let _ = self.seen.send(Seen::Update(cname(&req.container)));
        Ok(vec![])
    }

    async fn stop_container(
        &self,
        req: StopContainerRequest,
    ) -> Result<Vec<ContainerUpdate>, RpcError> {
        let name = cname(&req.container);
        let _ = self.seen.send(Seen::Stop(name.clone()));
        let mut update = ContainerUpdate::new();
        update.container_id = format!("{name}-neighbour");
        update.ignore_failure = true;
        Ok(vec![update])
    }

    async fn state_change(&self, ev: StateChangeEvent) -> Result<(), RpcError> {
        let event = ev.event.enum_value_or_default();
        let pod = ev.pod.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        let _ = self.seen.send(Seen::State(event, pod));
        Ok(())
    }

    async fn shutdown(&self) {
        let _ = self.seen.send(Seen::Shutdown);
    }
}

pub fn test_handler(mask: EventMask) -> (Arc<TestHandler>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(TestHandler { seen: tx, mask }), rx)
}

pub async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("handler call in time")
        .expect("handler channel open")
}

pub fn container(name: &str) -> Container {
    Container {
        id: format!("{name}-id"),
        name: name.into(),
        pod_sandbox_id: "pod-id".into(),
        ..Default::default()
    }
}

pub fn pod(name: &str) -> PodSandbox {
    PodSandbox {
        id: "pod-id".into(),
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

/// A frame seen by [`frame_proxy`].
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    pub conn: u32,
    pub len: usize,
}

/// Forwards bytes between `plugin_side` and `peer_side`, parsing the frames
/// the plugin sends and reporting each one's connection and payload size.
pub fn frame_proxy(
    plugin_side: UnixStream,
    peer_side: UnixStream,
) -> mpsc::UnboundedReceiver<FrameInfo> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (mut from_plugin, mut to_plugin) = plugin_side.into_split();
    let (mut from_peer, mut to_peer) = peer_side.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_peer, &mut to_plugin).await;
        let _ = to_plugin.shutdown().await;
    });
    tokio::spawn(async move {
        let mut header = [0u8; HEADER_LEN];
        loop {
            if from_plugin.read_exact(&mut header).await.is_err() {
                break;
            }
            let conn = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
            let mut payload = vec![0u8; len];
            if from_plugin.read_exact(&mut payload).await.is_err() {
                break;
            }
            let _ = tx.send(FrameInfo { conn, len });
            // Forward the frame exactly as it came.
            if to_peer.write_all(&header).await.is_err()
                || to_peer.write_all(&payload).await.is_err()
            {
                break;
            }
        }
        let _ = to_peer.shutdown().await;
    });
    rx
}
