//! NRI (containerd Node Resource Interface) plugin protocol, from NRI v0.6.1
//! (containerd 1.7.24) to v0.12 (containerd 2.3). The session finds the
//! runtime's level at Configure ([`RuntimeLevel`]) and only subscribes to
//! events that level knows.
//!
//! A plugin implements [`Handler`] and then either
//! - runs as an external plugin with [`run_external`], which dials the NRI
//!   socket and reconnects whenever containerd restarts, or
//! - is launched by containerd, takes its socket from
//!   [`prelaunched_stream`] and serves it once with [`serve`].
//!
//! Wire layers: [`mux`] splits the one socket into two byte streams; ttrpc
//! (generated from `specs/nri/api.proto`) runs on top of each.

mod connect;
mod error;
mod events;
mod handler;
mod id;
mod level;
pub mod mux;
mod session;

/// Code generated from `specs/nri/api.proto`: messages in `api`, ttrpc
/// clients, service traits and registration helpers in `api_ttrpc`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/nri_generated.rs"));
}

pub use connect::{connect, prelaunched_stream, run_external, DEFAULT_SOCKET_PATH, SOCKET_ENV};
pub use error::{NriError, RpcError};
pub use events::EventMask;
pub use generated::api::*;
pub use handler::Handler;
pub use id::{PluginId, IDX_ENV, NAME_ENV};
pub use level::{Evidence, RuntimeLevel, Version, API_VERSION, OLDEST};
pub use session::{serve, REGISTER_TIMEOUT};

/// Re-exported so plugins use the exact runtime versions the generated code
/// was built for.
pub use {async_trait, protobuf, ttrpc};
