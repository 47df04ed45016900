//! An isolated containerd (CRI + NRI) in a temporary directory, of the line
//! `$CONRDMA_CONTAINERD` selects (1.7 or 2.x, see [`deps::containerd_line`]).
//!
//! Everything an instance owns lives under its temp dir: root, state, gRPC socket, NRI socket,
//! plugin dirs, runc state (`Root` option of the runc handler), CNI dirs, pod logs and the log
//! file. The only shared place is `/run/containerd/s`, where shims put their sockets, keyed by a
//! hash of our gRPC address, so parallel instances do not collide.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::cri::{Cri, PodConfigs};
use crate::deps;
use crate::error::{Error, Result};
use crate::process::{read_lossy, read_lossy_from, tail, ChildGuard, POLL};

/// A CRI runtime handler (`[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>]` on
/// 1.7, `[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.<name>]` on 2.x).
#[derive(Debug, Clone, Default)]
pub struct RuntimeHandler {
    /// Handler name, what `RunPodSandbox.runtime_handler` (RuntimeClass `handler`) selects.
    pub name: String,
    /// e.g. "io.containerd.runc.v2" or "io.containerd.conrdma.v1" (binary
    /// `containerd-shim-conrdma-v1`, found via `ContainerdOptions::extra_path` or `runtime_path`).
    pub runtime_type: String,
    /// Absolute shim binary path (`runtime_path`), instead of the PATH lookup.
    pub runtime_path: Option<PathBuf>,
    /// The `options` table. For non-runc types containerd sends it to the shim as
    /// `runtimeoptions.v1.Options.config_body` (TOML text).
    pub options: toml::Table,
    /// Pod annotation globs passed through to the sandbox and container specs.
    pub pod_annotations: Vec<String>,
    /// Container annotation globs passed through to that container's spec.
    pub container_annotations: Vec<String>,
}

impl RuntimeHandler {
    pub fn new(name: &str, runtime_type: &str) -> Self {
        RuntimeHandler {
            name: name.into(),
            runtime_type: runtime_type.into(),
            ..Default::default()
        }
    }
}

/// How to start an instance. `Default` gives NRI on, no plugins, the runc handler only.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// NRI enabled (`disable = false`).
    pub nri: bool,
    /// NRI `disable_connections` (no external plugins).
    pub nri_disable_connections: bool,
    /// NRI `plugin_request_timeout`, e.g. "2s".
    pub nri_request_timeout: String,
    /// NRI `plugin_registration_timeout`, e.g. "5s".
    pub nri_registration_timeout: String,
    /// Pre-launched NRI plugins: (file name `NN-name`, executable). Symlinked into `plugin_path`.
    pub prelaunched_plugins: Vec<(String, PathBuf)>,
    /// Files for `plugin_config_path`: (file name, e.g. `NN-name.conf` or `name.conf`, content).
    pub plugin_configs: Vec<(String, String)>,
    /// Extra CRI runtime handlers besides "runc" (io.containerd.runc.v2, always present).
    pub runtimes: Vec<RuntimeHandler>,
    /// `default_runtime_name`.
    pub default_runtime: String,
    /// Image name imported and used as the sandbox image.
    pub image: String,
    /// OCI layout tarball to import; None = the busybox image built under the name `image`
    /// ([`deps::image_tarball`]).
    pub image_tar: Option<PathBuf>,
    /// containerd log level ("info", "debug", ...).
    pub log_level: String,
    /// Directories put first in containerd's PATH (e.g. the one holding a shim binary).
    pub extra_path: Vec<PathBuf>,
    /// Extra environment for containerd (and so for the shims it starts).
    pub env: Vec<(String, String)>,
    /// Deep-merged over the generated config.toml, for anything not covered above.
    pub extra_config: toml::Table,
    /// How long to wait for containerd to serve CRI (and NRI) after each start.
    pub start_timeout: Duration,
    /// A CNI network for pods with their own network namespace (none: such pods fail, as on a
    /// node without CNI).
    pub cni_bridge: Option<CniBridge>,
}

/// Pods' primary network: the CNI `bridge` plugin with `host-local` addresses, from Debian's
/// containernetworking-plugins (the bridge lives on the host, so each instance needs its own
/// name and subnet).
#[derive(Debug, Clone)]
pub struct CniBridge {
    /// Host bridge name (at most 15 characters).
    pub bridge: String,
    /// Pod subnet, e.g. `10.88.7.0/24`.
    pub subnet: String,
}

