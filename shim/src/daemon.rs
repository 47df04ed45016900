//! Server mode: the long-running proxy that `start` launches for a pod (one per shim group).
//!
//! fd 3 is the listening socket `start` bound; stderr goes to the bundle's `log` fifo, which
//! containerd copies into its own log. The process lives exactly as long as its runc shim child:
//! when the child exits (after the last container's Shutdown, or by crashing) the proxy removes
//! both sockets and exits; if the proxy dies first, the child dies with it (PDEATHSIG).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tracing::{error, info};

use crate::child;
use crate::error::{Result, ShimError};
use crate::flags::Flags;
use crate::service::Proxy;
use crate::settings::Settings;

/// Environment variable carrying the options table (TOML) from `start` to the server.
pub const CONFIG_ENV: &str = "CONRDMA_SHIM_CONFIG";
/// Listening socket handed over by `start`.
pub const LISTEN_FD: i32 = 3;

/// Points stderr at the bundle's `log` fifo (containerd holds the read end).
fn open_log(bundle: &Path) {
    let path = bundle.join("log");
    let fd = match nix::fcntl::open(
        &path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return,
    };
    // SAFETY: `fd` was just opened and is owned here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Blocking writes from here on: containerd reads continuously; with no reader at all (while
    // containerd restarts) writes fail with EPIPE, which Rust programs ignore.
    let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_WRONLY));
    let _ = nix::unistd::dup2(fd, 2);
    drop(owned);
}

pub fn init_tracing(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = std::env::var("CONRDMA_SHIM_LOG").unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn serve(flags: Flags) -> i32 {
    let bundle = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    open_log(&bundle);
    init_tracing(flags.debug);
    // Keep the listener out of the runc child.
    let _ = fcntl(LISTEN_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let span = tracing::info_span!("conrdma-shim", pod_id = %flags.id, ns = %flags.namespace);
    let _g = span.enter();
    match run(&flags, &bundle) {
        Ok(()) => 0,
        Err(e) => {
            error!(error = %e, "shim exiting");
            1
        }
    }
}

fn run(flags: &Flags, bundle: &Path) -> Result<()> {
    flags.require(&["namespace", "id", "address", "socket"])?;
    let settings = Settings::from_toml(&std::env::var(CONFIG_ENV).unwrap_or_default())?;
    let runc_shim = settings.runc_shim_path(&flags.publish_binary)?;
    let our_socket = PathBuf::from(&flags.socket);
    let child_socket = child::child_socket(&our_socket);
    let cleanup = || {
        let _ = std::fs::remove_file(&our_socket);
        let _ = std::fs::remove_file(&child_socket);
    };
    // On the main thread, which lives until exit: PDEATHSIG follows the forking thread.
    let mut child = child::spawn(&runc_shim, flags, bundle, &child_socket)?;
    if let Err(e) = child::wait_ready(&mut child, &child_socket, Duration::from_secs(10)) {
        let _ = child.kill();
        let _ = child.wait();
        cleanup();
        return Err(e);
    }
    let client = ttrpc::Client::connect(&format!("unix://{}", child_socket.display()))
        .map_err(|e| ShimError::Child(format!("connecting to {}: {e}", child_socket.display())))?;
    let child_service = match child::served_service(&client, &flags.id, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            cleanup();
            return Err(e);
        }
    };
    let limiter: Arc<dyn conrdma_node::limiter::RateLimiter> = Arc::from(settings.limiter.build());
    info!(child_pid = child.id(), runc_shim = %runc_shim.display(), child_service,
          limiter = limiter.kind(), reports = settings.reports.is_some(), "proxy serving");
    let proxy = Arc::new(Proxy::new(
        Box::new(client),
        child_service,
        settings,
        limiter,
    ));
    // A Wait holds its worker until the task exits, and containerd 2.x sends all of a pod's calls
    // over one connection: ttrpc's default of at most 5 workers per connection would let five
    // outstanding Waits (`ctr task wait`, other clients) stall every other call, Kill included.
    // Only the ceiling moves: idle workers cost memory in every pod.
    let mut server = ttrpc::Server::new()
        .set_thread_count_min(1)
        .set_thread_count_default(3)
        .set_thread_count_max(1024)
        .add_listener(LISTEN_FD)
        .map_err(|e| ShimError::Child(format!("listening on fd {LISTEN_FD}: {e}")))?
        .register_service(proxy.methods());
    server
        .start()
        .map_err(|e| ShimError::Child(format!("starting the ttrpc server: {e}")))?;
    let status = child.wait();
    info!(status = ?status, "runc shim exited; proxy exits");
    cleanup();
    proxy.finish(Duration::from_secs(3));
    Ok(())
}
