//! `start`: find or launch the pod's proxy and print its address in the form the calling
//! containerd line expects (see [`crate::bootstrap`]).
//!
//! containerd reads stdout and stderr combined as the answer, so nothing but the reply (or, on
//! failure, one error line) may be printed, and the launched server gets /dev/null for both.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bootstrap::StartInput;
use crate::daemon::{CONFIG_ENV, LISTEN_FD};
use crate::error::{Result, ShimError};
use crate::flags::Flags;
use crate::line;
use crate::options;
use crate::settings::Settings;
use crate::spec::Spec;

/// Where shim sockets live (fixed by containerd, whatever its `state` setting).
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// Written into each bundle at `start`: the runc shim binary, for the `delete` command.
pub const RUNC_SHIM_FILE: &str = "conrdma-runc-shim";

/// Go's `filepath.Join` + `Clean` of absolute-ish paths, enough for socket naming.
fn clean_join(parts: &[&str]) -> String {
    let joined = parts.join("/");
    let absolute = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|s| *s != "..") {
                    out.pop();
                } else if !absolute {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let body = out.join("/");
    if absolute {
        format!("/{body}")
    } else if body.is_empty() {
        ".".into()
    } else {
        body
    }
}

/// `/run/containerd/s/<sha256 of "<address>/<namespace>/<group>">`, the scheme runc's shim uses.
pub fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    let key = clean_join(&[address, namespace, group]);
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

pub fn accepts(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Writes `<bundle>/address` atomically.
pub fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let tmp = bundle.join(".address.conrdma.tmp");
    let path = bundle.join("address");
    std::fs::write(&tmp, address)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| ShimError::io(format!("writing {}", path.display()), e))
}

/// Returns the bytes to print: the address, or containerd 2.3's `BootstrapResult`.
pub fn start(flags: &Flags) -> Result<Vec<u8>> {
    flags.require(&["namespace", "id", "address"])?;
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let input = StartInput::parse(&stdin, &flags.id, &flags.namespace)?;
    let settings = Settings::from_toml(&options::settings_text(input.options().as_ref())?)?;
    let address = launch(flags, &settings)?;
    let task_api = match (&input, settings.task_api) {
        (_, Some(v)) => Some(v),
        (StartInput::Bootstrap(_), None) => None,
        // 2.0-2.2 take version 3 and then reuse the pod's shim instead of running `start` and
        // `delete` for every container (a quarter of a container's lifecycle on 2.1.9);
        // 1.7 refuses it, and anything unknown gets the plain address every line accepts.
        (StartInput::Legacy(_), None) => {
            let major = line::containerd_major(&line::parent_exe(), Path::new(line::CACHE_DIR));
            major.is_some_and(|m| m >= 2).then_some(3)
        }
    };
    input.reply(&address, task_api)
}

/// Finds the group's running proxy or launches one; returns its `unix://` address.
fn launch(flags: &Flags, settings: &Settings) -> Result<String> {
    let bundle = std::env::current_dir().map_err(|e| ShimError::io("reading the cwd", e))?;
    let runc_shim = settings.runc_shim_path(&flags.publish_binary)?;
    let _ = std::fs::write(
        bundle.join(RUNC_SHIM_FILE),
        runc_shim.as_os_str().as_encoded_bytes(),
    );
    // A bundle without a readable spec is grouped by its own id, as runc does.
    let spec = Spec::read(&bundle).unwrap_or_default();
    let group = spec.group(&flags.id).to_string();
    let socket = socket_path(&flags.address, &flags.namespace, &group);
    let address = format!("unix://{}", socket.display());

    if accepts(&socket) {
        write_address(&bundle, &address)?;
        return Ok(address);
    }
    let _ = std::fs::remove_file(&socket);
    std::fs::create_dir_all(SOCKET_DIR)
        .map_err(|e| ShimError::io(format!("creating {SOCKET_DIR}"), e))?;
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Another `start` of the same group won the race: use its server.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !accepts(&socket) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            write_address(&bundle, &address)?;
            return Ok(address);
        }
        Err(e) => return Err(ShimError::io(format!("binding {}", socket.display()), e)),
    };
    let exe = std::env::current_exe().map_err(|e| ShimError::io("finding our binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("-namespace")
        .arg(&flags.namespace)
        .arg("-id")
        .arg(&flags.id)
        .arg("-address")
        .arg(&flags.address)
        .arg("-publish-binary")
        .arg(&flags.publish_binary)
        .arg("-socket")
        .arg(&socket);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(&bundle)
        .env(CONFIG_ENV, &settings.source)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let lfd = listener.as_raw_fd();
    // SAFETY: dup2 and setsid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if lfd != LISTEN_FD {
                nix::unistd::dup2(lfd, LISTEN_FD).map_err(std::io::Error::from)?;
            } else {
                // Same number: just clear close-on-exec.
                nix::fcntl::fcntl(
                    lfd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )
                .map_err(std::io::Error::from)?;
            }
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let _ = std::fs::remove_file(&socket);
        ShimError::io("launching the shim server", e)
    })?;
    adjust_oom_score(child.id());
    write_address(&bundle, &address)?;
    Ok(address)
}

/// The server gets containerd's OOM score + 1, as containerd's own shims do (best effort: a
/// negative score needs privileges some hosts withhold).
fn adjust_oom_score(pid: u32) {
    let parent = nix::unistd::getppid();
    let Ok(text) = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj")) else {
        return;
    };
    let Ok(score) = text.trim().parse::<i32>() else {
        return;
    };
    let _ = std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (score + 1).min(1000).to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_follow_runc() {
        assert_eq!(
            clean_join(&["/run/c.sock", "k8s.io", "abc"]),
            "/run/c.sock/k8s.io/abc"
        );
        assert_eq!(clean_join(&["/a//b/", "./n", "g"]), "/a/b/n/g");
        assert_eq!(clean_join(&["/a/../b", "n", "g"]), "/b/n/g");
        let p = socket_path("/run/containerd/containerd.sock", "k8s.io", "abc");
        // sha256("/run/containerd/containerd.sock/k8s.io/abc")
        let want = Sha256::digest(b"/run/containerd/containerd.sock/k8s.io/abc");
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p, Path::new(SOCKET_DIR).join(hex));
        assert!(p.as_os_str().len() + "-runc".len() <= 106);
    }

    #[test]
    fn address_file_is_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        write_address(d.path(), "unix:///run/containerd/s/old").unwrap();
        write_address(d.path(), "unix:///run/containerd/s/new").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("address")).unwrap(),
            "unix:///run/containerd/s/new"
        );
    }
}
