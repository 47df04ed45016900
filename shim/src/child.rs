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

use containerd_shim_protos::api::ConnectRequest;
use nix::sys::signal::Signal;
use protobuf::Message;
use ttrpc::{Code, Request};

use crate::error::{Result, ShimError};
use crate::flags::Flags;
use crate::service::{Upstream, SERVICE_V2, SERVICE_V3};

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

/// Which task service the child serves: containerd 1.7's runc shim serves only
/// `containerd.task.v2.Task`, 2.x's only `containerd.task.v3.Task`.
///
/// The child runs in server mode, so it prints no bootstrap reply to read the version from
/// (running its own `start` instead would detach it from the proxy's lifetime, see the module
/// docs). It is asked instead: `Connect` under each name, newest first. Go's ttrpc answers a
/// service it does not have with UNIMPLEMENTED "service <name>"; any other answer means the name
/// is served (runc answers Connect for an unknown id with its own pid).
pub fn served_service(up: &dyn Upstream, id: &str, timeout: Duration) -> Result<&'static str> {
    let mut tried = Vec::new();
    for service in [SERVICE_V3, SERVICE_V2] {
        let mut msg = ConnectRequest::new();
        msg.id = id.to_string();
        let payload = msg
            .write_to_bytes()
            .map_err(|e| ShimError::Child(format!("encoding a ConnectRequest: {e}")))?;
        let mut req = Request::new();
        req.service = service.to_string();
        req.method = "Connect".to_string();
        req.payload = payload;
        req.timeout_nano = timeout.as_nanos().min(i64::MAX as u128) as i64;
        let status = match up.call(req) {
            Ok(res) => res.status.into_option(),
            Err(ttrpc::Error::RpcStatus(s)) => Some(s),
            Err(e) => return Err(ShimError::Child(format!("asking for {service}: {e}"))),
        };
        match status {
            Some(s) if s.code() == Code::UNIMPLEMENTED && s.message.starts_with("service ") => {
                tried.push(format!("{service}: {}", s.message));
            }
            _ => return Ok(service),
        }
    }
    Err(ShimError::Child(format!(
        "serves no task service this proxy knows ({})",
        tried.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use ttrpc::Response;

    /// Serves only the named service, the way Go's ttrpc refuses the others.
    struct OnlyServes(&'static str, Mutex<Vec<String>>);

    impl Upstream for OnlyServes {
        fn call(&self, req: Request) -> ttrpc::Result<Response> {
            self.1.lock().unwrap().push(req.service.clone());
            if req.service == self.0 {
                Ok(Response::new())
            } else {
                Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    Code::UNIMPLEMENTED,
                    format!("service {}", req.service),
                )))
            }
        }
    }

    #[test]
    fn the_child_service_is_found_by_asking() {
        let t = Duration::from_secs(1);
        let v3 = OnlyServes(SERVICE_V3, Mutex::default());
        assert_eq!(served_service(&v3, "sb", t).unwrap(), SERVICE_V3);
        assert_eq!(*v3.1.lock().unwrap(), [SERVICE_V3]);
        let v2 = OnlyServes(SERVICE_V2, Mutex::default());
        assert_eq!(served_service(&v2, "sb", t).unwrap(), SERVICE_V2);
        assert_eq!(*v2.1.lock().unwrap(), [SERVICE_V3, SERVICE_V2]);
        let none = OnlyServes("containerd.task.v9.Task", Mutex::default());
        let e = served_service(&none, "sb", t).unwrap_err().to_string();
        assert!(e.contains("serves no task service"), "{e}");
    }
}
