//! Per-pod decisions: whether a container may be created, and which VF rate it brings.
//!
//! The pod's request comes from the *sandbox's* annotations (pod annotations that containerd's
//! `pod_annotations` let through); the allocation from the *container's* annotation written by
//! the NRI plugin. Reading the request from the sandbox means a pod cannot forge an allocation
//! through its own annotations: `rdma.conrdma.io/allocation` on the pod is refused like any
//! other invalid request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use conrdma_api::report::PodId;
use conrdma_api::request::{KEY_ALLOCATION, KEY_BANDWIDTH, KEY_LIMIT};
use conrdma_api::{AllocationRecord, Request, ANNOTATION_PREFIX};
use conrdma_node::limiter::{Applied, LimiterSpec, VfCounters};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};
use crate::settings::ReportSettings;
use crate::spec::Spec;

/// What to do with a container at Create.
#[derive(Debug)]
pub enum Decision {
    /// Not ours (no request, or a container the request does not name).
    PassThrough,
    /// Hold the pod's VF to this allocation before the container is created.
    Apply(AllocationRecord),
    /// Fail closed.
    Refuse(ShimError),
}

/// Only the keys under our prefix.
pub fn ours(annotations: &HashMap<String, String>) -> HashMap<String, String> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Decides for one container. `pod_annotations` are the sandbox's (None when the container is not
/// part of a CRI pod we know: then its own annotations, minus the allocation, stand for the pod).
pub fn decide(container: &Spec, pod_annotations: Option<&HashMap<String, String>>) -> Decision {
    let pod = match pod_annotations {
        Some(a) => ours(a),
        None => {
            let mut a = ours(&container.annotations);
            a.remove(KEY_ALLOCATION);
            a
        }
    };
    let request = match Request::from_annotations(&pod) {
        Ok(r) => r,
        Err(e) => {
            return Decision::Refuse(ShimError::Invalid(format!(
                "the pod's RDMA request is invalid: {e}"
            )))
        }
    };
    if let Some(text) = container.annotations.get(KEY_ALLOCATION) {
        return match AllocationRecord::from_json(text) {
            Ok(rec) => Decision::Apply(rec),
            Err(e) => Decision::Refuse(ShimError::Invalid(e.to_string())),
        };
    }
    let Some(request) = request else {
        return Decision::PassThrough;
    };
    if container.is_sandbox() {
        // Sandboxes never carry the allocation (NRI adjusts containers only).
        return Decision::PassThrough;
    }
    let name = container.container_name().unwrap_or("");
    if !request.applies_to(name) {
        return Decision::PassThrough;
    }
    let asked: Vec<String> = [KEY_BANDWIDTH, KEY_LIMIT]
        .iter()
        .filter_map(|k| pod.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    let asked = if asked.is_empty() {
        "an RDMA VF".to_string()
    } else {
        asked.join(", ")
    };
    Decision::Refuse(ShimError::Refused(format!(
        "container {name:?} of a pod that asks for {asked} arrived without {KEY_ALLOCATION}: the ConRDMA NRI plugin did not handle it (not running, or timed out); refusing to run it without its VF rate limit. Start the plugin and retry"
    )))
}

/// A counter sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub unix_ms: u64,
    pub counters: VfCounters,
}

/// What the proxy records in the owning bundle once it has set a pod's VF rate, so that the
/// `delete` command (which runs after a crash, with nothing else to go on) can reset it and send
/// the final report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateState {
    /// The container whose init-task Delete ends the pod (the sandbox under CRI).
    pub owner_id: String,
    pub pod: Option<PodId>,
    pub allocation: AllocationRecord,
    pub limiter: LimiterSpec,
    pub applied: Applied,
    /// True once the VF has been reset.
    #[serde(default)]
    pub reset: bool,
    /// The shim's report settings, whole (None: no reports). A missing Option reads as None.
    pub reports: Option<ReportSettings>,
    /// The last counter sample reported; the final report covers from here.
    pub last_sample: Option<Sample>,
    /// True once the final report has been spooled.
    #[serde(default)]
    pub final_spooled: bool,
}

