//! Listening: plain HTTP through axum, or HTTPS through rustls when the config names a certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{Config, TlsFiles, Tokens};
use crate::error::{PlacementError, Result};
use crate::http::{router, App};

/// A started service: its address, its state, and the way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub tls: bool,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<()>>,
    pruner: JoinHandle<()>,
    reloader: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to 10 s), and waits for the server task.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.pruner.abort();
        self.reloader.abort();
        match self.server.await {
            Ok(r) => r,
            Err(e) => Err(PlacementError::io(
                "joining",
                "server task",
                std::io::Error::other(e),
            )),
        }
    }
}

/// Loads the PEM certificate chain and key into a rustls server config (ring provider, HTTP/1.1).
pub fn tls_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let pem_err = |path: &Path, e: rustls_pki_types::pem::Error| {
        PlacementError::Tls(format!("reading {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_err(&files.cert, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| pem_err(&files.cert, e))?;
    if certs.is_empty() {
        return Err(PlacementError::Tls(format!(
            "{} holds no PEM certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| PlacementError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| PlacementError::Tls(format!("certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Loads credentials and TLS files, binds `listen`, and serves in the background.
pub async fn start(listen: SocketAddr, cfg: Config) -> Result<Running> {
    let tokens_stamp = stamp(&cfg.tokens_file);
    let tokens = Tokens::load(&cfg.tokens_file)?;
    let tls = cfg.tls.as_ref().map(tls_config).transpose()?;
    let app = Arc::new(App::new(&cfg, tokens)?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| PlacementError::io("listening on", listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| PlacementError::io("reading address of", listen.to_string(), e))?;
    let (stop, stopped) = watch::channel(false);
    let routes = router(app.clone());
    let is_tls = tls.is_some();
    let limits = Limits {
        max_connections: cfg.max_connections,
        header_read_timeout: cfg.header_read_timeout(),
    };
    let server = tokio::spawn(serve_loop(
        listener,
        tls.map(TlsAcceptor::from),
        routes,
        limits,
        stopped,
    ));
    let pruner = {
        let app = app.clone();
        let every = (cfg.node_ttl() / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                app.write().prune(Instant::now());
            }
        })
    };
    let reloader = tokio::spawn(reload_tokens(
        app.clone(),
        cfg.tokens_file.clone(),
        tokens_stamp,
    ));
    info!(%addr, tls = is_tls, policy = cfg.policy.name(), ttl_s = cfg.node_ttl_seconds, "conrdma-placement listening");
    Ok(Running {
        addr,
        tls: is_tls,
        app,
        stop,
        server,
        pruner,
        reloader,
    })
}

/// How often the tokens file is checked for changes.
pub const TOKENS_RELOAD: Duration = Duration::from_secs(5);

/// Re-reads the tokens file when its modification time or size changes (a Secret volume is
/// updated in place), so credentials rotate without a restart. A file that fails to load keeps the
/// previous credentials and is logged.
type Stamp = Option<(Option<std::time::SystemTime>, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

async fn reload_tokens(app: Arc<App>, path: std::path::PathBuf, mut seen: Stamp) {
    let mut tick = tokio::time::interval(TOKENS_RELOAD);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match Tokens::load(&path) {
            Ok(t) => {
                info!(path = %path.display(), "credentials reloaded");
                app.set_tokens(t);
            }
            Err(e) => warn!(error = %e, "keeping the previous credentials"),
        }
    }
}

/// Resolves once a stop was requested (or the sender is gone).
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// What keeps slow or huge clients from starving the extender verbs (with the request deadline
/// in [`crate::http`]).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
}

/// How long a stop waits for in-flight requests.
const DRAIN: Duration = Duration::from_secs(10);

/// Accepts up to `max_connections` connections at once (the rest wait in the kernel's backlog) and
/// serves each over HTTP/1.1, after a TLS handshake when `tls` is set. Headers (and the handshake)
/// must arrive within `header_read_timeout`, so idle or trickling clients give their slot back.
/// On stop: no new connections, in-flight requests get up to [`DRAIN`].
async fn serve_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: axum::Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            acc = listener.accept() => match acc {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY");
        }
        let svc = TowerToHyperService::new(routes.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = permit;
            let ended = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(tcp), svc))
                        .await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        limits.header_read_timeout,
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), svc))
                        .await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("stopping with requests still in flight");
    }
    Ok(())
}

/// The binary's whole life: load the config, serve, stop on SIGINT or SIGTERM.
pub async fn run(listen: SocketAddr, config: &Path) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let cfg = Config::load(config)?;
    // Handlers first: a supervisor may signal as soon as the "listening" line is out.
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| PlacementError::io("installing handler for", "SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| PlacementError::io("installing handler for", "SIGINT", e))?;
    let running = start(listen, cfg).await?;
    tokio::select! {
        _ = int.recv() => info!("SIGINT: stopping"),
        _ = term.recv() => info!("SIGTERM: stopping"),
    }
    running.stop().await
}
