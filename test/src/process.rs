//! A guard for daemons the tests start (containerd, the NRI plugin, ...): output captured in a
//! log file, killed and reaped on drop.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// How often the waiting helpers poll.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// A running child process with its stdout and stderr appended to a log file.
///
/// Dropping it sends SIGKILL and reaps the child. If the thread is panicking (a failed test),
/// the tail of the log is printed to stderr first, so the failure output shows it.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log_path`.
    ///
    /// The child gets PR_SET_PDEATHSIG=SIGKILL, so it dies if the test process dies without
    /// running destructors. Note that this signal follows the *thread* that spawned it: spawn
    /// from a thread that outlives the guard (a test's own thread or a runtime worker), not from
    /// a short-lived helper thread or `spawn_blocking`.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command, log_path: &Path) -> Result<Self> {
        let name = name.into();
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log_path.display()), e))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {name} ({:?})", cmd.get_program()), e))?;
        tracing::debug!(name = %name, pid = child.id(), log = %log_path.display(), "spawned");
        Ok(ChildGuard {
            name,
            pid: child.id(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The log's current length, for [`ChildGuard::log_since`].
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The log written after `mark` (from [`ChildGuard::log_mark`]).
    pub fn log_since(&self, mark: u64) -> String {
        read_lossy_from(&self.log_path, mark)
    }

    /// Returns the exit status if the child has exited (reaping it), or None while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(self.status);
        };
        let s = child
            .try_wait()
            .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        if s.is_some() {
            self.status = s;
        }
        Ok(s)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `sig` to the child (no-op once it has been reaped).
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid as i32), sig)
            .map_err(|e| Error::io(format!("sending {sig} to {}", self.name), e.into()))
    }

    /// Waits up to `timeout` for the child to exit, without blocking the async runtime.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, then SIGKILL if the child has not exited after `grace`. Returns the exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        if let Some(s) = self.wait_timeout(grace).await? {
            return Ok(s);
        }
        tracing::warn!(name = %self.name, ?grace, "did not exit after SIGTERM; killing");
        self.kill()
    }

    /// SIGKILL and reap (blocking, which is immediate after SIGKILL).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        let name = self.name.clone();
        let Some(child) = self.child.as_mut() else {
            return Err(Error::NotRunning);
        };
        // kill() fails only if the child was already reaped, which try_wait ruled out.
        let _ = child.kill();
        let s = child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {name}"), e))?;
        self.status = Some(s);
        Ok(s)
    }

    /// Waits until `needle` appears in the log after `mark`; fails early if the child exits.
    pub async fn wait_for_text(
        &mut self,
        needle: &str,
        mark: u64,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_since(mark);
            if text.contains(needle) {
                return Ok(text);
            }
            if let Some(s) = self.try_wait()? {
                return Err(Error::Command {
                    command: self.name.clone(),
                    status: format!("{s}, before logging {needle:?}"),
                    output: tail(&self.log(), 60),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    after: timeout,
                    what: format!(
                        "{needle:?} in {}; last lines:\n{}",
                        self.log_path.display(),
                        tail(&text, 30)
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `needle` appears anywhere in the log.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_text(needle, 0, timeout).await
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}), last lines -----\n{}\n-----",
                self.name,
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
        if let Err(e) = self.kill() {
            tracing::warn!(name = %self.name, error = %e, "could not kill child");
        }
    }
}

pub(crate) fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub(crate) fn read_lossy_from(p: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(p) else {
        return String::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
