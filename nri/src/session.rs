//! One NRI session over one connected socket: serve the plugin service on
//! connection 1 and register through connection 2.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};
use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::asynchronous::{Client, Server, TtrpcContext};

use crate::error::NriError;
use crate::error::RpcError;
use crate::generated::api::*;
use crate::generated::api_ttrpc::{create_plugin, Plugin, RuntimeClient};
use crate::handler::Handler;
use crate::id::PluginId;
use crate::level::{RuntimeLevel, API_VERSION};
use crate::mux::{Mux, PLUGIN_CONN, RUNTIME_CONN};

/// How long to wait for the RegisterPlugin reply. containerd gives up on its
/// side after 5 s by default, so a longer wait only delays the reconnect.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one NRI session on a connected socket until it closes.
///
/// The plugin service is served on connection 1 before RegisterPlugin is
/// sent, because containerd may send Configure before replying to it.
/// Returns `Ok` when the peer closes the socket after a successful
/// registration; errors for registration failures and socket errors.
pub async fn serve<S, H>(stream: S, id: PluginId, handler: Arc<H>) -> Result<(), NriError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    run_session(stream, &id, handler).await.result
}

/// Outcome of one session.
pub(crate) struct SessionEnd {
    /// RegisterPlugin succeeded during the session.
    pub registered: bool,
    pub result: Result<(), NriError>,
}

pub(crate) async fn run_session<S, H>(stream: S, id: &PluginId, handler: Arc<H>) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let (mux, [plugin_io, runtime_io]) = Mux::start(stream, [PLUGIN_CONN, RUNTIME_CONN]);

    // The listener yields the one connection and then stays pending: an
    // ending listener stream would make the ttrpc accept loop quit.
    let incoming =
        futures::stream::once(async move { Ok(plugin_io) }).chain(futures::stream::pending());
    let service = PluginService {
        handler,
        id: id.to_string(),
        sync_parts: Mutex::new(None),
    };
    let mut server = Server::new()
        .register_service(create_plugin(Arc::new(service)))
        .add_listener(Listener::new(incoming));
    if let Err(e) = server.start().await {
        return SessionEnd {
            registered: false,
            result: Err(NriError::Server(e)),
        };
    }

    let runtime = RuntimeClient::new(Client::new(Socket::new(runtime_io)));
    let req = RegisterPluginRequest {
        plugin_name: id.name().to_string(),
        plugin_idx: id.idx().to_string(),
        nri_version: API_VERSION.to_string(),
        ..Default::default()
    };
    debug!(plugin = %id, "registering NRI plugin");
    let ctx = ttrpc::context::with_duration(REGISTER_TIMEOUT);
    let registration = tokio::select! {
        reply = runtime.register_plugin(ctx, &req) => reply,
        closed = mux.closed() => {
            let result = match closed {
                Ok(()) => Err(NriError::ClosedBeforeRegistration),
                Err(e) => Err(NriError::Io(e)),
            };
            return SessionEnd { registered: false, result };
        }
    };
    if let Err(e) = registration {
        return SessionEnd {
            registered: false,
            result: Err(NriError::Registration(e)),
        };
    }
    info!(plugin = %id, "NRI plugin registered");

    let result = mux.closed().await.map_err(NriError::Io);
    // Dropping the mux ends both in-memory connections; dropping the server
    // tells its connection tasks to stop.
    drop(mux);
    drop(server);
    SessionEnd {
        registered: true,
        result,
    }
}

/// Adapts a [`Handler`] to the generated ttrpc `Plugin` service.
///
/// Every method of the service is implemented here: the generated defaults
/// answer NOT_FOUND, which an NRI v0.12 runtime takes as a failure, while
/// UNIMPLEMENTED makes it fall back to StateChange.
struct PluginService<H> {
    handler: Arc<H>,
    /// "NN-name", for logs.
    id: String,
    /// Parts of a split Synchronize received so far (`more` was set).
    sync_parts: Mutex<Option<SynchronizeRequest>>,
}

fn container_id(c: &protobuf::MessageField<Container>) -> &str {
    c.as_ref().map(|c| c.id.as_str()).unwrap_or("")
}

fn pod_id(p: &protobuf::MessageField<PodSandbox>) -> &str {
    p.as_ref().map(|p| p.id.as_str()).unwrap_or("")
}

impl<H: Handler> PluginService<H> {
    /// Hands a pod or container event to the handler as a StateChange, so
    /// handlers see one shape whether the runtime used the dedicated RPC
    /// (v0.12+) or StateChange.
    async fn relay(
        &self,
        event: Event,
        pod: protobuf::MessageField<PodSandbox>,
        container: protobuf::MessageField<Container>,
    ) -> ttrpc::Result<()> {
        debug!(
            plugin = %self.id,
            event = ?event,
            pod_id = pod_id(&pod),
            container_id = container_id(&container),
            "NRI event"
        );
        let ev = StateChangeEvent {
            event: event.into(),
            pod,
            container,
            ..Default::default()
        };
        Ok(self.handler.state_change(ev).await?)
    }

    /// Adds one Synchronize part to those held; returns the whole state once
    /// the last part (`more` false) is in.
    fn collect_sync_part(&self, part: SynchronizeRequest) -> Option<SynchronizeRequest> {
        let mut held = self.sync_parts.lock().unwrap_or_else(|p| p.into_inner());
        let more = part.more;
        let whole = match held.take() {
            None => part,
            Some(mut acc) => {
                acc.pods.extend(part.pods);
                acc.containers.extend(part.containers);
                acc
            }
        };
        if more {
            *held = Some(whole);
            return None;
        }
        Some(SynchronizeRequest {
            more: false,
            ..whole
        })
    }
}

