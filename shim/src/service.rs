//! The proxy: serves the task API under both of its service names, `containerd.task.v2.Task`
//! (what containerd 1.7 and, through its v2 client, 2.0-2.2 call) and `containerd.task.v3.Task`
//! (2.3's bootstrap reply says version 3), and forwards every call to the runc shim child under
//! the one name that child serves (v2 for 1.7's runc shim, v3 for 2.x's). The messages of the two
//! versions are the same, so payload, metadata and timeout pass verbatim, except that
//! - Create: the runtime options are translated for runc, and the container is checked against
//!   the pod's request: a container bringing an allocation gets the pod's VF rate set first
//!   (once per pod); one that should have brought one and did not is refused (fail closed);
//! - Delete of the pod's owning init task (the sandbox under CRI) resets the VF and sends the
//!   final usage report;
//! - Connect names the proxy as the shim.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use conrdma_api::report::PodId;
use conrdma_api::AllocationRecord;
use conrdma_node::limiter::RateLimiter;
use containerd_shim_protos::api::{ConnectResponse, CreateTaskRequest, DeleteRequest};
use protobuf::{Message, MessageField};
use tracing::{debug, error, info, info_span, warn};
use ttrpc::proto::ResponseInit;
use ttrpc::{Code, MethodHandler, Request, Response, TtrpcContext};

use crate::error::{Result, ShimError};
use crate::options;
use crate::pod::{decide, Decision, RateState};
use crate::report::{Reporter, Target};
use crate::settings::Settings;
use crate::spec::Spec;

pub const SERVICE_V2: &str = "containerd.task.v2.Task";
pub const SERVICE_V3: &str = "containerd.task.v3.Task";
/// Both names the proxy answers to.
pub const SERVICES: [&str; 2] = [SERVICE_V2, SERVICE_V3];
pub const METHODS: [&str; 17] = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
];

/// Where the call goes: the runc shim child (a ttrpc client in production, a fake in tests).
pub trait Upstream: Send + Sync {
    fn call(&self, req: Request) -> ttrpc::Result<Response>;
}

impl Upstream for ttrpc::Client {
    fn call(&self, req: Request) -> ttrpc::Result<Response> {
        self.request(req)
    }
}

#[derive(Debug, Clone)]
struct Sandbox {
    id: String,
    bundle: PathBuf,
    annotations: HashMap<String, String>,
    pod: Option<PodId>,
}

#[derive(Debug, Clone)]
struct Active {
    owner_id: String,
    owner_bundle: PathBuf,
    record: AllocationRecord,
}

#[derive(Default)]
struct PodState {
    sandbox: Option<Sandbox>,
    active: Option<Active>,
    reporter: Option<Reporter>,
    finishing: Vec<Reporter>,
}

pub struct Proxy {
    upstream: Box<dyn Upstream>,
    /// The task service name the child serves; every forwarded call is re-addressed to it.
    child_service: String,
    settings: Settings,
    limiter: Arc<dyn RateLimiter>,
    state: Mutex<PodState>,
}

fn status_response(code: Code, msg: String) -> Response {
    Response::init_status(ttrpc::get_status(code, msg))
}