pub const STATE_FILE: &str = "conrdma-shim.json";

/// The reporting fields of records written before `reports` (an upgrade while the pod runs).
#[derive(Deserialize)]
struct LegacyReports {
    webhook_url: Option<String>,
    node: Option<String>,
    spool_dir: Option<PathBuf>,
    credential_file: Option<PathBuf>,
}

impl LegacyReports {
    fn settings(self) -> Option<ReportSettings> {
        let mut r = ReportSettings::new(self.webhook_url?, self.node?);
        r.spool_dir = self.spool_dir?;
        r.credential_file = self.credential_file;
        Some(r)
    }
}

impl RateState {
    pub fn path(bundle: &Path) -> PathBuf {
        bundle.join(STATE_FILE)
    }

    /// Reads the state in `bundle`; Ok(None) when there is none.
    pub fn load(bundle: &Path) -> Result<Option<RateState>> {
        let path = Self::path(bundle);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ShimError::io(format!("reading {}", path.display()), e)),
        };
        let unreadable = |e| ShimError::Invalid(format!("{} is unreadable: {e}", path.display()));
        let mut st: RateState = serde_json::from_slice(&bytes).map_err(unreadable)?;
        if st.reports.is_none() {
            st.reports = serde_json::from_slice::<LegacyReports>(&bytes)
                .map_err(unreadable)?
                .settings();
        }
        Ok(Some(st))
    }

    /// Load-modify-save under a process-wide lock (the proxy and its reporter both update it).
    /// Does nothing when there is no state.
    pub fn update(bundle: &Path, f: impl FnOnce(&mut RateState)) -> Result<()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut s) = Self::load(bundle)? {
            f(&mut s);
            s.save(bundle)?;
        }
        Ok(())
    }

    /// Writes atomically (temp file + rename) into `bundle`.
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let path = Self::path(bundle);
        let tmp = bundle.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ShimError::Invalid(format!("encoding the rate state: {e}")))?;
        conrdma_node::private_fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| ShimError::io(format!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use conrdma_node::limiter::VfRate;

    use super::*;
    use crate::testing::record;

    fn spec(pairs: &[(&str, &str)]) -> Spec {
        Spec {
            annotations: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn pod(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        spec(pairs).annotations
    }

    const CTR: (&str, &str) = ("io.kubernetes.cri.container-type", "container");

    #[test]
    fn allocation_is_applied() {
        let json = record(2).to_json();
        let c = spec(&[CTR, (KEY_ALLOCATION, &json), (KEY_BANDWIDTH, "10G")]);
        let p = pod(&[(KEY_BANDWIDTH, "10G")]);
        match decide(&c, Some(&p)) {
            Decision::Apply(r) => assert_eq!(r.start_rate(), VfRate::new(1_000, 4_000)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn missing_allocation_fails_closed() {
        let c = spec(&[
            CTR,
            ("io.kubernetes.cri.container-name", "main"),
            (KEY_BANDWIDTH, "10G"),
        ]);
        let p = pod(&[(KEY_BANDWIDTH, "10G"), (KEY_LIMIT, "20G")]);
        let Decision::Refuse(e) = decide(&c, Some(&p)) else {
            panic!("not refused")
        };
        let text = e.to_string();
        assert!(text.contains("container \"main\""), "{text}");
        assert!(
            text.contains("rdma.conrdma.io/bandwidth=10G, rdma.conrdma.io/bandwidth-limit=20G"),
            "{text}"
        );
        assert!(text.contains("NRI plugin did not handle it"), "{text}");
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
    }

    #[test]
    fn containers_not_named_and_sandboxes_pass() {
        let p = pod(&[
            (KEY_BANDWIDTH, "1G"),
            ("rdma.conrdma.io/containers", "worker"),
        ]);
        let logger = spec(&[CTR, ("io.kubernetes.cri.container-name", "logger")]);
        assert!(matches!(decide(&logger, Some(&p)), Decision::PassThrough));
        let sb = spec(&[("io.kubernetes.cri.container-type", "sandbox")]);
        assert!(matches!(decide(&sb, Some(&p)), Decision::PassThrough));
        let plain = spec(&[CTR, ("example.com/x", "y")]);
        assert!(matches!(
            decide(&plain, Some(&HashMap::new())),
            Decision::PassThrough
        ));
    }

    #[test]
    fn forged_or_bad_requests_are_refused() {
        let json = record(2).to_json();
        // The pod itself set the allocation key: refused even though the container has one.
        let p = pod(&[(KEY_ALLOCATION, &json)]);
        let c = spec(&[CTR, (KEY_ALLOCATION, &json)]);
        let Decision::Refuse(e) = decide(&c, Some(&p)) else {
            panic!("forgery accepted")
        };
        assert!(e.to_string().contains("cannot be requested"), "{e}");
        let bad = pod(&[(KEY_BANDWIDTH, "fast")]);
        assert!(matches!(decide(&c, Some(&bad)), Decision::Refuse(_)));
        let c = spec(&[CTR, (KEY_ALLOCATION, "{not json")]);
        assert!(matches!(
            decide(&c, Some(&HashMap::new())),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn without_a_sandbox_the_container_stands_for_the_pod() {
        let json = record(2).to_json();
        let c = spec(&[(KEY_ALLOCATION, &json), (KEY_BANDWIDTH, "10G")]);
        assert!(matches!(decide(&c, None), Decision::Apply(_)));
        let c = spec(&[(KEY_BANDWIDTH, "10G")]);
        assert!(matches!(decide(&c, None), Decision::Refuse(_)));
    }

    /// A record as the proxy writes it for a pod without reports.
    fn state() -> RateState {
        RateState {
            owner_id: "sb".into(),
            pod: None,
            allocation: record(2),
            limiter: LimiterSpec::Netlink,
            applied: Applied {
                requested: VfRate::new(1, 2),
                applied: VfRate::new(0, 2),
                min_enforced: false,
                note: Some("igb".into()),
            },
            reset: false,
            reports: None,
            last_sample: None,
            final_spooled: false,
        }
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RateState::load(dir.path()).unwrap().is_none());
        let s = RateState {
            reports: Some(ReportSettings {
                ca_file: Some("/etc/conrdma/ca.pem".into()),
                spool_max: 7,
                ..ReportSettings::new("https://h:8443".into(), "n".into())
            }),
            last_sample: Some(Sample {
                unix_ms: 5,
                counters: VfCounters::default(),
            }),
            ..state()
        };
        s.save(dir.path()).unwrap();
        assert_eq!(RateState::load(dir.path()).unwrap(), Some(s));
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(RateState::path(dir.path()))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(
            mode, 0o600,
            "the record names the pod's VF and webhook: root only"
        );
        std::fs::write(RateState::path(dir.path()), "{").unwrap();
        assert!(RateState::load(dir.path()).is_err());
    }

    #[test]
    fn records_of_the_previous_release_keep_their_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state();
        // As the previous release wrote it: the report settings as separate top-level fields.
        let mut old = serde_json::to_value(&s).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("reports");
        o.insert("spool_dir".into(), "/var/spool/x".into());
        o.insert("node".into(), "n1".into());
        o.insert("webhook_url".into(), "https://h:8443".into());
        o.insert("credential_file".into(), "/etc/conrdma/token".into());
        std::fs::write(RateState::path(dir.path()), old.to_string()).unwrap();
        s.reports = Some(ReportSettings {
            spool_dir: "/var/spool/x".into(),
            credential_file: Some("/etc/conrdma/token".into()),
            ..ReportSettings::new("https://h:8443".into(), "n1".into())
        });
        assert_eq!(RateState::load(dir.path()).unwrap(), Some(s.clone()));
        // Saved again, it is in the new shape, the interval readable.
        s.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(RateState::path(dir.path())).unwrap();
        assert!(text.contains("\"interval\": \"10s\""), "{text}");
        assert!(!text.contains("webhook_url"), "{text}");
        // An old record without reports has none.
        old.as_object_mut().unwrap().remove("webhook_url");
        std::fs::write(RateState::path(dir.path()), old.to_string()).unwrap();
        assert_eq!(RateState::load(dir.path()).unwrap().unwrap().reports, None);
    }
}
