//! The trait a plugin implements.

use crate::error::RpcError;
use crate::events::EventMask;
use crate::generated::api::{
    ConfigureRequest, ContainerUpdate, CreateContainerRequest, CreateContainerResponse,
    StateChangeEvent, StopContainerRequest, SynchronizeRequest, UpdateContainerRequest,
};

/// Plugin behaviour, called for requests containerd sends on connection 1.
///
/// containerd calls plugins one at a time under a global lock and gives each
/// call 2 s by default: a slow answer gets the plugin disconnected and the
/// container created without its adjustments, while an `Err` fails the
/// operation (for CreateContainer: the container is not created).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// First request of every session. Returns the events to subscribe to
    /// (bit = 1 << (event - 1); an empty mask means all events).
    async fn configure(&self, req: ConfigureRequest) -> Result<EventMask, RpcError>;

    /// Full pod and container state; external plugins get it after every
    /// (re)connect, pre-launched ones never in containerd 1.7.24. Returned
    /// updates are applied to existing containers.
    async fn synchronize(&self, req: SynchronizeRequest) -> Result<Vec<ContainerUpdate>, RpcError>;

    /// A container is being created: return adjustments for it and updates
    /// for other containers.
    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, RpcError>;

    /// A container's resources are being updated.
    async fn update_container(
        &self,
        _req: UpdateContainerRequest,
    ) -> Result<Vec<ContainerUpdate>, RpcError> {
        Ok(vec![])
    }

    /// A container is being stopped; also sent to undo a failed creation.
    async fn stop_container(
        &self,
        _req: StopContainerRequest,
    ) -> Result<Vec<ContainerUpdate>, RpcError> {
        Ok(vec![])
    }

    /// Any other subscribed event (pod events, start, post-*, remove).
    async fn state_change(&self, _ev: StateChangeEvent) -> Result<(), RpcError> {
        Ok(())
    }

    /// The runtime asked the plugin to shut down (containerd 1.7.24 never
    /// does; a closed connection is the usual end).
    async fn shutdown(&self) {}
}
