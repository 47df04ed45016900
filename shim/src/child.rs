//! The stock runc v2 shim as our child, in its server mode (what its own `start` would exec):
//! `containerd-shim-runc-v2 -namespace NS -id ID -address <grpc>-conrdma -publish-binary P
//! [-debug] -socket <our socket>-runc`, cwd = the bundle, stdio on /dev/null, its own process
//! group, and PR_SET_PDEATHSIG = SIGKILL so it (and with it every container of the pod) dies
//! with the proxy; containerd then runs `delete` per container. The `-address` suffix only keeps
//! its socket hashing apart from ours; events go to `TTRPC_ADDRESS` from the environment.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Result, ShimError};
use crate::flags::Flags;

/// Suffix of the `-address` handed to the child.
pub const ADDRESS_SUFFIX: &str = "-conrdma";

/// The child's socket: ours with `-runc` appended (well under the 106-byte limit).
pub fn child_socket(our_socket: &Path) -> PathBuf {
    let mut s = our_socket.as_os_str().to_owned();
    s.push("-runc");
    PathBuf::from(s)
}

/// Spawns the runc shim server. Must run on the thread that lives as long as the process (the
/// main thread): PR_SET_PDEATHSIG fires when the *thread* that forked exits.
pub fn spawn(runc_shim: &Path, flags: &Flags, bundle: &Path, socket: &Path) -> Result<Child> {
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(runc_shim);
    cmd.arg("-namespace")
        .arg(&flags.namespace)
        .arg("-id")
        .arg(&flags.id)
        .arg("-address")
        .arg(format!("{}{ADDRESS_SUFFIX}", flags.address))
        .arg("-publish-binary")
        .arg(&flags.publish_binary);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg("-socket")
        .arg(socket)
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The proxy may have died between fork and prctl.
            if nix::unistd::getppid().as_raw() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| ShimError::Child(format!("starting {}: {e}", runc_shim.display())))
}

/// Waits until the child's socket accepts connections.
pub fn wait_ready(child: &mut Child, socket: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ShimError::Child(format!(
                "exited ({status}) before serving {}",
                socket.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(ShimError::Child(format!(
                "did not serve {} within {timeout:?}",
                socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
