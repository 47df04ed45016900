//! The two ways a plugin reaches containerd: dialling the NRI socket
//! (external plugins, with reconnects) or the socket containerd passes to
//! plugins it launches itself.

use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use tokio::net::UnixStream;
use tracing::{info, warn};

use crate::error::NriError;
use crate::handler::Handler;
use crate::id::PluginId;
use crate::session::run_session;

/// containerd's default NRI socket.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";
/// Environment variable naming the pre-connected socket descriptor.
pub const SOCKET_ENV: &str = "NRI_PLUGIN_SOCKET";

/// First reconnect delay, also used after a session that registered.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Connects to the NRI socket of a running containerd.
pub async fn connect(socket_path: &Path) -> Result<UnixStream, NriError> {
    UnixStream::connect(socket_path)
        .await
        .map_err(|source| NriError::Connect {
            path: socket_path.to_path_buf(),
            source,
        })
}

/// Runs an external plugin until `shutdown` resolves.
///
/// Connects to `socket_path` and serves sessions one after another. When a
/// session ends (containerd restarted, EOF) or the connection fails, it
/// reconnects after a delay that starts at 100 ms and doubles up to 5 s; the
/// delay starts over after a session that registered. Each new session gets
/// Configure and Synchronize again, which is how the plugin catches up.
pub async fn run_external<H, F>(
    socket_path: &Path,
    id: PluginId,
    handler: Arc<H>,
    shutdown: F,
) -> Result<(), NriError>
where
    H: Handler,
    F: Future,
{
    tokio::pin!(shutdown);
    let mut delay = BACKOFF_START;
    loop {
        let attempt = async {
            let stream = match connect(socket_path).await {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(error = %e, retry_in = ?delay, "NRI connect failed");
                    return false;
                }
            };
            info!(plugin = %id, socket = %socket_path.display(), "connected to NRI");
            let end = run_session(stream, &id, handler.clone()).await;
            match &end.result {
                Ok(()) => info!(plugin = %id, "NRI connection closed by runtime"),
                Err(e) => warn!(plugin = %id, error = %e, "NRI session failed"),
            }
            end.registered
        };
        let registered = tokio::select! {
            _ = &mut shutdown => break,
            registered = attempt => registered,
        };
        if registered {
            delay = BACKOFF_START;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(delay) => {}
        }
        if !registered {
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
    info!(plugin = %id, "NRI plugin stopping");
    Ok(())
}

/// Guards against wrapping the inherited descriptor twice.
static SOCKET_TAKEN: AtomicBool = AtomicBool::new(false);

/// Returns the socket containerd passed to a pre-launched plugin, or `None`
/// when NRI_PLUGIN_SOCKET is not set (the plugin was started by hand).
///
/// Serve it once with [`crate::serve`]; when it closes, containerd is gone or
/// has dropped the plugin, so the plugin should exit rather than reconnect.
/// Must be called inside a tokio runtime, and at most once per process.
pub fn prelaunched_stream() -> Result<Option<UnixStream>, NriError> {
    let Some(value) = std::env::var_os(SOCKET_ENV) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    let fd: RawFd = text
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| NriError::InvalidSocketEnv(text.to_string()))?;
    let bad_fd = |source: std::io::Error| NriError::BadSocketFd { fd, source };

    // Check the descriptor is open before taking ownership, so a wrong
    // number never leads to closing a descriptor we do not own.
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| bad_fd(e.into()))?;
    if SOCKET_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(NriError::SocketAlreadyTaken);
    }
    // SAFETY: the descriptor is open (checked above), containerd handed it
    // to this process for exclusive use, and SOCKET_TAKEN ensures only one
    // owner is ever created.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match getsockopt(&owned, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => {
            return Err(bad_fd(std::io::Error::other(format!(
                "socket type is {other:?}, not a stream"
            ))))
        }
        Err(e) => return Err(bad_fd(e.into())),
    }
    // Keep it out of any child the plugin spawns.
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| bad_fd(e.into()))?;
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    std_stream.set_nonblocking(true).map_err(bad_fd)?;
    UnixStream::from_std(std_stream).map(Some).map_err(bad_fd)
}
