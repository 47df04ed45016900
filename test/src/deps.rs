//! Which containerd line runs (`$CONRDMA_CONTAINERD`), where the external binaries (containerd,
//! ctr, the runc shim, runc) and the project's own built binaries are, and the one-time build of
//! the test image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Default prefix `hack/install-deps.sh` unpacks containerd 1.7 (Debian trixie) into.
pub const DEFAULT_DEPS_PREFIX: &str = "/opt/conrdma-deps";

/// Default prefix `hack/install-deps.sh` unpacks containerd 2.x (Debian sid) into.
pub const DEFAULT_DEPS2_PREFIX: &str = "/opt/conrdma-deps-2";

/// Name the test image is imported under (see `hack/build-image.sh`).
pub const DEFAULT_IMAGE: &str = "localhost/conrdma/busybox:latest";

const INSTALL_HINT: &str =
    "run `sudo hack/install-deps.sh` (CONRDMA_DEPS / CONRDMA_DEPS2 override the prefixes)";

/// The containerd release line the harness runs, chosen by `$CONRDMA_CONTAINERD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerdLine {
    /// containerd 1.7 (config version 2, CRI in `io.containerd.grpc.v1.cri`).
    Is17,
    /// containerd 2.x (config version 3, CRI split into `io.containerd.cri.v1.{runtime,images}`).
    Is2x,
}

impl ContainerdLine {
    /// The default line when `$CONRDMA_CONTAINERD` is unset: 2.x, what nodes run.
    pub const DEFAULT: ContainerdLine = ContainerdLine::Is2x;

    /// Parses a `$CONRDMA_CONTAINERD` value: "1.7" or "2", "2.x", "2.1", ... (any 2.N).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "1.7" {
            return Some(ContainerdLine::Is17);
        }
        let minor = s.strip_prefix('2')?;
        let ok = minor.is_empty()
            || minor == ".x"
            || minor.strip_prefix('.').is_some_and(|m| {
                !m.is_empty() && m.chars().all(|c| c.is_ascii_digit() || c == '.')
            });
        ok.then_some(ContainerdLine::Is2x)
    }

    /// Short name for logs: "1.7" or "2.x".
    pub fn name(self) -> &'static str {
        match self {
            ContainerdLine::Is17 => "1.7",
            ContainerdLine::Is2x => "2.x",
        }
    }

    /// The config.toml `version` this line's harness config is written in.
    pub fn config_version(self) -> i64 {
        match self {
            ContainerdLine::Is17 => 2,
            ContainerdLine::Is2x => 3,
        }
    }

    /// The plugin whose `containerd.runtimes.<name>` tables define CRI runtime handlers (and which
    /// holds `restrict_oom_score_adj`, `enable_cdi`, `cni`), for `ContainerdOptions::extra_config`.
    pub fn cri_runtime_plugin(self) -> &'static str {
        match self {
            ContainerdLine::Is17 => "io.containerd.grpc.v1.cri",
            ContainerdLine::Is2x => "io.containerd.cri.v1.runtime",
        }
    }

    /// Env var overriding this line's prefix, and its default.
    fn prefix_env(self) -> (&'static str, &'static str) {
        match self {
            ContainerdLine::Is17 => ("CONRDMA_DEPS", DEFAULT_DEPS_PREFIX),
            ContainerdLine::Is2x => ("CONRDMA_DEPS2", DEFAULT_DEPS2_PREFIX),
        }
    }
}

impl std::fmt::Display for ContainerdLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static LINE_OVERRIDE: OnceLock<ContainerdLine> = OnceLock::new();

/// Picks the line for this process in place of `$CONRDMA_CONTAINERD` (e.g. from a command-line
/// flag), before any instance starts. Fails if a different line was already picked.
pub fn set_containerd_line(line: ContainerdLine) -> Result<()> {
    let set = *LINE_OVERRIDE.get_or_init(|| line);
    if set == line {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "containerd line already set to {set}, cannot switch to {line}"
        )))
    }
}

/// The line [`set_containerd_line`] picked, else the one `$CONRDMA_CONTAINERD` selects ("1.7" or
/// "2.1"/"2.x"/"2"; unset or empty: [`ContainerdLine::DEFAULT`]). Fails on any other value.
pub fn try_containerd_line() -> Result<ContainerdLine> {
    if let Some(line) = LINE_OVERRIDE.get() {
        return Ok(*line);
    }
    match std::env::var("CONRDMA_CONTAINERD") {
        Ok(v) if !v.trim().is_empty() => ContainerdLine::parse(&v).ok_or_else(|| {
            Error::Environment(format!(
                "CONRDMA_CONTAINERD={v:?}: expected 1.7 or 2.1 (any 2.x)"
            ))
        }),
        _ => Ok(ContainerdLine::DEFAULT),
    }
}