/// Where Debian's containernetworking-plugins puts the CNI plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            nri: true,
            nri_disable_connections: false,
            nri_request_timeout: "2s".into(),
            nri_registration_timeout: "5s".into(),
            prelaunched_plugins: Vec::new(),
            plugin_configs: Vec::new(),
            runtimes: Vec::new(),
            default_runtime: "runc".into(),
            image: deps::DEFAULT_IMAGE.into(),
            image_tar: None,
            log_level: "info".into(),
            extra_path: Vec::new(),
            env: Vec::new(),
            extra_config: toml::Table::new(),
            start_timeout: Duration::from_secs(30),
            cni_bridge: None,
        }
    }
}

/// The paths of one instance.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc_socket: PathBuf,
    pub nri_socket: PathBuf,
    pub plugin_path: PathBuf,
    pub plugin_config_path: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub pod_logs: PathBuf,
    /// runc's `--root` for the "runc" handler (the shim appends the namespace).
    pub runc_root: PathBuf,
    pub opt: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_path_buf(),
            root: dir.join("root"),
            state: dir.join("state"),
            grpc_socket: dir.join("containerd.sock"),
            nri_socket: dir.join("nri/nri.sock"),
            plugin_path: dir.join("nri/plugins"),
            plugin_config_path: dir.join("nri/conf.d"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            cni_conf_dir: dir.join("cni/net.d"),
            cni_bin_dir: dir.join("cni/bin"),
            pod_logs: dir.join("pod-logs"),
            runc_root: dir.join("runc"),
            opt: dir.join("opt"),
        }
    }
}

/// CRI namespace in containerd.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// A running, isolated containerd. Dropping it removes every pod, kills containerd and any shim
/// it left, unmounts everything under its directory and deletes the directory (kept, minus
/// mounts, if `CONRDMA_E2E_KEEP=1`).
pub struct Containerd {
    opts: ContainerdOptions,
    paths: Paths,
    tempdir: Option<tempfile::TempDir>,
    child: Option<ChildGuard>,
    cri: Cri,
    pods: PodConfigs,
    torn_down: bool,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("dir", &self.paths.dir)
            .field("pid", &self.child.as_ref().map(|c| c.pid()))
            .finish_non_exhaustive()
    }
}

