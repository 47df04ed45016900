//! Finding and removing what a containerd instance leaves behind: shims and their sockets, runc
//! containers, processes under its directory, and mounts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::deps;
use crate::process::POLL;

/// The argv of a process, from /proc.
pub(super) fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

pub(super) fn all_pids() -> Vec<i32> {
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

pub(super) fn kill_shims(addr: &str) -> Vec<i32> {
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

pub(super) fn is_zombie(pid: i32) -> bool {
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
pub(super) fn delete_runc_containers(roots: &[PathBuf]) -> Vec<String> {
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
pub(super) fn remove_shim_sockets(state: &Path) {
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
pub(super) fn bundle_shim_addresses(bundle: &Path) -> Vec<String> {
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

pub(super) fn unescape_mount(s: &str) -> String {
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
pub(super) fn unmount_under(dir: &Path) -> Vec<String> {
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
}
