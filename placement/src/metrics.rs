//! `/metrics`: request latencies and report counters are instrumented as they happen; the per-node
//! and per-pool figures are read from the store at scrape time, so they never drift from it and a
//! forgotten node disappears from the output.

use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::store::Store;

pub struct Metrics {
    registry: Registry,
    pub request_seconds: HistogramVec,
    pub reports: IntCounterVec,
    pub pods: IntCounterVec,
    pool_capacity: GaugeVec,
    pool_guaranteed: GaugeVec,
    pool_measured: GaugeVec,
    pool_vfs_free: GaugeVec,
    pool_pods: GaugeVec,
    report_age: GaugeVec,
    stale: GaugeVec,
}

const NS: &str = "conrdma_placement";

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help).namespace(NS), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to answer a request, by endpoint.",
            )
            .namespace(NS)
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ]),
            &["endpoint"],
        )?;
        registry.register(Box::new(request_seconds.clone()))?;
        let reports = IntCounterVec::new(
            Opts::new("reports_total", "Reports received, by kind and outcome.").namespace(NS),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(reports.clone()))?;
        let pods = IntCounterVec::new(
            Opts::new(
                "extender_pods_total",
                "Pods seen by the extender verbs, by verb and whether they ask for RDMA.",
            )
            .namespace(NS),
            &["verb", "pod"],
        )?;
        registry.register(Box::new(pods.clone()))?;
        let np = &["node", "pool"];
        Ok(Metrics {
            pool_capacity: gauge(
                &registry,
                "pool_capacity_mbps",
                "Guaranteeable bandwidth of the pool (line rate x admission ratio), Mbps.",
                np,
            )?,
            pool_guaranteed: gauge(
                &registry,
                "pool_guaranteed_mbps",
                "Sum of admitted guarantees in the pool, Mbps.",
                np,
            )?,
            pool_measured: gauge(
                &registry,
                "pool_measured_mbps",
                "Measured traffic of the pool's pods from usage reports, Mbps.",
                &["node", "pool", "direction"],
            )?,
            pool_vfs_free: gauge(&registry, "pool_vfs_free", "Free VFs in the pool.", np)?,
            pool_pods: gauge(&registry, "pool_pods", "Pods holding a VF in the pool.", np)?,
            report_age: gauge(
                &registry,
                "node_report_age_seconds",
                "Seconds since the node's last report arrived.",
                &["node"],
            )?,
            stale: gauge(
                &registry,
                "node_stale",
                "1 if the node's last report is older than the TTL.",
                &["node"],
            )?,
            registry,
            request_seconds,
            reports,
            pods,
        })
    }

    /// Observes the time from `start` to now under `endpoint`.
    pub fn observe(&self, endpoint: &str, start: Instant) {
        self.request_seconds
            .with_label_values(&[endpoint])
            .observe(start.elapsed().as_secs_f64());
    }

    /// The text exposition, with per-node figures taken from `store` now.
    pub fn render(&self, store: &Store, now: Instant) -> String {
        for g in [
            &self.pool_capacity,
            &self.pool_guaranteed,
            &self.pool_measured,
            &self.pool_vfs_free,
            &self.pool_pods,
            &self.report_age,
            &self.stale,
        ] {
            g.reset();
        }
        for n in store.snapshot(now) {
            self.report_age
                .with_label_values(&[&n.node])
                .set(n.age_seconds);
            self.stale
                .with_label_values(&[&n.node])
                .set(if n.stale { 1.0 } else { 0.0 });
            for p in &n.pools {
                let l = [n.node.as_str(), p.report.pool.as_str()];
                for (g, v) in [
                    (&self.pool_capacity, p.report.capacity_mbps),
                    (&self.pool_guaranteed, p.report.guaranteed_mbps),
                    (&self.pool_vfs_free, p.report.vfs_free.into()),
                    (&self.pool_pods, p.report.pods.into()),
                ] {
                    g.with_label_values(&l).set(v as f64);
                }
                for (dir, v) in [("tx", p.measured_tx_mbps), ("rx", p.measured_rx_mbps)] {
                    self.pool_measured
                        .with_label_values(&[&n.node, &p.report.pool, dir])
                        .set(v);
                }
            }
        }
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on a metric family that is inconsistent, which the
        // registry already prevents; an empty body is the safe answer then.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