impl Containerd {
    /// Creates the temp dir and config, starts containerd, waits until CRI answers (and the NRI
    /// socket exists if NRI is on), and imports the test image.
    ///
    /// Fails (never skips) when the machine lacks root or the dependencies; see
    /// [`deps::check_environment`].
    pub async fn start(opts: ContainerdOptions) -> Result<Self> {
        deps::check_environment()?;
        log_line_once();
        let image_tar = match &opts.image_tar {
            Some(p) => p.clone(),
            None if opts.image == deps::DEFAULT_IMAGE => deps::image_tarball()?,
            None => deps::image_tarball_named(&opts.image)?,
        };
        let base = std::env::var_os("CONRDMA_E2E_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let tempdir = tempfile::Builder::new()
            .prefix("conrdma-e2e-")
            .tempdir_in(&base)
            .map_err(|e| Error::io(format!("creating temp dir in {}", base.display()), e))?;
        let paths = Paths::new(tempdir.path());
        prepare_dirs(&paths, &opts)?;
        let config = render_config(&paths, &opts)?;
        std::fs::write(&paths.config, config)
            .map_err(|e| Error::io(format!("writing {}", paths.config.display()), e))?;

        let pods: PodConfigs = Arc::new(Mutex::new(HashMap::new()));
        let cri = Cri::connect(
            &paths.grpc_socket,
            &paths.pod_logs,
            &opts.image,
            pods.clone(),
        )?;
        let mut cd = Containerd {
            opts,
            paths,
            tempdir: Some(tempdir),
            child: None,
            cri,
            pods,
            torn_down: false,
        };
        cd.spawn_and_wait().await?;
        cd.import_image(&image_tar).await?;
        Ok(cd)
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let t0 = Instant::now();
        // A stale NRI socket from a previous run would satisfy the readiness check too early.
        let _ = std::fs::remove_file(&self.paths.nri_socket);
        let mut path_dirs = self.opts.extra_path.clone();
        path_dirs.push(deps::deps_bin_dir());
        path_dirs.extend(deps::system_path_dirs());
        let path = std::env::join_paths(&path_dirs)
            .map_err(|e| Error::Config(format!("PATH for containerd: {e}")))?;
        let mut cmd = Command::new(deps::containerd_bin()?);
        cmd.arg("--config")
            .arg(&self.paths.config)
            .current_dir(&self.paths.dir)
            .env("PATH", path)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        let child = ChildGuard::spawn("containerd", &mut cmd, &self.paths.log)?;
        self.child = Some(child);
        self.cri = Cri::connect(
            &self.paths.grpc_socket,
            &self.paths.pod_logs,
            &self.opts.image,
            self.pods.clone(),
        )?;
        self.wait_ready().await?;
        tracing::info!(dir = %self.paths.dir.display(), elapsed = ?t0.elapsed(), "containerd ready");
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let timeout = self.opts.start_timeout;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.check_alive("starting")?;
            if self.paths.grpc_socket.exists() {
                let probe = tokio::time::timeout(Duration::from_secs(2), self.cri.version()).await;
                match probe {
                    Ok(Ok(_)) => {
                        if !self.opts.nri || self.paths.nri_socket.exists() {
                            return Ok(());
                        }
                        last = format!("NRI socket {} missing", self.paths.nri_socket.display());
                    }
                    Ok(Err(s)) => last = format!("CRI Version: {s}"),
                    Err(_) => last = "CRI Version timed out".into(),
                }
            } else {
                last = format!("socket {} missing", self.paths.grpc_socket.display());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    after: timeout,
                    what: format!(
                        "containerd to serve CRI (last: {last}); log {}:\n{}",
                        self.paths.log.display(),
                        tail(&self.log(), 40)
                    ),
                });
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    fn check_alive(&mut self, during: &str) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::NotRunning);
        };
        if let Some(status) = child.try_wait()? {
            return Err(Error::ContainerdExited {
                status: status.to_string(),
                during: during.to_string(),
                log_path: self.paths.log.clone(),
                log_tail: tail(&read_lossy(&self.paths.log), 40),
            });
        }
        Ok(())
    }

    /// `ctr images import` into the CRI namespace, then waits until CRI sees the image.
    pub async fn import_image(&mut self, tar: &Path) -> Result<()> {
        let ctr = deps::ctr_bin()?;
        let out = tokio::process::Command::new(&ctr)
            .arg("--address")
            .arg(&self.paths.grpc_socket)
            .args(["--namespace", K8S_NAMESPACE, "images", "import"])
            .arg(tar)
            .output()
            .await
            .map_err(|e| Error::io(format!("running {}", ctr.display()), e))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("ctr images import {}", tar.display()),
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.cri.image_status(&self.opts.image).await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) => {
                    return Err(Error::Timeout {
                        after: Duration::from_secs(10),
                        what: format!(
                            "CRI to list image {} after import (ctr said: {})",
                            self.opts.image,
                            String::from_utf8_lossy(&out.stdout).trim()
                        ),
                    })
                }
                Err(s) => return Err(Error::cri("ImageStatus", s)),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A CRI client for this instance (fresh after each restart; call again after restarting).
    pub fn cri(&self) -> Cri {
        self.cri.clone()
    }

    /// The NRI socket external plugins connect to.
    pub fn nri_socket(&self) -> &Path {
        &self.paths.nri_socket
    }

    /// containerd's gRPC socket (also the CRI socket, and `-address` of its shims).
    pub fn socket(&self) -> &Path {
        &self.paths.grpc_socket
    }

    /// All paths of this instance.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The instance's temp dir (put test files and plugin logs here).
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    /// The image imported into this instance (also the sandbox image).
    pub fn image(&self) -> &str {
        &self.opts.image
    }

    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    /// The config.toml text.
    pub fn config_text(&self) -> String {
        read_lossy(&self.paths.config)
    }

    /// The containerd line this instance runs (its config format, its binaries).
    pub fn line(&self) -> deps::ContainerdLine {
        deps::containerd_line()
    }

    /// `containerd --version` of the binary this instance runs.
    pub fn version(&self) -> Result<String> {
        deps::containerd_version()
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// The whole containerd log (all starts of this instance).
    pub fn log(&self) -> String {
        read_lossy(&self.paths.log)
    }

    /// The log's current length, for [`Containerd::log_since`] / [`Containerd::wait_for_log_since`].
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.paths.log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    pub fn log_since(&self, mark: u64) -> String {
        read_lossy_from(&self.paths.log, mark)
    }

    /// Waits until `needle` appears in the log after `mark`; fails early if containerd exits.
    pub async fn wait_for_log_since(
        &mut self,
        mark: u64,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let child = self.child.as_mut().ok_or(Error::NotRunning)?;
        let log = &self.paths.log;
        // containerd's log is its child's output file: the child's wait does the polling, and an
        // early exit is reported as containerd's, with its log.
        child
            .wait_for_log_since(mark, needle, timeout)
            .await
            .map_err(|e| match e {
                Error::Command { status, .. } => Error::ContainerdExited {
                    status,
                    during: format!("waiting for {needle:?} in its log"),
                    log_path: log.clone(),
                    log_tail: tail(&read_lossy(log), 40),
                },
                other => other,
            })
    }

    /// Waits until `needle` appears anywhere in the log.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log_since(0, needle, timeout).await
    }

    /// Waits until an NRI plugin named `idx_name` ("NN-name") has registered and been
    /// synchronized (containerd logs `plugin "NN-name" connected`) after log position `mark`.
    pub async fn wait_for_plugin_since(
        &mut self,
        mark: u64,
        idx_name: &str,
        timeout: Duration,
    ) -> Result<()> {
        let needle = format!("plugin \\\"{idx_name}\\\" connected");
        self.wait_for_log_since(mark, &needle, timeout)
            .await
            .map(|_| ())
    }

    /// Starts a helper daemon (e.g. an NRI plugin) whose output goes to `<dir>/<name>.log`.
    pub fn spawn_process(&self, name: &str, cmd: &mut Command) -> Result<ChildGuard> {
        ChildGuard::spawn(name, cmd, &self.paths.dir.join(format!("{name}.log")))
    }

    /// SIGTERM containerd and wait for it (SIGKILL after 10 s). Shims and containers keep running.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            c.terminate(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// SIGKILL containerd and reap it. Shims and containers keep running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            c.kill()?;
        }
        Ok(())
    }

    /// Starts containerd again after [`Containerd::stop`] or [`Containerd::kill`], with the same
    /// root, state and config; waits until it serves CRI (and NRI). Get a new [`Cri`] after.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Config(
                "start_again: containerd is still running".into(),
            ));
        }
        self.spawn_and_wait().await
    }

    /// [`Containerd::stop`] then [`Containerd::start_again`].
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// Orderly teardown that reports problems (Drop does the same but can only log them):
    /// removes all pods through CRI, kills containerd and leftover shims, removes leftover runc
    /// containers, unmounts everything under the temp dir and removes it.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut problems = Vec::new();
        if self.is_running() {
            let cri = self.cri.clone();
            match tokio::time::timeout(Duration::from_secs(60), cri.remove_everything()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(e.to_string()),
                Err(_) => problems.push("CRI cleanup timed out after 60s".into()),
            }
        }
        problems.extend(self.teardown_rest());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Environment(format!(
                "containerd teardown: {}",
                problems.join("; ")
            )))
        }
    }

    /// Everything after the CRI cleanup. Returns problems found.
    fn teardown_rest(&mut self) -> Vec<String> {
        self.torn_down = true;
        let mut problems = Vec::new();
        if let Some(c) = self.child.as_mut() {
            if let Err(e) = c.kill() {
                problems.push(format!("killing containerd: {e}"));
            }
        }
        let addr = self.paths.grpc_socket.to_string_lossy().into_owned();
        let shims = kill_shims(&addr);
        if !shims.is_empty() {
            tracing::info!(?shims, "killed leftover shims");
        }
        let mut roots = vec![self.paths.runc_root.clone()];
        for r in &self.opts.runtimes {
            if let Some(toml::Value::String(root)) = r.options.get("Root") {
                roots.push(PathBuf::from(root));
            }
        }
        problems.extend(delete_runc_containers(&roots));
        // Last resort, e.g. for a proxy shim's children: anything still rooted in our dir.
        for pid in processes_under(&self.paths.dir) {
            tracing::warn!(pid, "killing leftover process rooted in the instance dir");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        remove_shim_sockets(&self.paths.state);
        problems.extend(unmount_under(&self.paths.dir));
        if let Some(td) = self.tempdir.take() {
            if std::env::var_os("CONRDMA_E2E_KEEP").is_some_and(|v| v == "1") {
                let kept = td.keep();
                eprintln!("conrdma-e2e: kept {}", kept.display());
            } else {
                let p = td.path().to_path_buf();
                if let Err(e) = td.close() {
                    problems.push(format!("removing {}: {e}", p.display()));
                }
            }
        }
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        // (On a failed test the containerd ChildGuard prints the log's tail when it drops.)
        if self.is_running() {
            // The test's runtime may be single-threaded or gone: clean up through CRI on a
            // thread of our own with its own runtime and connection.
            let sock = self.paths.grpc_socket.clone();
            let logs = self.paths.pod_logs.clone();
            let image = self.opts.image.clone();
            let pods = self.pods.clone();
            let worker = std::thread::spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("building cleanup runtime", e))?;
                rt.block_on(async move {
                    let cri = Cri::connect(&sock, &logs, &image, pods)?;
                    match tokio::time::timeout(Duration::from_secs(60), cri.remove_everything())
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout {
                            after: Duration::from_secs(60),
                            what: "CRI cleanup".into(),
                        }),
                    }
                })
            });
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("conrdma-e2e: CRI cleanup: {e}"),
                Err(_) => eprintln!("conrdma-e2e: CRI cleanup thread panicked"),
            }
        }
        for p in self.teardown_rest() {
            eprintln!("conrdma-e2e: teardown: {p}");
        }
    }
}

