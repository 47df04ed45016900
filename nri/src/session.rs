//! One NRI session over one connected socket: serve the plugin service on
//! connection 1 and register through connection 2.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};
use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::asynchronous::{Client, Server, TtrpcContext};

use crate::error::NriError;
use crate::generated::api::{
    ConfigureRequest, ConfigureResponse, CreateContainerRequest, CreateContainerResponse, Empty,
    RegisterPluginRequest, StateChangeEvent, StopContainerRequest, StopContainerResponse,
    SynchronizeRequest, SynchronizeResponse, UpdateContainerRequest, UpdateContainerResponse,
};
use crate::generated::api_ttrpc::{create_plugin, Plugin, RuntimeClient};
use crate::handler::Handler;
use crate::id::PluginId;
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
struct PluginService<H> {
    handler: Arc<H>,
    /// "NN-name", for logs.
    id: String,
}

fn container_id(c: &protobuf::MessageField<crate::generated::api::Container>) -> &str {
    c.as_ref().map(|c| c.id.as_str()).unwrap_or("")
}

#[async_trait::async_trait]
impl<H: Handler> Plugin for PluginService<H> {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        debug!(
            plugin = %self.id,
            runtime = %req.runtime_name,
            version = %req.runtime_version,
            config_len = req.config.len(),
            "NRI Configure"
        );
        let mask = self.handler.configure(req).await?;
        info!(plugin = %self.id, events = %mask, "NRI plugin configured");
        Ok(ConfigureResponse {
            // EventMask only holds bits within 0x7ff, so this fits in i32.
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
            "NRI Synchronize"
        );
        let update = self.handler.synchronize(req).await?;
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

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        debug!(plugin = %self.id, container = container_id(&req.container), "NRI CreateContainer");
        Ok(self.handler.create_container(req).await?)
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        debug!(plugin = %self.id, container = container_id(&req.container), "NRI UpdateContainer");
        let update = self.handler.update_container(req).await?;
        Ok(UpdateContainerResponse {
            update,
            ..Default::default()
        })
    }

    async fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        req: StopContainerRequest,
    ) -> ttrpc::Result<StopContainerResponse> {
        debug!(plugin = %self.id, container = container_id(&req.container), "NRI StopContainer");
        let update = self.handler.stop_container(req).await?;
        Ok(StopContainerResponse {
            update,
            ..Default::default()
        })
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        ev: StateChangeEvent,
    ) -> ttrpc::Result<Empty> {
        debug!(
            plugin = %self.id,
            event = ?ev.event,
            container = container_id(&ev.container),
            "NRI StateChange"
        );
        self.handler.state_change(ev).await?;
        Ok(Empty::new())
    }
}