#[async_trait::async_trait]
impl<H: Handler> Plugin for PluginService<H> {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        let level = RuntimeLevel::of(&req);
        debug!(
            plugin = %self.id,
            runtime = %req.runtime_name,
            version = %req.runtime_version,
            nri_version = %req.nri_version,
            config_len = req.config.len(),
            "NRI Configure"
        );
        let wanted = self.handler.configure(req).await?;
        let (mask, dropped) = level
            .subscription(wanted)
            .map_err(|e| RpcError::failed_precondition(e.to_string()))?;
        if !dropped.is_empty() {
            warn!(plugin = %self.id, %level, dropped = %dropped, "not subscribing to events the runtime does not know");
        }
        info!(plugin = %self.id, %level, events = %mask, "NRI plugin configured");
        Ok(ConfigureResponse {
            // EventMask only holds bits within 0x3fff, so this fits in i32.
            events: mask.bits() as i32,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: SynchronizeRequest,
    ) -> ttrpc::Result<SynchronizeResponse> {
        debug!(
            plugin = %self.id,
            pods = req.pods.len(),
            containers = req.containers.len(),
            more = req.more,
            "NRI Synchronize"
        );
        let Some(whole) = self.collect_sync_part(req) else {
            // The runtime drops a plugin that answers a part with updates
            // or without echoing `more`.
            return Ok(SynchronizeResponse {
                more: true,
                ..Default::default()
            });
        };
        let update = self.handler.synchronize(whole).await?;
        Ok(SynchronizeResponse {
            update,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        info!(plugin = %self.id, "NRI Shutdown requested by runtime");
        self.handler.shutdown().await;
        Ok(Empty::new())
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: RunPodSandboxRequest,
    ) -> ttrpc::Result<RunPodSandboxResponse> {
        let none = protobuf::MessageField::none();
        self.relay(Event::RUN_POD_SANDBOX, req.pod, none).await?;
        Ok(RunPodSandboxResponse::new())
    }

    async fn update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: UpdatePodSandboxRequest,
    ) -> ttrpc::Result<UpdatePodSandboxResponse> {
        debug!(plugin = %self.id, pod_id = pod_id(&req.pod), "NRI UpdatePodSandbox");
        self.handler.update_pod_sandbox(req).await?;
        Ok(UpdatePodSandboxResponse::new())
    }

    async fn post_update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<PostUpdatePodSandboxResponse> {
        let none = protobuf::MessageField::none();
        self.relay(Event::POST_UPDATE_POD_SANDBOX, req.pod, none)
            .await?;
        Ok(PostUpdatePodSandboxResponse::new())
    }

    async fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: StopPodSandboxRequest,
    ) -> ttrpc::Result<StopPodSandboxResponse> {
        let none = protobuf::MessageField::none();
        self.relay(Event::STOP_POD_SANDBOX, req.pod, none).await?;
        Ok(StopPodSandboxResponse::new())
    }

    async fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: RemovePodSandboxRequest,
    ) -> ttrpc::Result<RemovePodSandboxResponse> {
        let none = protobuf::MessageField::none();
        self.relay(Event::REMOVE_POD_SANDBOX, req.pod, none).await?;
        Ok(RemovePodSandboxResponse::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        debug!(plugin = %self.id, container_id = container_id(&req.container), "NRI CreateContainer");
        Ok(self.handler.create_container(req).await?)
    }

    async fn post_create_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostCreateContainerRequest,
    ) -> ttrpc::Result<PostCreateContainerResponse> {
        self.relay(Event::POST_CREATE_CONTAINER, req.pod, req.container)
            .await?;
        Ok(PostCreateContainerResponse::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        self.relay(Event::START_CONTAINER, req.pod, req.container)
            .await?;
        Ok(StartContainerResponse::new())
    }

    async fn post_start_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostStartContainerRequest,
    ) -> ttrpc::Result<PostStartContainerResponse> {
        self.relay(Event::POST_START_CONTAINER, req.pod, req.container)
            .await?;
        Ok(PostStartContainerResponse::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        debug!(plugin = %self.id, container_id = container_id(&req.container), "NRI UpdateContainer");
        let update = self.handler.update_container(req).await?;
        Ok(UpdateContainerResponse {
            update,
            ..Default::default()
        })
    }

    async fn post_update_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostUpdateContainerRequest,
    ) -> ttrpc::Result<PostUpdateContainerResponse> {
        self.relay(Event::POST_UPDATE_CONTAINER, req.pod, req.container)
            .await?;
        Ok(PostUpdateContainerResponse::new())
    }

    async fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        req: StopContainerRequest,
    ) -> ttrpc::Result<StopContainerResponse> {
        debug!(plugin = %self.id, container_id = container_id(&req.container), "NRI StopContainer");
        let update = self.handler.stop_container(req).await?;
        Ok(StopContainerResponse {
            update,
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.relay(Event::REMOVE_CONTAINER, req.pod, req.container)
            .await?;
        Ok(RemoveContainerResponse::new())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        ev: StateChangeEvent,
    ) -> ttrpc::Result<Empty> {
        let event = ev.event.enum_value_or_default();
        self.relay(event, ev.pod, ev.container).await?;
        Ok(Empty::new())
    }

    async fn validate_container_adjustment(
        &self,
        _ctx: &TtrpcContext,
        req: ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<ValidateContainerAdjustmentResponse> {
        debug!(plugin = %self.id, container_id = container_id(&req.container), "NRI ValidateContainerAdjustment");
        Ok(self.handler.validate_container_adjustment(req).await?)
    }
}