/// Says once per process which containerd the tests run against (on stderr, so a failing test's
/// output shows it, and in the tracing log).
fn log_line_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let line = deps::containerd_line();
        let version = deps::containerd_version().unwrap_or_else(|e| e.to_string());
        eprintln!(
            "conrdma-e2e: containerd {line} line ({}): {version}",
            deps::deps_prefix().display()
        );
        tracing::info!(%line, %version, "containerd under test");
    });
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
}

fn prepare_dirs(paths: &Paths, opts: &ContainerdOptions) -> Result<()> {
    for d in [
        &paths.root,
        &paths.state,
        &paths.plugin_path,
        &paths.plugin_config_path,
        &paths.cni_conf_dir,
        &paths.cni_bin_dir,
        &paths.pod_logs,
        &paths.runc_root,
        &paths.opt,
    ] {
        mkdir(d)?;
    }
    for (name, target) in &opts.prelaunched_plugins {
        let link = paths.plugin_path.join(name);
        std::os::unix::fs::symlink(target, &link)
            .map_err(|e| Error::io(format!("linking {}", link.display()), e))?;
    }
    for (name, text) in &opts.plugin_configs {
        let f = paths.plugin_config_path.join(name);
        std::fs::write(&f, text).map_err(|e| Error::io(format!("writing {}", f.display()), e))?;
    }
    if let Some(cni) = &opts.cni_bridge {
        write_cni(paths, cni)?;
    }
    Ok(())
}

