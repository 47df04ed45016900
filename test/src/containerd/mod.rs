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

use crate::cri::{Cri, PodConfigs};
use crate::deps;
use crate::error::{Error, Result};
use crate::process::{read_lossy, read_lossy_from, tail, ChildGuard, POLL};

mod cleanup;
mod config;

use cleanup::*;
pub use cleanup::{mounts_under, processes_under, shim_pids};
use config::*;
pub use config::{
    render_config, render_config_for, CniBridge, ContainerdOptions, Paths, RuntimeHandler,
    K8S_NAMESPACE,
};

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
            .wait_for_text(needle, mark, timeout)
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
