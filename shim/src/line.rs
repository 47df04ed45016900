//! Which containerd line runs `start`, for the task API version to report.
//!
//! Before 2.3's bootstrap message nothing in `start`'s arguments, environment or bundle tells
//! 1.7 from 2.0-2.2 (both set `MAX_SHIM_VERSION=2`; checked on 1.7.24 and 2.1.9). The caller's
//! binary does: `start` is executed by containerd itself, so `/proc/<parent>/exe` is the running
//! daemon (the image it runs, even if a package upgrade has since replaced the file), and its
//! `--version` names the release. Running it costs about 12 ms, so the answer is cached per binary
//! image (device, inode, size, mtime) in a small file: every later `start` only reads that file.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the answers are cached: tmpfs on nodes, so a reboot (and any binary swap it brings)
/// starts afresh.
pub const CACHE_DIR: &str = "/run/conrdma/shim/containerd-releases";

/// The binary of the process that ran this one (containerd, for `start`).
pub fn parent_exe() -> PathBuf {
    PathBuf::from(format!("/proc/{}/exe", nix::unistd::getppid()))
}

/// The major version of the containerd release `exe` is, from `exe --version`
/// ("containerd github.com/containerd/containerd/v2 2.1.9+unknown"), through the cache in
/// `cache_dir`. None when it cannot be told (not containerd, exec fails, unreadable output).
pub fn containerd_major(exe: &Path, cache_dir: &Path) -> Option<u32> {
    // Never run a parent that is not containerd (a shell, a test harness) with --version.
    let named = fs::read_link(exe).unwrap_or_else(|_| exe.to_path_buf());
    let name = named.file_name()?.to_string_lossy();
    if !name.starts_with("containerd") {
        return None;
    }
    let meta = fs::metadata(exe).ok()?;
    let key = format!(
        "{}-{}-{}-{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    let cached = cache_dir.join(&key);
    if let Ok(text) = fs::read_to_string(&cached) {
        if let Some(major) = parse_version_line(&text) {
            return Some(major);
        }
    }
    let out = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let major = parse_version_line(&text)?;
    // Best effort: without the cache the next start just asks again.
    let _ = fs::create_dir_all(cache_dir).and_then(|_| {
        let tmp = cache_dir.join(format!(".{key}.{}", std::process::id()));
        fs::write(&tmp, &text).and_then(|_| fs::rename(&tmp, &cached))
    });
    Some(major)
}

/// The major version in containerd's `--version` line: its first word is `containerd`, then the
/// module path, then the version (`1.7.24~ds1`, `v2.1.9`, `2.1.9+unknown`).
fn parse_version_line(text: &str) -> Option<u32> {
    let mut words = text.split_whitespace();
    if words.next()? != "containerd" {
        return None;
    }
    let module = words.next()?;
    let version = words.next()?;
    let version = version.strip_prefix('v').unwrap_or(version);
    let major: u32 = version
        .split('.')
        .next()?
        .parse()
        .ok()
        .or_else(|| module.ends_with("/v2").then_some(2))?;
    Some(major)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn version_lines_of_both_lines_and_upstream_builds() {
        let cases = [
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n",
                Some(1),
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n",
                Some(2),
            ),
            (
                "containerd containerd.io v2.2.0 1c4457e00facac03ce1d75f7b6777a7a851e5c41\n",
                Some(2),
            ),
            (
                "containerd github.com/containerd/containerd/v2 main\n",
                Some(2),
            ),
            ("runc version 1.1.5\n", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_version_line(line), want, "{line:?}");
        }
    }

    /// A stand-in `containerd` that counts how often it runs.
    fn fake_containerd(dir: &Path, version_line: &str) -> PathBuf {
        let exe = dir.join("containerd");
        let count = dir.join("runs");
        fs::write(
            &exe,
            format!(
                "#!/bin/sh\necho x >> {}\necho '{version_line}'\n",
                count.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    #[test]
    fn the_binary_is_asked_once_then_the_cache_answers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let exe = fake_containerd(
            dir.path(),
            "containerd github.com/containerd/containerd/v2 2.1.9+unknown",
        );
        assert_eq!(containerd_major(&exe, &cache), Some(2));
        assert_eq!(containerd_major(&exe, &cache), Some(2));
        let runs = fs::read_to_string(dir.path().join("runs")).unwrap();
        assert_eq!(runs.lines().count(), 1, "second answer from the cache");

        // Another binary image (an upgrade or downgrade) is asked again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let exe = fake_containerd(
            dir.path(),
            "containerd github.com/containerd/containerd 1.7.24~ds1",
        );
        assert_eq!(containerd_major(&exe, &cache), Some(1));
    }

    #[test]
    fn no_answer_when_the_parent_is_not_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_containerd(dir.path(), "bash 5.2");
        assert_eq!(containerd_major(&exe, &dir.path().join("cache")), None);
        // Something else is never even run: this test's own binary, say.
        let me = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        assert_eq!(containerd_major(&me, &dir.path().join("cache")), None);
        assert_eq!(
            containerd_major(&dir.path().join("missing"), &dir.path().join("cache")),
            None
        );
    }
}
