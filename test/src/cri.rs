//! A CRI v1 client that calls containerd the way a kubelet does.
//!
//! Every call returns containerd's `tonic::Status` untouched on failure, so tests can assert on
//! the exact message (e.g. an NRI plugin's rejection).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

use crate::error::{Error, Result};

pub use k8s_cri::v1;
pub use spec::{best_effort_resources, ContainerSpec, PodSpec};
use spec::{namespace_options, to_map};

mod spec;

/// A status RPC taking an id and `verbose`, returning containerd's response whole.
macro_rules! status_rpc {
    ($name:ident, $rpc:ident, $req:ident, $resp:ident, $id:ident) => {
        async fn $name(&self, id: &str, verbose: bool) -> Result<api::$resp, Status> {
            let req = api::$req {
                $id: id.into(),
                verbose,
            };
            Ok(self.runtime.clone().$rpc(req).await?.into_inner())
        }
    };
}

/// An RPC that takes one id and answers nothing the tests read.
macro_rules! id_rpc {
    ($(#[$doc:meta])* $name:ident, $rpc:ident, $req:ident, $id:ident) => {
        $(#[$doc])*
        pub async fn $name(&self, id: &str) -> Result<(), Status> {
            let req = api::$req { $id: id.into() };
            self.runtime.clone().$rpc(req).await.map(drop)
        }
    };
}

/// Pod sandbox configs by sandbox id, shared by every [`Cri`] of one containerd instance (and
/// kept across restarts), because CreateContainer carries the sandbox config, as from kubelet.
pub(crate) type PodConfigs = Arc<Mutex<HashMap<String, api::PodSandboxConfig>>>;

/// A Channel to a gRPC server on a unix socket (created lazily: the first call connects).
pub fn unix_channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::1]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        })),
    )
}

/// A CRI v1 client (runtime and image services) for one containerd. Cheap to clone.
#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pods: PodConfigs,
    log_root: PathBuf,
    default_image: String,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri")
            .field("log_root", &self.log_root)
            .finish_non_exhaustive()
    }
}

