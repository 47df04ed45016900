//! Usage reports: sample the VF's byte counters every interval, spool a report per window, and
//! send the spool to the placement webhook in batches with a bearer credential, backing off while
//! it is unreachable. The pod's last window is sent with `final: true`.

use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conrdma_api::report::{PodId, UsageBatch, UsageReport, USAGE_REPORT_PATH};
use conrdma_api::AllocationRecord;
use conrdma_node::limiter::RateLimiter;
use tracing::{debug, info, warn};

use conrdma_reporter::{Client, SendError};

use crate::error::{Result, ShimError};
use crate::pod::{RateState, Sample};
use crate::settings::ReportSettings;
use crate::spool::{Drained, Sent, Spool};

/// Reports per POST.
pub const BATCH: usize = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Average rate in Mbps of `bytes` over `ms` milliseconds.
pub fn mbps(bytes: u64, ms: u64) -> f64 {
    if ms == 0 {
        return 0.0;
    }
    (bytes as f64 * 8.0) / (ms as f64 * 1_000.0)
}

/// The report for the window from `from` to `to`. Counters that went backwards (a driver reset)
/// count from zero.
pub fn window_report(
    node: &str,
    pod: &PodId,
    rec: &AllocationRecord,
    from: Sample,
    to: Sample,
    is_final: bool,
) -> UsageReport {
    let delta = |a: u64, b: u64| if b >= a { b - a } else { b };
    let ms = to.unix_ms.saturating_sub(from.unix_ms);
    UsageReport {
        node: node.to_string(),
        pod: pod.clone(),
        pool: rec.pool.clone(),
        pf: rec.pf.clone(),
        vf: rec.vf,
        guaranteed_mbps: rec.guaranteed_mbps,
        limit_mbps: rec.limit_mbps,
        tx_mbps: mbps(delta(from.counters.tx_bytes, to.counters.tx_bytes), ms),
        rx_mbps: mbps(delta(from.counters.rx_bytes, to.counters.rx_bytes), ms),
        window_start_unix_ms: from.unix_ms,
        window_end_unix_ms: to.unix_ms.max(from.unix_ms),
        is_final,
    }
}

/// Spools the report of the window from `from` to `to`.
pub fn spool_window(
    cfg: &ReportSettings,
    pod: &PodId,
    rec: &AllocationRecord,
    from: Sample,
    to: Sample,
    is_final: bool,
) -> Result<()> {
    let report = window_report(&cfg.node, pod, rec, from, to, is_final);
    report
        .validate()
        .map_err(|e| ShimError::Invalid(format!("usage report would be refused: {e}")))?;
    Spool::new(&cfg.spool_dir, cfg.spool_max)
        .put(&report)
        .map(drop)
        .map_err(|e| {
            ShimError::io(
                format!("spooling a usage report in {}", cfg.spool_dir.display()),
                e,
            )
        })
}

/// The webhook client for these settings.
pub fn client(cfg: &ReportSettings, timeout: Duration) -> Result<Client, String> {
    Client::new(conrdma_reporter::Target {
        url: cfg.url.clone(),
        credential_file: cfg.credential_file.clone(),
        ca_file: cfg.ca_file.clone(),
        timeout,
    })
    .map_err(|e| e.to_string())
}

/// Sends one batch to the webhook and classifies the answer. Only an answer that says the batch
/// itself is wrong drops it; anything else (unreachable, 5xx, a refused or unreadable credential)
/// keeps it for a retry, bounded by the spool.
pub fn send_batch(client: &Client, batch: &UsageBatch) -> Sent {
    match client.post_json(USAGE_REPORT_PATH, batch) {
        Ok(()) => Sent::Accepted,
        Err(
            e @ SendError::Status {
                status: 400 | 413 | 422,
                ..
            },
        ) => Sent::Rejected(e.to_string()),
        Err(e) => Sent::Failed(e.to_string()),
    }
}