/// Links the CNI plugins into the instance's bin dir and writes its one network.
fn write_cni(paths: &Paths, cni: &CniBridge) -> Result<()> {
    for plugin in ["bridge", "host-local", "loopback"] {
        let src = Path::new(CNI_PLUGIN_DIR).join(plugin);
        if !src.exists() {
            return Err(Error::Environment(format!(
                "{} is missing: install Debian's containernetworking-plugins (hack/install-deps.sh does)",
                src.display()
            )));
        }
        let link = paths.cni_bin_dir.join(plugin);
        std::os::unix::fs::symlink(&src, &link)
            .map_err(|e| Error::io(format!("linking {}", link.display()), e))?;
    }
    // No gateway, no masquerade: the pods need an eth0 (CRI insists), not a route off the node.
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "conrdma-e2e",
        "plugins": [{
            "type": "bridge",
            "bridge": cni.bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": cni.subnet}]],
                "dataDir": path_str(&paths.cni_conf_dir.join("ipam")),
            },
        }],
    });
    let f = paths.cni_conf_dir.join("10-conrdma-e2e.conflist");
    std::fs::write(&f, conf.to_string())
        .map_err(|e| Error::io(format!("writing {}", f.display()), e))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The config.toml for an instance, in the format of the running line
/// ([`deps::containerd_line`]): see [`render_config_for`].
pub fn render_config(paths: &Paths, opts: &ContainerdOptions) -> Result<String> {
    render_config_for(deps::containerd_line(), paths, opts)
}

