//! What an isolated containerd instance is told: its options (runtime handlers, NRI, CNI), the
//! directory layout under its temp dir, and the config file rendered for the 1.7 (version 2) or
//! 2.x (version 3) schema.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::deps;
use crate::error::{Error, Result};

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
    pub(super) fn new(dir: &Path) -> Self {
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

pub(super) fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
}

pub(super) fn prepare_dirs(paths: &Paths, opts: &ContainerdOptions) -> Result<()> {
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
pub(super) fn write_cni(paths: &Paths, cni: &CniBridge) -> Result<()> {
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

pub(super) fn path_str(p: &Path) -> String {
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
pub(super) fn runtime_tables(paths: &Paths, opts: &ContainerdOptions) -> Result<toml::Table> {
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
pub(super) fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