/// Drains the spool once, with a per-POST timeout.
pub fn drain(cfg: &ReportSettings, timeout: Duration) -> Drained {
    let client = match client(cfg, timeout) {
        Ok(c) => c,
        Err(e) => {
            return Drained {
                failed: Some(e),
                ..Drained::default()
            }
        }
    };
    let spool = Spool::new(&cfg.spool_dir, cfg.spool_max);
    spool.drain(BATCH, &mut |b| send_batch(&client, b))
}

/// Drains with retries (short backoff) until the spool is empty or `deadline`.
pub fn drain_until(cfg: &ReportSettings, deadline: Instant) -> Drained {
    let mut wait = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = drain(
            cfg,
            left.clamp(Duration::from_millis(100), Duration::from_secs(5)),
        );
        if r.failed.is_none() && !r.busy {
            return r;
        }
        if Instant::now() + wait >= deadline {
            return r;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// Who and what a reporter reports on.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod: PodId,
    pub allocation: AllocationRecord,
    /// The bundle whose state file keeps the last sample (for the `delete` command).
    pub state_bundle: PathBuf,
}

enum Cmd {
    /// The pod ended: spool the final report, acknowledge, deliver what can be, stop.
    Finish(SyncSender<()>),
    /// The process is going away without the pod's end: stop sampling, send nothing more.
    Abandon,
}

/// The reporting thread of one pod.
pub struct Reporter {
    tx: Sender<Cmd>,
    handle: Option<JoinHandle<()>>,
}

impl Reporter {
    pub fn spawn(
        cfg: ReportSettings,
        target: Target,
        limiter: Arc<dyn RateLimiter>,
    ) -> std::io::Result<Reporter> {
        let (tx, rx) = channel();
        let handle = std::thread::Builder::new()
            .name("conrdma-report".into())
            .spawn(move || {
                let mut r = Loop {
                    cfg,
                    target,
                    limiter,
                    last: None,
                    backoff: None,
                };
                r.last = r.sample();
                let mut next_sample = Instant::now() + r.cfg.interval;
                let mut next_drain = Instant::now();
                loop {
                    let now = Instant::now();
                    let due = next_sample.min(next_drain);
                    match rx.recv_timeout(due.saturating_duration_since(now)) {
                        Ok(Cmd::Finish(ack)) => {
                            r.window(true);
                            let _ = ack.send(());
                            r.deliver_final();
                            return;
                        }
                        Ok(Cmd::Abandon) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    let now = Instant::now();
                    if now >= next_sample {
                        r.window(false);
                        next_sample += r.cfg.interval;
                        if next_sample < now {
                            next_sample = now + r.cfg.interval;
                        }
                        if r.backoff.is_none() {
                            next_drain = now;
                        }
                    }
                    if Instant::now() >= next_drain {
                        next_drain = Instant::now() + r.drain_once();
                    }
                }
            })?;
        Ok(Reporter {
            tx,
            handle: Some(handle),
        })
    }

    /// Ends the pod's reporting: returns once the final report is spooled (or after `wait`);
    /// the thread then delivers it and stops.
    pub fn stop(&self, wait: Duration) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Cmd::Finish(ack)).is_ok() && done.recv_timeout(wait).is_err() {
            warn!("the final usage report was not spooled in time");
        }
    }

    /// Stops sampling without a final report (the process exits without the pod's end).
    pub fn abandon(self) {
        let _ = self.tx.send(Cmd::Abandon);
    }

    /// Waits at most `wait` (plus a second) for the thread, e.g. to deliver the final report.
    pub fn join(mut self, wait: Duration) {
        if let Some(h) = self.handle.take() {
            let deadline = Instant::now() + wait + Duration::from_secs(1);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                warn!("usage reporter still busy at exit; its reports stay in the spool");
            }
        }
    }
}