/// The config.toml for an instance of `line`: version 2 for containerd 1.7 (CRI in
/// `io.containerd.grpc.v1.cri`), version 3 for 2.x (CRI split into `io.containerd.cri.v1.runtime`,
/// `io.containerd.cri.v1.images` and the gRPC service `io.containerd.grpc.v1.cri`). The same
/// settings either way; `opts.extra_config` is merged last and must use the line's own keys
/// (see [`deps::ContainerdLine::cri_runtime_plugin`]).
pub fn render_config_for(
    line: deps::ContainerdLine,
    paths: &Paths,
    opts: &ContainerdOptions,
) -> Result<String> {
    let runtimes = runtime_tables(paths, opts)?;
    let nri = json!({
        "disable": !opts.nri,
        "disable_connections": opts.nri_disable_connections,
        "socket_path": path_str(&paths.nri_socket),
        "plugin_path": path_str(&paths.plugin_path),
        "plugin_config_path": path_str(&paths.plugin_config_path),
        "plugin_registration_timeout": opts.nri_registration_timeout,
        "plugin_request_timeout": opts.nri_request_timeout,
    });
    let opt = json!({ "path": path_str(&paths.opt) });
    let plugins = match line {
        deps::ContainerdLine::Is17 => json!({
            "io.containerd.grpc.v1.cri": {
                "sandbox_image": opts.image,
                // Needed on these machines: the sandbox's oom_score_adj -998 is refused.
                "restrict_oom_score_adj": true,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "enable_selinux": false,
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": opts.default_runtime,
                },
                "cni": {
                    "bin_dir": path_str(&paths.cni_bin_dir),
                    "conf_dir": path_str(&paths.cni_conf_dir),
                    "max_conf_num": 1,
                },
            },
            "io.containerd.nri.v1.nri": nri,
            "io.containerd.internal.v1.opt": opt,
        }),
        deps::ContainerdLine::Is2x => json!({
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                // 2.x's `sandbox_image`.
                "pinned_images": { "sandbox": opts.image },
            },
            "io.containerd.cri.v1.runtime": {
                // Needed on these machines: the sandbox's oom_score_adj -998 is refused.
                "restrict_oom_score_adj": true,
                "enable_selinux": false,
                "containerd": { "default_runtime_name": opts.default_runtime },
                "cni": {
                    // 2.1 takes a list (`bin_dir` is deprecated).
                    "bin_dirs": [path_str(&paths.cni_bin_dir)],
                    "conf_dir": path_str(&paths.cni_conf_dir),
                    "max_conf_num": 1,
                },
            },
            "io.containerd.grpc.v1.cri": {
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
            },
            "io.containerd.nri.v1.nri": nri,
            "io.containerd.internal.v1.opt": opt,
        }),
    };
    let base = json!({
        "version": line.config_version(),
        "root": path_str(&paths.root),
        "state": path_str(&paths.state),
        "grpc": { "address": path_str(&paths.grpc_socket) },
        "debug": { "level": opts.log_level },
        "plugins": plugins,
    });
    let mut table: toml::Table = toml::Value::try_from(base)
        .ok()
        .and_then(|v| match v {
            toml::Value::Table(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| Error::Config("could not build the config table".into()))?;
    let cri_containerd = table
        .get_mut("plugins")
        .and_then(|v| v.get_mut(line.cri_runtime_plugin()))
        .and_then(|v| v.get_mut("containerd"))
        .and_then(|v| v.as_table_mut())
        .ok_or_else(|| Error::Config("config table lost its CRI section".into()))?;
    cri_containerd.insert("runtimes".into(), runtimes.into());
    merge(&mut table, &opts.extra_config);
    toml::to_string(&table).map_err(|e| Error::Config(format!("serialising config.toml: {e}")))
}

/// The `containerd.runtimes` table (same shape in config versions 2 and 3): "runc" with its
/// state under the instance dir, then `opts.runtimes`.
fn runtime_tables(paths: &Paths, opts: &ContainerdOptions) -> Result<toml::Table> {
    let mut runtimes = toml::Table::new();
    let mut runc = toml::Table::new();
    runc.insert("runtime_type".into(), "io.containerd.runc.v2".into());
    let mut runc_opts = toml::Table::new();
    runc_opts.insert("Root".into(), path_str(&paths.runc_root).into());
    // Pinned to the runc the harness cleans up with (bookworm's): a newer one from a dependency
    // prefix would not run on this glibc.
    if let Ok(runc_bin) = deps::runc_bin() {
        runc_opts.insert("BinaryName".into(), path_str(&runc_bin).into());
    }
    runc.insert("options".into(), runc_opts.into());
    runtimes.insert("runc".into(), runc.into());
    for r in &opts.runtimes {
        if r.name.is_empty() || r.runtime_type.is_empty() {
            return Err(Error::Config(format!(
                "runtime handler needs a name and a runtime_type: {r:?}"
            )));
        }
        let mut t = toml::Table::new();
        t.insert("runtime_type".into(), r.runtime_type.clone().into());
        if let Some(p) = &r.runtime_path {
            t.insert("runtime_path".into(), path_str(p).into());
        }
        if !r.pod_annotations.is_empty() {
            t.insert(
                "pod_annotations".into(),
                toml::Value::Array(r.pod_annotations.iter().map(|s| s.clone().into()).collect()),
            );
        }
        if !r.container_annotations.is_empty() {
            t.insert(
                "container_annotations".into(),
                toml::Value::Array(
                    r.container_annotations
                        .iter()
                        .map(|s| s.clone().into())
                        .collect(),
                ),
            );
        }
        if !r.options.is_empty() {
            t.insert("options".into(), r.options.clone().into());
        }
        runtimes.insert(r.name.clone(), t.into());
    }
    Ok(runtimes)
}

/// Deep-merges `over` into `base` (tables merge, anything else replaces).
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The argv of a process, from /proc.
fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of shim processes (`containerd-shim*`) whose `-address` is `addr` or starts with it
/// (a proxy shim may give its runc child a suffixed address).
pub fn shim_pids(addr: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let Some(argv) = cmdline(pid) else {
                return false;
            };
            let is_shim = argv
                .first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"));
            is_shim
                && argv
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1].starts_with(addr))
        })
        .collect()
}

