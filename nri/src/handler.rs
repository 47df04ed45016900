//! The trait a plugin implements.

use crate::error::RpcError;
use crate::events::EventMask;
use crate::generated::api::{
    ConfigureRequest, ContainerUpdate, CreateContainerRequest, CreateContainerResponse,
    StateChangeEvent, StopContainerRequest, SynchronizeRequest, UpdateContainerRequest,
    UpdatePodSandboxRequest, ValidateContainerAdjustmentRequest,
    ValidateContainerAdjustmentResponse,
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
    /// (bit = 1 << (event - 1); an empty mask means all events but
    /// validation). The session drops events the runtime's NRI level does
    /// not know (see [`crate::RuntimeLevel::subscription`]).
    async fn configure(&self, req: ConfigureRequest) -> Result<EventMask, RpcError>;

    /// Full pod and container state; external plugins get it after every
    /// (re)connect, pre-launched ones never in containerd 1.7.24. A runtime
    /// may split it over several calls (`more`); the session collects the
    /// parts and calls this once, with all of them and `more` false.
    /// Returned updates are applied to existing containers.
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

    /// Any other subscribed event (pod events, start, post-*, remove),
    /// whether the runtime sent it through StateChange (before v0.12) or
    /// through its dedicated RPC (v0.12+).
    async fn state_change(&self, _ev: StateChangeEvent) -> Result<(), RpcError> {
        Ok(())
    }

    /// A pod's resources are being updated (v0.10+; only sent when
    /// subscribed, and it has no StateChange fallback).
    async fn update_pod_sandbox(&self, _req: UpdatePodSandboxRequest) -> Result<(), RpcError> {
        Ok(())
    }

    /// The final check of all plugins' adjustments (v0.10+; only sent when
    /// subscribed explicitly). Not served by default: the runtime would
    /// fail the container.
    async fn validate_container_adjustment(
        &self,
        _req: ValidateContainerAdjustmentRequest,
    ) -> Result<ValidateContainerAdjustmentResponse, RpcError> {
        Err(RpcError::unimplemented(
            "this plugin does not validate container adjustments",
        ))
    }

    /// The runtime asked the plugin to shut down (containerd 1.7.24 never
    /// does; a closed connection is the usual end).
    async fn shutdown(&self) {}
}