/// The line the harness runs. An invalid `$CONRDMA_CONTAINERD` gives the default here;
/// [`check_environment`] (so every `Containerd::start`) reports it as an error.
pub fn containerd_line() -> ContainerdLine {
    try_containerd_line().unwrap_or(ContainerdLine::DEFAULT)
}

/// The dependency prefix of the running line: for 1.7 `$CONRDMA_DEPS` or `/opt/conrdma-deps`,
/// for 2.x `$CONRDMA_DEPS2` or `/opt/conrdma-deps-2`.
pub fn deps_prefix() -> PathBuf {
    deps_prefix_for(containerd_line())
}

/// The dependency prefix of `line`.
pub fn deps_prefix_for(line: ContainerdLine) -> PathBuf {
    let (var, default) = line.prefix_env();
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(default),
    }
}

/// `<prefix>/usr/bin`, which holds containerd, ctr and containerd-shim-runc-v2.
pub fn deps_bin_dir() -> PathBuf {
    deps_prefix().join("usr/bin")
}

/// `containerd --version` of the running line's binary, e.g. "containerd
/// github.com/containerd/containerd/v2 2.1.9+unknown" (run once per process). Fails if the
/// binary is missing or reports another line than [`containerd_line`] (a wrong prefix).
pub fn containerd_version() -> Result<String> {
    static VERSION: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| query_version().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Environment)
}

fn query_version() -> Result<String> {
    let bin = containerd_bin()?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(format!("running {} --version", bin.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{} --version", bin.display()),
            status: out.status.to_string(),
            output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    let line = containerd_line();
    match parse_version(&text) {
        Some((1, 7, _)) if line == ContainerdLine::Is17 => Ok(text),
        Some((2, _, _)) if line == ContainerdLine::Is2x => Ok(text),
        _ => Err(Error::Environment(format!(
            "{} reports {text:?}, not containerd {line} (CONRDMA_CONTAINERD={line}); {INSTALL_HINT}",
            bin.display()
        ))),
    }
}

/// (major, minor, patch) of the running containerd, from [`containerd_version`].
pub fn containerd_semver() -> Result<(u32, u32, u32)> {
    let text = containerd_version()?;
    parse_version(&text)
        .ok_or_else(|| Error::Environment(format!("cannot parse containerd version {text:?}")))
}

/// The first word of `containerd --version` output that reads as `[v]MAJOR.MINOR.PATCH...`
/// (Debian appends `~ds1`, `+ds1`, `+unknown`).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split_whitespace().find_map(|w| {
        let w = w.strip_prefix('v').unwrap_or(w);
        let mut nums = w.splitn(3, '.');
        let major = nums.next()?.parse().ok()?;
        let minor = nums.next()?.parse().ok()?;
        let rest = nums.next()?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let patch = rest.get(..end)?.parse().ok()?;
        Some((major, minor, patch))
    })
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

/// Checks everything a containerd instance needs: root, a valid `$CONRDMA_CONTAINERD`, containerd
/// of that line, ctr, the runc shim, runc, busybox for the image. Tests call this (via [`crate::Containerd::start`]) and fail with its
/// message rather than skipping.
pub fn check_environment() -> Result<()> {
    require_root()?;
    try_containerd_line()?;
    containerd_bin()?;
    containerd_version()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        assert_eq!(ContainerdLine::parse("1.7"), Some(ContainerdLine::Is17));
        for s in ["2", "2.x", "2.1", "2.1.9", " 2.2 "] {
            assert_eq!(ContainerdLine::parse(s), Some(ContainerdLine::Is2x), "{s}");
        }
        for s in ["1.6", "3", "21", "2.", "2.y", ""] {
            assert_eq!(ContainerdLine::parse(s), None, "{s}");
        }
    }

    #[test]
    fn parses_debian_versions() {
        assert_eq!(
            parse_version(
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1"
            ),
            Some((1, 7, 24))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd/v2 2.1.9+unknown "),
            Some((2, 1, 9))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd v1.7.0 abc"),
            Some((1, 7, 0))
        );
        assert_eq!(parse_version("nothing here"), None);
    }
}
