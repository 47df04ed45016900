//! Where the external binaries (containerd, ctr, the runc shim, runc) and the project's own
//! built binaries are, and the one-time build of the test image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Default prefix `hack/install-deps.sh` unpacks containerd 1.7 into.
pub const DEFAULT_DEPS_PREFIX: &str = "/opt/conrdma-deps";

/// Name the test image is imported under (see `hack/build-image.sh`).
pub const DEFAULT_IMAGE: &str = "localhost/conrdma/busybox:latest";

const INSTALL_HINT: &str = "run `sudo hack/install-deps.sh` (CONRDMA_DEPS overrides the prefix)";

/// The dependency prefix: `$CONRDMA_DEPS` or `/opt/conrdma-deps`.
pub fn deps_prefix() -> PathBuf {
    match std::env::var_os("CONRDMA_DEPS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_DEPS_PREFIX),
    }
}

/// `<prefix>/usr/bin`, which holds containerd, ctr and containerd-shim-runc-v2.
pub fn deps_bin_dir() -> PathBuf {
    deps_prefix().join("usr/bin")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A binary from the dependency prefix.
pub fn dep_bin(name: &str) -> Result<PathBuf> {
    let dir = deps_bin_dir();
    let p = dir.join(name);
    if is_executable(&p) {
        Ok(p)
    } else {
        Err(Error::MissingBinary {
            name: name.to_string(),
            looked_in: dir.display().to_string(),
            hint: INSTALL_HINT.to_string(),
        })
    }
}

pub fn containerd_bin() -> Result<PathBuf> {
    dep_bin("containerd")
}

pub fn ctr_bin() -> Result<PathBuf> {
    dep_bin("ctr")
}

pub fn runc_shim_bin() -> Result<PathBuf> {
    dep_bin("containerd-shim-runc-v2")
}

/// The directories of `$PATH` followed by the usual sbin/bin directories.
pub fn system_path_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Looks `name` up in [`system_path_dirs`].
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    system_path_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// runc, which the runc shim runs (from `$PATH`, as the shim finds it).
pub fn runc_bin() -> Result<PathBuf> {
    find_in_path("runc").ok_or_else(|| Error::MissingBinary {
        name: "runc".into(),
        looked_in: "$PATH and the sbin directories".into(),
        hint: INSTALL_HINT.into(),
    })
}

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root if relative),
/// else the one the running test binary was built in, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let t = PathBuf::from(t);
        return if t.is_absolute() {
            t
        } else {
            workspace_root().join(t)
        };
    }
    if let Some(profile) = exe_profile_dir() {
        if let Some(t) = profile.parent() {
            return t.to_path_buf();
        }
    }
    workspace_root().join("target")
}

/// `<target>/<profile>` when the running executable is a test binary in `<target>/<profile>/deps`.
fn exe_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    Some(deps.parent()?.to_path_buf())
}

/// Candidate directories for the project's binaries, best first.
pub fn bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CONRDMA_BIN_DIR").filter(|d| !d.is_empty()) {
        // Relative to the workspace root, where it is typed: cargo runs tests and benches in the
        // package's own directory.
        dirs.push(workspace_root().join(d));
        return dirs;
    }
    if std::env::var_os("CARGO_TARGET_DIR").is_some_and(|t| !t.is_empty()) {
        dirs.push(target_dir().join("debug"));
    }
    if let Some(p) = exe_profile_dir() {
        if !dirs.contains(&p) {
            dirs.push(p);
        }
    }
    let d = workspace_root().join("target/debug");
    if !dirs.contains(&d) {
        dirs.push(d);
    }
    dirs
}

/// One of the workspace's own binaries, e.g. `workspace_bin("conrdma-nri-plugin")`.
///
/// Looks in `$CONRDMA_BIN_DIR` if set (a relative path is taken from the workspace root), else `$CARGO_TARGET_DIR/debug`, the profile directory of
/// the running test binary and `<workspace>/target/debug`. `cargo test` does not build other
/// packages' binaries, hence the hint.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let dirs = bin_dirs();
    for d in &dirs {
        let p = d.join(name);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(Error::MissingBinary {
        name: name.to_string(),
        looked_in: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        hint: "run `cargo build --workspace --bins` first (or set CONRDMA_BIN_DIR)".to_string(),
    })
}

/// Fails unless the process runs as root.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::Environment(
            "the end-to-end tests run a real containerd and must run as root \
             (e.g. `sudo -E cargo test -p conrdma-e2e`)"
                .into(),
        ))
    }
}

/// Checks everything a containerd instance needs: root, containerd, ctr, the runc shim, runc,
/// busybox for the image. Tests call this (via [`crate::Containerd::start`]) and fail with its
/// message rather than skipping.
pub fn check_environment() -> Result<()> {
    require_root()?;
    containerd_bin()?;
    ctr_bin()?;
    runc_shim_bin()?;
    runc_bin()?;
    if std::env::var_os("CONRDMA_E2E_IMAGE").is_none() && !Path::new("/bin/busybox").exists() {
        return Err(Error::MissingBinary {
            name: "busybox".into(),
            looked_in: "/bin".into(),
            hint: INSTALL_HINT.into(),
        });
    }
    Ok(())
}

/// The OCI image-layout tarball of the default test image ([`DEFAULT_IMAGE`]).
///
/// `$CONRDMA_E2E_IMAGE` names a ready tarball (whose index must name [`DEFAULT_IMAGE`]);
/// otherwise see [`image_tarball_named`].
pub fn image_tarball() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CONRDMA_E2E_IMAGE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    image_tarball_named(DEFAULT_IMAGE)
}

/// The busybox test image under the name `name`, built by `hack/build-image.sh` into
/// `<target>/conrdma-e2e/` once per test process and name (the script replaces the file
/// atomically, so concurrent test binaries do not collide).
pub fn image_tarball_named(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // Held across the build: parallel tests wait for one build instead of racing.
    let mut built = built
        .lock()
        .map_err(|_| Error::Environment("image build lock poisoned".into()))?;
    if let Some(p) = built.get(name) {
        return Ok(p.clone());
    }
    let p = build_image(name)?;
    built.insert(name.to_string(), p.clone());
    Ok(p)
}

fn build_image(name: &str) -> Result<PathBuf> {
    let script = workspace_root().join("hack/build-image.sh");
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let out = target_dir().join(format!("conrdma-e2e/{file}.tar"));
    let output = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .arg(name)
        .output()
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{} {} {}", script.display(), out.display(), name),
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(out)
}