impl Cri {
    /// A client on `socket`. Must be called inside a tokio runtime; the connection is made by the
    /// first call. `log_root` is where pod log directories go.
    pub fn connect(
        socket: &Path,
        log_root: &Path,
        default_image: &str,
        pods: PodConfigs,
    ) -> Result<Self> {
        let ch = unix_channel(socket)?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(ch.clone()),
            images: ImageServiceClient::new(ch),
            pods,
            log_root: log_root.to_path_buf(),
            default_image: default_image.to_string(),
        })
    }

    /// The raw generated runtime-service client, for calls not wrapped here.
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// The raw generated image-service client.
    pub fn image_client(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    /// The image the instance imported (also its sandbox image).
    pub fn default_image(&self) -> &str {
        &self.default_image
    }

    pub async fn version(&self) -> Result<api::VersionResponse, Status> {
        let r = self
            .runtime
            .clone()
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await?;
        Ok(r.into_inner())
    }

    /// CRI Status (runtime and network conditions), verbose.
    pub async fn status(&self) -> Result<api::StatusResponse, Status> {
        let r = self
            .runtime
            .clone()
            .status(api::StatusRequest { verbose: true })
            .await?;
        Ok(r.into_inner())
    }

    /// The image's status, or None if containerd's CRI does not know it.
    pub async fn image_status(&self, image: &str) -> Result<Option<api::Image>, Status> {
        let r = self
            .images
            .clone()
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?;
        Ok(r.into_inner().image)
    }

    /// The sandbox config kubelet would send for `spec`.
    pub fn pod_sandbox_config(&self, spec: &PodSpec) -> api::PodSandboxConfig {
        let log_dir = self
            .log_root
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: spec.attempt,
            }),
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: spec.cgroup_parent.clone(),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(spec.own_netns)),
                    ..Default::default()
                }),
                resources: spec.resources.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox for a host-network pod; returns the sandbox id.
    pub async fn run_pod(
        &self,
        name: &str,
        namespace: &str,
        uid: &str,
        annotations: &[(&str, &str)],
    ) -> Result<String, Status> {
        let mut spec = PodSpec::new(name, namespace, uid);
        spec.annotations = to_map(annotations);
        self.run_pod_spec(&spec).await
    }

    /// RunPodSandbox from a full [`PodSpec`]; returns the sandbox id.
    pub async fn run_pod_spec(&self, spec: &PodSpec) -> Result<String, Status> {
        let config = self.pod_sandbox_config(spec);
        // kubelet creates the pod log directory before RunPodSandbox.
        std::fs::create_dir_all(&config.log_directory)
            .map_err(|e| Status::internal(format!("conrdma-e2e: creating pod log dir: {e}")))?;
        let r = self
            .runtime
            .clone()
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: spec.runtime_handler.clone(),
            })
            .await?;
        let id = r.into_inner().pod_sandbox_id;
        self.remember_pod(&id, config);
        Ok(id)
    }

    fn remember_pod(&self, id: &str, config: api::PodSandboxConfig) {
        if let Ok(mut m) = self.pods.lock() {
            m.insert(id.to_string(), config);
        }
    }

    /// The sandbox config the pod was created with (None for pods not created through here).
    pub fn pod_config(&self, pod_id: &str) -> Option<api::PodSandboxConfig> {
        self.pods.lock().ok().and_then(|m| m.get(pod_id).cloned())
    }

    /// The container config kubelet would send for `spec` in a pod whose network namespace is
    /// its own (`own_netns`) or the host's.
    pub fn container_config(&self, spec: &ContainerSpec, own_netns: bool) -> api::ContainerConfig {
        let image = if spec.image.is_empty() {
            self.default_image.clone()
        } else {
            spec.image.clone()
        };
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.clone(),
                attempt: spec.attempt,
            }),
            image: Some(api::ImageSpec {
                image: image.clone(),
                user_specified_image: image,
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            working_dir: spec.working_dir.clone(),
            envs: spec
                .env
                .iter()
                .map(|(k, v)| api::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts: spec.mounts.clone(),
            devices: spec.devices.clone(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            log_path: format!("{}/{}.log", spec.name, spec.attempt),
            linux: Some(api::LinuxContainerConfig {
                resources: Some(spec.resources.clone().unwrap_or_else(best_effort_resources)),
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespace_options(own_netns)),
                    privileged: spec.privileged,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// CreateContainer in `pod_id` (with the pod's sandbox config, as kubelet sends it).
    /// An empty `image` means the instance's default image.
    pub async fn create_container(
        &self,
        pod_id: &str,
        name: &str,
        image: &str,
        command: &[&str],
        annotations: &[(&str, &str)],
    ) -> Result<String, Status> {
        let mut spec = ContainerSpec::new(name, image, command);
        spec.annotations = to_map(annotations);
        self.create_container_spec(pod_id, &spec).await
    }

    /// CreateContainer from a full [`ContainerSpec`].
    pub async fn create_container_spec(
        &self,
        pod_id: &str,
        spec: &ContainerSpec,
    ) -> Result<String, Status> {
        let sandbox_config = self.pod_config(pod_id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "conrdma-e2e: pod {pod_id} was not created through this harness (no sandbox config)"
            ))
        })?;
        let own_netns = sandbox_config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|c| c.namespace_options.as_ref())
            .is_some_and(|n| n.network == api::NamespaceMode::Pod as i32);
        let config = self.container_config(spec, own_netns);
        self.create_container_raw(api::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await
    }

    /// CreateContainer with a request the test built itself.
    pub async fn create_container_raw(
        &self,
        req: api::CreateContainerRequest,
    ) -> Result<String, Status> {
        let r = self.runtime.clone().create_container(req).await?;
        Ok(r.into_inner().container_id)
    }

    id_rpc! { start_container, start_container, StartContainerRequest, container_id }

    /// CreateContainer + StartContainer; returns the container id.
    pub async fn run_container(
        &self,
        pod_id: &str,
        name: &str,
        image: &str,
        command: &[&str],
        annotations: &[(&str, &str)],
    ) -> Result<String, Status> {
        let id = self
            .create_container(pod_id, name, image, command, annotations)
            .await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    /// RunPodSandbox from `spec` plus a long-running container `main` (default image); a pod
    /// whose container is refused is removed again, as kubelet does once the pod is deleted.
    /// Returns (pod id, container id).
    pub async fn run_pod_with_sleeper(&self, spec: &PodSpec) -> Result<(String, String), Status> {
        let pod = self.run_pod_spec(spec).await?;
        match self
            .run_container(&pod, "main", "", &["sleep", "3600"], &[])
            .await
        {
            Ok(c) => Ok((pod, c)),
            Err(e) => {
                // The refusal is what the caller wants to see; a failing cleanup says so too.
                if let Err(rm) = self.stop_and_remove_pod(&pod).await {
                    return Err(Status::internal(format!(
                        "{} (and removing pod {pod} failed: {})",
                        e.message(),
                        rm.message()
                    )));
                }
                Err(e)
            }
        }
    }

    /// StopContainer with a grace period in seconds (0 = SIGKILL at once).
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), Status> {
        self.runtime
            .clone()
            .stop_container(api::StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_secs,
            })
            .await?;
        Ok(())
    }

    id_rpc! { remove_container, remove_container, RemoveContainerRequest, container_id }

    /// UpdateContainerResources (what kubelet sends on a pod resize).
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: api::LinuxContainerResources,
        annotations: &[(&str, &str)],
    ) -> Result<(), Status> {
        self.runtime
            .clone()
            .update_container_resources(api::UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                windows: None,
                annotations: to_map(annotations),
            })
            .await?;
        Ok(())
    }

    /// ExecSync: runs `cmd` in the container; returns (exit code, stdout, stderr).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<(i32, String, String), Status> {
        let mut req = tonic::Request::new(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        });
        req.set_timeout(timeout + Duration::from_secs(10));
        let r = self.runtime.clone().exec_sync(req).await?.into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Status> {
        self.container_status_raw(id, false)
            .await?
            .status
            .ok_or_else(|| Status::internal("conrdma-e2e: ContainerStatus without status"))
    }

    /// ContainerStatus verbose: the JSON of `info["info"]`, which holds `runtimeSpec` (the final
    /// OCI spec, what `crictl inspect` shows), `pid`, `sandboxID`, `runtimeType`, `config`, ...
    pub async fn container_status_verbose(&self, id: &str) -> Result<serde_json::Value, Status> {
        info_json(&self.container_status_raw(id, true).await?.info)
    }

    pub async fn pod_status(&self, pod_id: &str) -> Result<api::PodSandboxStatus, Status> {
        self.pod_status_raw(pod_id, false)
            .await?
            .status
            .ok_or_else(|| Status::internal("conrdma-e2e: PodSandboxStatus without status"))
    }

    /// PodSandboxStatus verbose: the JSON of `info["info"]` (with the sandbox's `runtimeSpec`).
    pub async fn pod_status_verbose(&self, pod_id: &str) -> Result<serde_json::Value, Status> {
        info_json(&self.pod_status_raw(pod_id, true).await?.info)
    }

    status_rpc!(
        container_status_raw,
        container_status,
        ContainerStatusRequest,
        ContainerStatusResponse,
        container_id
    );
    status_rpc!(
        pod_status_raw,
        pod_sandbox_status,
        PodSandboxStatusRequest,
        PodSandboxStatusResponse,
        pod_sandbox_id
    );

    id_rpc! { stop_pod, stop_pod_sandbox, StopPodSandboxRequest, pod_sandbox_id }
    id_rpc! {
        /// RemovePodSandbox (force-removes the pod's containers, as in CRI).
        remove_pod_sandbox, remove_pod_sandbox, RemovePodSandboxRequest, pod_sandbox_id
    }

    /// [`Cri::remove_pod_sandbox`], forgetting the pod's config.
    pub async fn remove_pod(&self, pod_id: &str) -> Result<(), Status> {
        self.remove_pod_sandbox(pod_id).await?;
        if let Ok(mut m) = self.pods.lock() {
            m.remove(pod_id);
        }
        Ok(())
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub async fn stop_and_remove_pod(&self, pod_id: &str) -> Result<(), Status> {
        self.stop_pod(pod_id).await?;
        self.remove_pod(pod_id).await
    }

    pub async fn list_pods(&self) -> Result<Vec<api::PodSandbox>, Status> {
        let r = self
            .runtime
            .clone()
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await?;
        Ok(r.into_inner().items)
    }

    pub async fn list_containers(&self) -> Result<Vec<api::Container>, Status> {
        let r = self
            .runtime
            .clone()
            .list_containers(api::ListContainersRequest { filter: None })
            .await?;
        Ok(r.into_inner().containers)
    }

    /// Stops and removes every pod and leftover container (what Drop of the instance does).
    pub async fn remove_everything(&self) -> Result<()> {
        let pods = self
            .list_pods()
            .await
            .map_err(|s| Error::cri("ListPodSandbox", s))?;
        let mut first_err = None;
        for p in pods {
            if let Err(s) = self.stop_and_remove_pod(&p.id).await {
                tracing::warn!(pod = %p.id, status = %s, "cleanup: removing pod failed");
                first_err.get_or_insert(Error::cri("Stop/RemovePodSandbox", s));
            }
        }
        let containers = self
            .list_containers()
            .await
            .map_err(|s| Error::cri("ListContainers", s))?;
        for c in containers {
            let r = match self.stop_container(&c.id, 0).await {
                Ok(()) => self.remove_container(&c.id).await,
                Err(s) => Err(s),
            };
            if let Err(s) = r {
                tracing::warn!(container = %c.id, status = %s, "cleanup: removing container failed");
                first_err.get_or_insert(Error::cri("Stop/RemoveContainer", s));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn info_json(info: &HashMap<String, String>) -> Result<serde_json::Value, Status> {
    let raw = info.get("info").ok_or_else(|| {
        Status::internal(format!(
            "conrdma-e2e: verbose status has no \"info\" entry (keys: {:?})",
            info.keys().collect::<Vec<_>>()
        ))
    })?;
    serde_json::from_str(raw)
        .map_err(|e| Status::internal(format!("conrdma-e2e: verbose info is not JSON: {e}")))
}
