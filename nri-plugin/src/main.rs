//! `conrdma-nri-plugin`: runs external (connects to containerd's NRI socket, reconnects after
//! restarts) or pre-launched (containerd starts it with the socket on the fd in NRI_PLUGIN_SOCKET).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use conrdma_node::NodeConfig;
use conrdma_nri::{PluginId, DEFAULT_SOCKET_PATH, SOCKET_ENV};
use conrdma_nri_plugin::plugin::Overrides;
use conrdma_nri_plugin::startup::{start, MetricsBind};
use conrdma_nri_plugin::{Plugin, PluginError};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "ConRDMA NRI plugin: SR-IOV RDMA VFs sized by bandwidth"
)]
struct Args {
    /// Node config (TOML: pools, admission_ratio, rdma_cgroup defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's NRI socket (external mode).
    #[arg(long, default_value = DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    /// Root under which sys/ is read (a simulated NIC's directory on machines without SR-IOV);
    /// default: `sysfs_root` from the config, else `/`.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Where the allocation ledger is kept; default: `state_dir` from the config, else /run/conrdma/nri.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// containerd's socket, whose CRI service the ledger sweep asks which pods exist; default:
    /// `cri.socket` from the config, else /run/containerd/containerd.sock.
    #[arg(long)]
    cri_socket: Option<PathBuf>,
    /// Plugin name registered with containerd.
    #[arg(long, default_value = "conrdma")]
    name: String,
    /// Plugin index (two digits): containerd calls plugins in index order.
    #[arg(long, default_value = "10")]
    idx: String,
    /// Log file; pre-launched plugins have no stderr, so they default to /var/log/conrdma-nri-plugin.log.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Serve Prometheus metrics of the work-conserving controller at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let prelaunched = std::env::var_os(SOCKET_ENV).is_some();
    // containerd gives a pre-launched plugin no arguments and an empty environment.
    let args = if prelaunched {
        Args::parse_from(["conrdma-nri-plugin"])
    } else {
        Args::parse()
    };
    let log_file = args
        .log_file
        .clone()
        .or_else(|| prelaunched.then(|| PathBuf::from("/var/log/conrdma-nri-plugin.log")));
    if let Err(e) = init_logging(log_file.as_deref()) {
        eprintln!("conrdma-nri-plugin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, prelaunched)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "conrdma-nri-plugin failed");
            eprintln!("conrdma-nri-plugin: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, prelaunched: bool) -> Result<(), PluginError> {
    let overrides = Overrides {
        root: args.root.clone(),
        state_dir: args.state_dir.clone(),
        cri_socket: args.cri_socket.clone(),
        metrics_listen: args.metrics_listen,
    };
    if prelaunched {
        // containerd passes the config in Configure; the node is set up from it.
        let id = PluginId::from_env_or_argv0()?;
        let stream = conrdma_nri::prelaunched_stream()?
            .ok_or_else(|| PluginError::Setup("NRI_PLUGIN_SOCKET vanished".into()))?;
        info!(plugin = %id, "pre-launched by containerd");
        // When containerd closes the socket it is gone or has dropped us: exit, it relaunches us.
        conrdma_nri::serve(stream, id, Arc::new(Plugin::deferred(overrides))).await?;
        return Ok(());
    }
    let cfg = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    // The same start as a pre-launched plugin's first Configure, but a metrics address that
    // cannot be bound stops it: only this process exits, containerd runs on.
    let node = start(cfg, &overrides, MetricsBind::Required)?;
    let id = PluginId::new(args.name, args.idx)?;
    conrdma_nri::run_external(
        &args.socket,
        id,
        Arc::new(Plugin::new(node)),
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(file: Option<&std::path::Path>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("opening log file {}: {e}", path.display()))?;
            builder.with_ansi(false).with_writer(Arc::new(f)).init();
        }
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init()
        }
    }
    Ok(())
}