struct Loop {
    cfg: ReportSettings,
    target: Target,
    limiter: Arc<dyn RateLimiter>,
    last: Option<Sample>,
    backoff: Option<Duration>,
}

impl Loop {
    fn sample(&self) -> Option<Sample> {
        let rec = &self.target.allocation;
        match self.limiter.counters(&rec.pf, rec.vf) {
            Ok(counters) => Some(Sample {
                unix_ms: now_ms(),
                counters,
            }),
            Err(e) => {
                warn!(error = %e, "cannot read the VF's counters; skipping this window");
                None
            }
        }
    }

    /// Closes the current window: spools its report and records the sample.
    fn window(&mut self, is_final: bool) {
        let Some(now) = self.sample().or_else(|| {
            // The final report goes out even when counters are unreadable: an empty window.
            is_final.then(|| Sample {
                unix_ms: now_ms(),
                counters: self.last.map(|s| s.counters).unwrap_or_default(),
            })
        }) else {
            return;
        };
        if let Some(from) = self.last {
            let t = &self.target;
            if let Err(e) = spool_window(&self.cfg, &t.pod, &t.allocation, from, now, is_final) {
                warn!(error = %e, "usage report not spooled");
            }
        }
        self.last = Some(now);
        self.record(is_final);
    }

    /// Keeps the state file's last sample current, so a crash loses at most one window.
    fn record(&self, final_spooled: bool) {
        let last = self.last;
        if let Err(e) = RateState::update(&self.target.state_bundle, |st| {
            st.last_sample = last;
            st.final_spooled |= final_spooled;
        }) {
            debug!(error = %e, "cannot update the rate state");
        }
    }

    /// One drain; returns how long to wait before the next.
    fn drain_once(&mut self) -> Duration {
        let r = drain(&self.cfg, Duration::from_secs(5));
        match r.failed {
            None => {
                if r.sent > 0 {
                    debug!(sent = r.sent, "usage reports delivered");
                }
                if self.backoff.take().is_some() {
                    info!("usage webhook reachable again");
                }
                self.cfg.interval
            }
            Some(why) => {
                let next = self
                    .backoff
                    .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                if self.backoff.is_none() {
                    warn!(error = %why, url = %self.cfg.url, "usage webhook unreachable; reports kept in the spool, retrying with backoff");
                }
                self.backoff = Some(next);
                next
            }
        }
    }

    fn deliver_final(&mut self) {
        let r = drain_until(&self.cfg, Instant::now() + Duration::from_secs(3));
        match r.failed {
            None => info!(sent = r.sent, "final usage report delivered"),
            Some(e) => {
                warn!(error = %e, "final usage report left in the spool for the next shim to send")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record;
    use conrdma_node::limiter::VfCounters;

    fn s(ms: u64, tx: u64, rx: u64) -> Sample {
        Sample {
            unix_ms: ms,
            counters: VfCounters {
                tx_bytes: tx,
                rx_bytes: rx,
            },
        }
    }

    #[test]
    fn windows_become_rates() {
        let pod = PodId {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
        };
        let rec = record(1);
        let window = |from, to, is_final| window_report("n", &pod, &rec, from, to, is_final);
        // 12.5 MB in 1 s = 100 Mbps.
        let r = window(s(1_000, 0, 0), s(2_000, 12_500_000, 125_000), false);
        assert!((r.tx_mbps - 100.0).abs() < 1e-9, "{}", r.tx_mbps);
        assert!((r.rx_mbps - 1.0).abs() < 1e-9);
        assert_eq!(
            (r.window_start_unix_ms, r.window_end_unix_ms),
            (1_000, 2_000)
        );
        r.validate().unwrap();
        // A counter reset counts from zero instead of going negative.
        let r = window(s(0, 1_000_000, 0), s(1_000, 125_000, 0), true);
        assert!((r.tx_mbps - 1.0).abs() < 1e-9 && r.is_final);
        assert_eq!(mbps(5, 0), 0.0);
    }
}
