//! What the controller did, as Prometheus metrics (`conrdma_conserve_*`). The loop publishes a
//! snapshot after every round; gauges are filled from the last one at scrape time, so VFs that
//! left disappear. Counters grow as things happen.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing::warn;

use crate::error::PluginError;

const NS: &str = "conrdma_conserve";
const VF_LABELS: &[&str] = &["pool", "pf", "vf", "pod_id", "pod"];
const PF_LABELS: &[&str] = &["pool", "pf"];

/// One steered VF as the last round left it.
#[derive(Debug, Clone)]
pub(super) struct VfRow {
    pub pool: String,
    pub pf: String,
    pub vf: u32,
    pub pod_id: String,
    pub pod: String,
    pub guarantee: u64,
    pub limit: u64,
    /// The maximum in force (0: none).
    pub max: u64,
    pub measured: Option<u64>,
}

/// One PF with steered VFs.
#[derive(Debug, Clone)]
pub(super) struct PfRow {
    pub pool: String,
    pub line: u64,
    /// Sum of its VFs' maxima, a VF without one counted at the line rate.
    pub max_sum: u64,
}

#[derive(Debug, Default)]
struct Snapshot {
    vfs: Vec<VfRow>,
    pfs: BTreeMap<String, PfRow>,
}

/// Per-VF gauges, labelled [`VF_LABELS`].
struct VfGauges {
    max: GaugeVec,
    guarantee: GaugeVec,
    limit: GaugeVec,
    measured: GaugeVec,
    borrowed: GaugeVec,
    lent: GaugeVec,
    steered: GaugeVec,
}

/// Per-PF gauges, labelled [`PF_LABELS`].
struct PfGauges {
    line: GaugeVec,
    max_sum: GaugeVec,
}

/// The controller's metrics and the snapshot its gauges are filled from.
pub struct Telemetry {
    registry: Registry,
    snapshot: Mutex<Snapshot>,
    vf: VfGauges,
    pf: PfGauges,
    changes: IntCounterVec,
    reclaims: IntCounterVec,
    errors: IntCounterVec,
}

/// Creates and registers metrics in one registry.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
        let g = GaugeVec::new(Opts::new(name, help).namespace(NS), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

impl Telemetry {
    pub fn new() -> Result<Telemetry, PluginError> {
        Self::build().map_err(PluginError::Metrics)
    }

    fn build() -> prometheus::Result<Telemetry> {
        let b = Builder {
            registry: Registry::new(),
        };
        let vf = VfGauges {
            max: b.gauge(
                "vf_max_mbps",
                "max_tx_rate now in force on the VF, Mbps (0: none).",
                VF_LABELS,
            )?,
            guarantee: b.gauge(
                "vf_guarantee_mbps",
                "The pod's guaranteed bandwidth, Mbps.",
                VF_LABELS,
            )?,
            limit: b.gauge(
                "vf_limit_mbps",
                "The pod's bandwidth limit, Mbps.",
                VF_LABELS,
            )?,
            measured: b.gauge(
                "vf_measured_mbps",
                "Peak transmit rate over the last decision's sample windows, Mbps.",
                VF_LABELS,
            )?,
            borrowed: b.gauge(
                "vf_borrowed_mbps",
                "How far the VF's max is above its guarantee (bandwidth on loan to it), Mbps.",
                VF_LABELS,
            )?,
            lent: b.gauge(
                "vf_lent_mbps",
                "How much of the VF's guarantee is lent to others, Mbps.",
                VF_LABELS,
            )?,
            steered: b.gauge(
                "vf_steered",
                "1 for each VF the controller steers.",
                VF_LABELS,
            )?,
        };
        let pf = PfGauges {
            line: b.gauge(
                "pf_line_mbps",
                "Line rate of a PF with steered VFs, Mbps.",
                PF_LABELS,
            )?,
            max_sum: b.gauge(
                "pf_max_sum_mbps",
                "Sum of the max rates of its steered VFs (a VF without one counts at the line rate), Mbps.",
                PF_LABELS,
            )?,
        };
        Ok(Telemetry {
            changes: b.counter(
                "rate_changes_total",
                "Max rates the controller changed.",
                &["pf"],
            )?,
            reclaims: b.counter(
                "early_decisions_total",
                "Decisions taken before the interval was up because a lender ran at its cap.",
                &["pf"],
            )?,
            errors: b.counter(
                "limiter_errors_total",
                "Failed limiter calls, by operation.",
                &["op"],
            )?,
            vf,
            pf,
            snapshot: Mutex::new(Snapshot::default()),
            registry: b.registry,
        })
    }

    /// A max rate the controller changed on this PF.
    pub(super) fn changed(&self, pf: &str) {
        self.changes.with_label_values(&[pf]).inc();
    }

    /// A decision taken before the interval was up.
    pub(super) fn early(&self, pf: &str) {
        self.reclaims.with_label_values(&[pf]).inc();
    }

    /// A failed limiter call: `op` is `counters`, `get` or `set`.
    pub(super) fn failed(&self, op: &str) {
        self.errors.with_label_values(&[op]).inc();
    }

    /// Replaces the snapshot the gauges are filled from.
    pub(super) fn publish(&self, vfs: Vec<VfRow>, pfs: BTreeMap<String, PfRow>) {
        // A scrape that panicked cannot leave the snapshot half-written: it only reads it.
        let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        *snap = Snapshot { vfs, pfs };
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let v = &self.vf;
        let all = [
            &v.max,
            &v.guarantee,
            &v.limit,
            &v.measured,
            &v.borrowed,
            &v.lent,
            &v.steered,
            &self.pf.line,
            &self.pf.max_sum,
        ];
        // Only the snapshot's VFs and PFs are shown: those that left lose their series.
        for g in all {
            g.reset();
        }
        for r in &snap.vfs {
            let vf = r.vf.to_string();
            let labels = [
                r.pool.as_str(),
                r.pf.as_str(),
                vf.as_str(),
                r.pod_id.as_str(),
                r.pod.as_str(),
            ];
            let set = |g: &GaugeVec, value: u64| g.with_label_values(&labels).set(value as f64);
            let lent = if r.max == 0 {
                0
            } else {
                r.guarantee.saturating_sub(r.max)
            };
            set(&v.max, r.max);
            set(&v.guarantee, r.guarantee);
            set(&v.limit, r.limit);
            set(&v.measured, r.measured.unwrap_or(0));
            set(&v.borrowed, r.max.saturating_sub(r.guarantee));
            set(&v.lent, lent);
            set(&v.steered, 1);
        }
        for (pf, r) in &snap.pfs {
            let labels = [r.pool.as_str(), pf.as_str()];
            self.pf.line.with_label_values(&labels).set(r.line as f64);
            self.pf
                .max_sum
                .with_label_values(&labels)
                .set(r.max_sum as f64);
        }
        drop(snap);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