impl Proxy {
    pub fn new(
        upstream: Box<dyn Upstream>,
        child_service: &str,
        settings: Settings,
        limiter: Arc<dyn RateLimiter>,
    ) -> Proxy {
        Proxy {
            upstream,
            child_service: child_service.to_string(),
            settings,
            limiter,
            state: Mutex::new(PodState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ttrpc method table, keyed `/<service>/<Method>` for both service names.
    pub fn methods(self: &Arc<Self>) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
        SERVICES
            .iter()
            .flat_map(|svc| METHODS.iter().map(move |m| (svc, m)))
            .map(|(svc, m)| {
                let h: Box<dyn MethodHandler + Send + Sync> = Box::new(Handler {
                    method: m,
                    proxy: self.clone(),
                });
                (format!("/{svc}/{m}"), h)
            })
            .collect()
    }

    /// Handles one call; never fails (errors become a status).
    pub fn handle(&self, method: &str, req: Request) -> Response {
        match method {
            "Create" => self.create(req),
            "Delete" => self.delete(req),
            "Connect" => self.connect(req),
            _ => self.forward(method, req),
        }
    }

    fn forward(&self, method: &str, mut req: Request) -> Response {
        if req.service != self.child_service {
            req.service.clone_from(&self.child_service);
        }
        match self.upstream.call(req) {
            Ok(res) => res,
            Err(ttrpc::Error::RpcStatus(s)) => Response::init_status(s),
            Err(e) => {
                let err = ShimError::Child(format!("forwarding {method}: {e}"));
                warn!(method, error = %err, "runc shim call failed");
                Response::init_status(err.status())
            }
        }
    }

    fn create(&self, mut req: Request) -> Response {
        let mut msg = match CreateTaskRequest::parse_from_bytes(&req.payload) {
            Ok(m) => m,
            Err(e) => {
                return status_response(
                    Code::INVALID_ARGUMENT,
                    format!("conrdma: bad CreateTaskRequest: {e}"),
                )
            }
        };
        let span = info_span!("create", container_id = %msg.id);
        let _g = span.enter();
        if let Err(e) = self.before_create(&mut msg) {
            warn!(error = %e, "create refused");
            return Response::init_status(e.status());
        }
        match msg.write_to_bytes() {
            Ok(b) => req.payload = b,
            Err(e) => {
                return status_response(
                    Code::INTERNAL,
                    format!("conrdma: re-encoding CreateTaskRequest: {e}"),
                )
            }
        }
        self.forward("Create", req)
    }

    fn before_create(&self, msg: &mut CreateTaskRequest) -> Result<()> {
        msg.options =
            MessageField::from_option(options::for_runc(msg.options.as_ref(), &self.settings)?);
        let bundle = PathBuf::from(&msg.bundle);
        let spec = Spec::read(&bundle)?;
        let mut st = self.lock();
        if spec.is_sandbox() {
            st.sandbox = Some(Sandbox {
                id: msg.id.clone(),
                bundle: bundle.clone(),
                annotations: spec.annotations.clone(),
                pod: spec.pod(),
            });
        }
        let pod_annotations = if spec.is_sandbox() {
            Some(spec.annotations.clone())
        } else if let Some(sid) = spec.sandbox_id() {
            match &st.sandbox {
                Some(sb) if sb.id == sid => Some(sb.annotations.clone()),
                // Not seen by this proxy (it serves another group): read the sandbox's spec.
                _ => Some(Spec::read(&sibling(&bundle, sid))?.annotations),
            }
        } else {
            None
        };
        match decide(&spec, pod_annotations.as_ref()) {
            Decision::PassThrough => Ok(()),
            Decision::Refuse(e) => Err(e),
            Decision::Apply(rec) => self.apply(&mut st, &msg.id, &bundle, &spec, rec),
        }
    }

    fn apply(
        &self,
        st: &mut PodState,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        rec: AllocationRecord,
    ) -> Result<()> {
        if let Some(a) = &st.active {
            if a.record.pf == rec.pf && a.record.vf == rec.vf {
                debug!(pf = %rec.pf, vf = rec.vf, "pod's VF rate already set");
                return Ok(());
            }
            return Err(ShimError::Refused(format!(
                "container {id} carries an allocation of {} VF {}, but its pod already holds {} VF {}",
                rec.pf, rec.vf, a.record.pf, a.record.vf
            )));
        }
        let (owner_id, owner_bundle, pod) = match (spec.sandbox_id(), &st.sandbox) {
            (Some(sid), Some(sb)) if sb.id == sid => {
                (sb.id.clone(), sb.bundle.clone(), sb.pod.clone())
            }
            (Some(sid), _) => (sid.to_string(), sibling(bundle, sid), spec.pod()),
            (None, _) => (id.to_string(), bundle.to_path_buf(), spec.pod()),
        };
        let rate = rec.start_rate();
        let applied = self.limiter.set(&rec.pf, rec.vf, rate).map_err(|e| {
            ShimError::Refused(format!(
                "cannot hold container {id} to its allocation, so it is not started: {e}"
            ))
        })?;
        if applied.min_enforced {
            info!(pf = %rec.pf, vf = rec.vf, min_mbps = applied.applied.min_mbps,
                  max_mbps = applied.applied.max_mbps, limiter = self.limiter.kind(), "VF rate set");
        } else {
            warn!(pf = %rec.pf, vf = rec.vf, max_mbps = applied.applied.max_mbps,
                  guaranteed_mbps = rec.guaranteed_mbps, note = applied.note.as_deref().unwrap_or(""),
                  "VF rate set without its minimum: the guarantee is not enforced in hardware");
        }
        let reports = self.settings.reports.as_ref();
        let state = RateState {
            owner_id: owner_id.clone(),
            pod: pod.clone(),
            allocation: rec.clone(),
            limiter: self.settings.limiter.clone(),
            applied,
            reset: false,
            reports: reports.cloned(),
            last_sample: None,
            final_spooled: false,
        };
        if let Err(e) = state.save(&owner_bundle) {
            error!(error = %e, "cannot record the VF rate; a crash now would leave it set until the pod's VF is reused");
        }
        if let (Some(cfg), Some(pod)) = (reports, pod) {
            match Reporter::spawn(
                cfg.clone(),
                Target {
                    pod,
                    allocation: rec.clone(),
                    state_bundle: owner_bundle.clone(),
                },
                self.limiter.clone(),
            ) {
                Ok(r) => st.reporter = Some(r),
                Err(e) => error!(error = %e, "cannot start the usage reporter"),
            }
        }
        st.active = Some(Active {
            owner_id,
            owner_bundle,
            record: rec,
        });
        Ok(())
    }

    fn delete(&self, req: Request) -> Response {
        let msg = DeleteRequest::parse_from_bytes(&req.payload).ok();
        let res = self.forward("Delete", req);
        let ok = res.status.as_ref().is_none_or(|s| s.code() == Code::OK);
        if let (true, Some(m)) = (ok, msg) {
            if m.exec_id.is_empty() {
                self.end_of(&m.id);
            }
        }
        res
    }

    /// The init task `id` is gone: if it owns the pod's VF rate, reset it and finish reporting.
    fn end_of(&self, id: &str) {
        let mut st = self.lock();
        let Some(active) = st.active.clone() else {
            return;
        };
        if active.owner_id != id {
            return;
        }
        let span = info_span!("delete", container_id = %id);
        let _g = span.enter();
        let rec = &active.record;
        match self.limiter.reset(&rec.pf, rec.vf) {
            Ok(()) => {
                info!(pf = %rec.pf, vf = rec.vf, "VF rate reset: the pod is gone");
                mark_reset(&active.owner_bundle);
            }
            // The `delete` command retries from the state file.
            Err(e) => error!(pf = %rec.pf, vf = rec.vf, error = %e, "VF rate reset failed"),
        }
        if let Some(r) = st.reporter.take() {
            // Spooled before Delete returns, so the `delete` command that follows sees it done.
            r.stop(Duration::from_secs(2));
            st.finishing.push(r);
        }
        st.active = None;
    }

    fn connect(&self, req: Request) -> Response {
        let mut res = self.forward("Connect", req);
        if res.status.as_ref().is_none_or(|s| s.code() == Code::OK) {
            if let Ok(mut c) = ConnectResponse::parse_from_bytes(&res.payload) {
                c.shim_pid = std::process::id();
                if let Ok(b) = c.write_to_bytes() {
                    res.payload = b;
                }
            }
        }
        res
    }

    /// At exit: lets reporters deliver what they can within `wait`.
    pub fn finish(&self, wait: Duration) {
        let (mut all, live) = {
            let mut st = self.lock();
            (std::mem::take(&mut st.finishing), st.reporter.take())
        };
        if let Some(r) = live {
            // The child is gone without the pod's Delete (a crash): no final report here, the
            // `delete` command sends it; stop sampling.
            r.abandon();
        }
        for r in all.drain(..) {
            r.join(wait);
        }
    }
}

/// `<bundle>/../<id>`: a sibling task's bundle (containerd keeps them in one directory per
/// namespace).
fn sibling(bundle: &Path, id: &str) -> PathBuf {
    bundle.parent().unwrap_or(bundle).join(id)
}

fn mark_reset(bundle: &Path) {
    if let Err(e) = RateState::update(bundle, |s| s.reset = true) {
        warn!(error = %e, "cannot record the reset");
    }
}

struct Handler {
    method: &'static str,
    proxy: Arc<Proxy>,
}

impl MethodHandler for Handler {
    fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<()> {
        let res = self.proxy.handle(self.method, req);
        ctx.respond(ctx.mh.stream_id, res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{container, ok, record, request, sandbox, World};
    use conrdma_node::limiter::{SimulatedLimiter, VfRate};
    use containerd_shim_protos::api::ConnectRequest;
    use protobuf::well_known_types::any::Any;

    fn world() -> World {
        World::new("")
    }

    fn alloc(vf: u32) -> String {
        record(vf).to_json()
    }

    fn our_options() -> Any {
        let mut any = Any::new();
        any.type_url = options::RUNTIMEOPTIONS_TYPE.into();
        any.value = options::RuntimeOptions {
            config_body: "limiter = \"netlink\"".into(),
            ..Default::default()
        }
        .encode();
        any
    }

    #[test]
    fn pod_lifecycle_through_the_proxy() {
        let w = world();
        let sim = SimulatedLimiter::new(&w.nic);
        let sb = w.bundle("sb", sandbox());
        assert!(ok(&w.create("sb", sb.clone(), Some(our_options()))));
        // The runtimeoptions Any never reaches runc (no runc keys in the table: dropped).
        let (_, payload) = w.fake.calls.lock().unwrap()[0].clone();
        let fwd = CreateTaskRequest::parse_from_bytes(&payload).unwrap();
        assert!(fwd.options.is_none(), "{:?}", fwd.options);

        // A container without its allocation is refused before runc sees it.
        let b = w.bundle("c0", container("main", None));
        let r = w.create("c0", b, None);
        let st = r.status.as_ref().unwrap();
        assert_eq!(st.code(), Code::FAILED_PRECONDITION);
        assert!(
            st.message
                .contains("arrived without rdma.conrdma.io/allocation"),
            "{}",
            st.message
        );
        assert_eq!(w.fake.calls.lock().unwrap().len(), 1);

        let b = w.bundle("c1", container("main", Some(alloc(1))));
        assert!(ok(&w.create("c1", b, None)));
        assert_eq!(sim.get("ens1f0", 1).unwrap(), VfRate::new(1_000, 4_000));
        let state = RateState::load(Path::new(&sb))
            .unwrap()
            .expect("state in the sandbox bundle");
        assert_eq!(state.owner_id, "sb");
        assert!(state.applied.min_enforced && !state.reset);
        // A second container of the pod: nothing new; a different VF: refused.
        let b = w.bundle("c2", container("side", Some(alloc(1))));
        assert!(ok(&w.create("c2", b, None)));
        let b = w.bundle("c3", container("odd", Some(alloc(0))));
        assert!(!ok(&w.create("c3", b, None)));

        // Exec and container deletes keep the rate; the sandbox's init Delete resets it.
        let del = |id: &str, exec: &str| {
            let mut d = DeleteRequest::new();
            d.id = id.into();
            d.exec_id = exec.into();
            w.proxy.handle("Delete", request("Delete", &d))
        };
        assert!(ok(&del("sb", "exec-1")));
        assert!(ok(&del("c1", "")));
        assert_eq!(sim.get("ens1f0", 1).unwrap(), VfRate::new(1_000, 4_000));
        assert!(ok(&del("sb", "")));
        assert_eq!(sim.get("ens1f0", 1).unwrap(), VfRate::NONE);
        assert!(RateState::load(Path::new(&sb)).unwrap().unwrap().reset);

        // Connect names the proxy as the shim, keeps the task pid.
        let r = w
            .proxy
            .handle("Connect", request("Connect", &ConnectRequest::new()));
        let c = ConnectResponse::parse_from_bytes(&r.payload).unwrap();
        assert_eq!((c.shim_pid, c.task_pid), (std::process::id(), 42));
        // Everything else passes through untouched.
        let n = w.fake.calls.lock().unwrap().len();
        let r = w
            .proxy
            .handle("Pids", request("Pids", &ConnectRequest::new()));
        assert!(ok(&r));
        assert_eq!(w.fake.calls.lock().unwrap().len(), n + 1);
        // Calls came in under the v2 name and went to the child under the one it serves.
        let services = w.fake.services.lock().unwrap().clone();
        assert!(services.iter().all(|s| s == SERVICE_V3), "{services:?}");
        w.proxy.finish(Duration::from_millis(10));
    }

    #[test]
    fn both_task_service_names_are_served() {
        let w = world();
        let proxy = Arc::new(w.proxy);
        let table = proxy.methods();
        assert_eq!(table.len(), 2 * METHODS.len());
        for svc in SERVICES {
            for m in METHODS {
                assert!(table.contains_key(&format!("/{svc}/{m}")), "/{svc}/{m}");
            }
        }
    }

    #[test]
    fn refused_minimum_keeps_the_maximum_and_is_recorded() {
        let w = world();
        let sim = SimulatedLimiter::new(&w.nic);
        std::fs::remove_file(sim.vf_dir("ens1f0", 0).join("min_tx_rate")).unwrap();
        // Not a CRI pod: the container itself stands for the pod and owns the rate.
        let b = w.bundle(
            "solo",
            serde_json::json!({
                "rdma.conrdma.io/bandwidth": "1G",
                "rdma.conrdma.io/allocation": alloc(0),
            }),
        );
        assert!(ok(&w.create("solo", b.clone(), None)));
        assert_eq!(sim.get("ens1f0", 0).unwrap(), VfRate::new(0, 4_000));
        let st = RateState::load(Path::new(&b)).unwrap().unwrap();
        assert_eq!(st.owner_id, "solo");
        assert!(!st.applied.min_enforced);
        assert!(st
            .applied
            .note
            .unwrap()
            .contains("not enforced in hardware"));
    }

    #[test]
    fn limiter_failure_fails_the_create() {
        let w = world();
        let b = w.bundle(
            "bad",
            serde_json::json!({ "rdma.conrdma.io/allocation": alloc(9) }),
        );
        let r = w.create("bad", b, None);
        let st = r.status.unwrap();
        assert_eq!(st.code(), Code::FAILED_PRECONDITION);
        assert!(
            st.message.contains("PF ens1f0 has no VF 9"),
            "{}",
            st.message
        );
        assert!(w.fake.calls.lock().unwrap().is_empty());
    }
}