fn kill_shims(addr: &str) -> Vec<i32> {
    let pids = shim_pids(addr);
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    // They are not our children; wait briefly for them to vanish (reaped by their parent).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && pids.iter().any(|&p| !is_zombie(p)) {
        std::thread::sleep(POLL);
    }
    pids
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
        })
        .unwrap_or(true)
}

/// Live processes (not zombies, not this one) whose root or working directory is at or under
/// `dir`: shims (cwd = bundle), container processes (root = rootfs), containerd (cwd = dir).
pub fn processes_under(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && !is_zombie(pid))
        .filter(|&pid| {
            ["root", "cwd"].iter().any(|l| {
                std::fs::read_link(format!("/proc/{pid}/{l}")).is_ok_and(|t| t.starts_with(dir))
            })
        })
        .collect()
}

/// `runc delete --force` for every container state dir under `<root>/<namespace>/<id>`.
fn delete_runc_containers(roots: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(runc) = deps::runc_bin() else {
        return problems;
    };
    for root in roots {
        let Ok(namespaces) = std::fs::read_dir(root) else {
            continue;
        };
        for ns in namespaces.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Ok(ids) = std::fs::read_dir(&ns) else {
                continue;
            };
            for id in ids.filter_map(|e| e.ok()) {
                if !id.path().join("state.json").exists() {
                    continue;
                }
                let id = id.file_name().to_string_lossy().into_owned();
                let out = Command::new(&runc)
                    .arg("--root")
                    .arg(&ns)
                    .args(["delete", "--force", &id])
                    .output();
                match out {
                    Ok(o) if o.status.success() => {
                        tracing::info!(%id, "deleted leftover runc container")
                    }
                    Ok(o) => problems.push(format!(
                        "runc delete --force {id}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => problems.push(format!("running runc: {e}")),
                }
            }
        }
    }
    problems
}

/// Removes shim sockets in /run/containerd/s named by the bundles (`<state>/io.containerd.runtime.v2.task/<ns>/<id>`,
/// the same layout on 1.7 and 2.x) whose shim is gone (normally shims remove their own; a killed
/// one leaves it).
fn remove_shim_sockets(state: &Path) {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = std::fs::read_dir(&tasks) else {
        return;
    };
    for ns in namespaces.filter_map(|e| e.ok()) {
        let Ok(bundles) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for b in bundles.filter_map(|e| e.ok()) {
            for addr in bundle_shim_addresses(&b.path()) {
                let path = addr.trim().trim_start_matches("unix://");
                if path.starts_with("/run/containerd/s/") {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// The shim addresses a bundle records: its `address` file (1.7, and shims that write one on 2.x)
/// and the `address` of `bootstrap.json` (2.x writes the shim's start reply there).
fn bundle_shim_addresses(bundle: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(a) = std::fs::read_to_string(bundle.join("address")) {
        found.push(a);
    }
    if let Ok(text) = std::fs::read_to_string(bundle.join("bootstrap.json")) {
        if let Some(a) = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["address"].as_str().map(str::to_string))
        {
            found.push(a);
        }
    }
    found
}

/// Mount points at or under `dir`, deepest (latest) first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.reverse();
    found
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything at or under `dir`; returns mount points it could not remove.
fn unmount_under(dir: &Path) -> Vec<String> {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Vec::new();
        }
        for m in mounts {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                tracing::debug!(mount = %m.display(), error = %e, "umount failed");
            }
        }
    }
    mounts_under(dir)
        .into_iter()
        .map(|m| format!("still mounted: {}", m.display()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }

    fn test_opts() -> ContainerdOptions {
        let mut shim = RuntimeHandler::new("conrdma", "io.containerd.conrdma.v1");
        shim.pod_annotations = vec!["conrdma.io/*".into()];
        shim.options.insert("Debug".into(), true.into());
        ContainerdOptions {
            runtimes: vec![shim],
            nri_request_timeout: "1s".into(),
            ..Default::default()
        }
    }

    fn rendered(line: deps::ContainerdLine, opts: &ContainerdOptions) -> toml::Table {
        let paths = Paths::new(Path::new("/tmp/x"));
        let text = render_config_for(line, &paths, opts).expect("config");
        text.parse().expect("valid toml")
    }

    fn check_nri_and_runtimes(v: &toml::Table, cri_runtime: &toml::Value) {
        let nri = &v["plugins"]["io.containerd.nri.v1.nri"];
        assert_eq!(nri["disable"].as_bool(), Some(false));
        assert_eq!(nri["plugin_request_timeout"].as_str(), Some("1s"));
        assert_eq!(nri["socket_path"].as_str(), Some("/tmp/x/nri/nri.sock"));
        assert_eq!(cri_runtime["restrict_oom_score_adj"].as_bool(), Some(true));
        let rts = &cri_runtime["containerd"]["runtimes"];
        assert_eq!(
            rts["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(rts["runc"]["options"]["Root"].as_str(), Some("/tmp/x/runc"));
        assert_eq!(
            rts["conrdma"]["pod_annotations"][0].as_str(),
            Some("conrdma.io/*")
        );
        assert_eq!(rts["conrdma"]["options"]["Debug"].as_bool(), Some(true));
    }

    #[test]
    fn config_v2_for_1_7() {
        let v = rendered(deps::ContainerdLine::Is17, &test_opts());
        assert_eq!(v["version"].as_integer(), Some(2));
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        check_nri_and_runtimes(&v, cri);
        assert_eq!(cri["sandbox_image"].as_str(), Some(deps::DEFAULT_IMAGE));
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/tmp/x/cni/bin"));
        assert!(v["plugins"].get("io.containerd.cri.v1.runtime").is_none());
    }

    #[test]
    fn config_v3_for_2x() {
        let v = rendered(deps::ContainerdLine::Is2x, &test_opts());
        assert_eq!(v["version"].as_integer(), Some(3));
        let rt = &v["plugins"]["io.containerd.cri.v1.runtime"];
        check_nri_and_runtimes(&v, rt);
        assert_eq!(rt["cni"]["bin_dirs"][0].as_str(), Some("/tmp/x/cni/bin"));
        let images = &v["plugins"]["io.containerd.cri.v1.images"];
        assert_eq!(
            images["pinned_images"]["sandbox"].as_str(),
            Some(deps::DEFAULT_IMAGE)
        );
        let grpc = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(grpc["stream_server_port"].as_str(), Some("0"));
        assert!(grpc.get("containerd").is_none() && grpc.get("sandbox_image").is_none());
    }

    #[test]
    fn extra_config_merges_deeply() {
        for line in [deps::ContainerdLine::Is17, deps::ContainerdLine::Is2x] {
            let plugin = line.cri_runtime_plugin();
            let extra: toml::Table = format!("[plugins.\"{plugin}\"]\nenable_cdi = true\n")
                .parse()
                .expect("toml");
            let opts = ContainerdOptions {
                extra_config: extra,
                ..Default::default()
            };
            let v = rendered(line, &opts);
            let cri = &v["plugins"][plugin];
            assert_eq!(cri["enable_cdi"].as_bool(), Some(true));
            assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        }
    }
}
