//! The proxy: serves `containerd.task.v2.Task` and forwards every call to the runc shim child
//! verbatim (payload, metadata, timeout), except that
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

use conrdma_core::limiter::RateLimiter;
use conrdma_core::report::PodId;
use conrdma_core::AllocationRecord;
use containerd_shim_protos::api::{ConnectResponse, CreateTaskRequest, DeleteRequest};
use protobuf::{Message, MessageField};
use tracing::{debug, error, info, info_span, warn};
use ttrpc::proto::ResponseInit;
use ttrpc::{Code, MethodHandler, Request, Response, TtrpcContext};

use crate::error::{Result, ShimError};
use crate::options;
use crate::pod::{decide, wanted_rate, Decision, RateState};
use crate::report::{Reporter, Target};
use crate::settings::Settings;
use crate::spec::Spec;

pub const SERVICE: &str = "containerd.task.v2.Task";
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
        settings: Settings,
        limiter: Arc<dyn RateLimiter>,
    ) -> Proxy {
        Proxy {
            upstream,
            settings,
            limiter,
            state: Mutex::new(PodState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ttrpc method table, keyed `/containerd.task.v2.Task/<Method>`.
    pub fn methods(self: &Arc<Self>) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
        METHODS
            .iter()
            .map(|m| {
                let h: Box<dyn MethodHandler + Send + Sync> = Box::new(Handler {
                    method: m,
                    proxy: self.clone(),
                });
                (format!("/{SERVICE}/{m}"), h)
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

    fn forward(&self, method: &str, req: Request) -> Response {
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
        let rate = wanted_rate(&rec);
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
            spool_dir: reports.map(|r| r.spool_dir.clone()),
            node: reports.map(|r| r.node.clone()),
            webhook_url: reports.map(|r| r.url.clone()),
            credential_file: reports.and_then(|r| r.credential_file.clone()),
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
            r.stop();
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
    match RateState::load(bundle) {
        Ok(Some(mut s)) => {
            s.reset = true;
            if let Err(e) = s.save(bundle) {
                warn!(error = %e, "cannot record the reset");
            }
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "cannot read the rate state"),
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
