//! The node-wide, bounded on-disk spool of usage reports.
//!
//! Every report is written here first (one small JSON file each, atomically), then sent in
//! batches by whichever shim of the node holds the spool's lock; a file is removed only once the
//! webhook has taken it. So a report survives a webhook outage, and the final report of a pod
//! whose shim has exited is sent by any other shim (or the next one to start). The spool keeps at
//! most `max` reports: beyond that the oldest are dropped, with a warning, rather than filling
//! the node's disk.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use conrdma_api::report::{UsageBatch, UsageReport};
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, warn};

static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max: usize,
}

/// What the sender said about a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Taken: remove the files.
    Accepted,
    /// Refused for good (the webhook says the batch itself is wrong): drop it, loudly.
    Rejected(String),
    /// Not delivered (unreachable, 5xx, credential refused): keep it and retry later.
    Failed(String),
}

/// What one drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    pub sent: usize,
    pub dropped: usize,
    /// Another process holds the lock and is sending.
    pub busy: bool,
    /// The last failure, when reports are left for a retry.
    pub failed: Option<String>,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>, max: usize) -> Spool {
        Spool {
            dir: dir.into(),
            max: max.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        conrdma_node::private_fs::create_dir(&self.dir)
    }

    /// Spooled report files, oldest first (names start with the time).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "json")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Writes one report, then trims the spool to its bound. Returns how many old ones were
    /// dropped to make room.
    pub fn put(&self, report: &UsageReport) -> std::io::Result<usize> {
        self.ensure_dir()?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{:013}-{:08}-{:06}.json",
            report.window_end_unix_ms,
            std::process::id(),
            seq % 1_000_000
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec(report).map_err(std::io::Error::other)?;
        conrdma_node::private_fs::write(&tmp, &text)?;
        fs::rename(&tmp, self.dir.join(&name))?;
        let files = self.files();
        let excess = files.len().saturating_sub(self.max);
        for f in files.iter().take(excess) {
            let _ = fs::remove_file(f);
        }
        if excess > 0 {
            warn!(
                dropped = excess,
                max = self.max,
                spool = %self.dir.display(),
                "usage spool full: dropped the oldest reports"
            );
        }
        Ok(excess)
    }

    /// Sends spooled reports in batches of up to `batch` through `send`, until the spool is
    /// empty or a send fails. Only one process drains at a time (an flock on `.lock`); others
    /// return at once with `busy`.
    pub fn drain(&self, batch: usize, send: &mut dyn FnMut(&UsageBatch) -> Sent) -> Drained {
        let mut out = Drained::default();
        if self.ensure_dir().is_err() {
            out.failed = Some(format!("cannot create {}", self.dir.display()));
            return out;
        }
        let lock_path = self.dir.join(".lock");
        let lock_file = match conrdma_node::private_fs::open_for_write(&lock_path, false) {
            Ok(f) => f,
            Err(e) => {
                out.failed = Some(format!("opening {}: {e}", lock_path.display()));
                return out;
            }
        };
        let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(_) => {
                out.busy = true;
                return out;
            }
        };
        loop {
            let files = self.files();
            if files.is_empty() {
                return out;
            }
            let mut taken = Vec::new();
            let mut reports = Vec::new();
            for f in files.into_iter().take(batch.max(1)) {
                match fs::read(&f).map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<UsageReport>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(r) => {
                        reports.push(r);
                        taken.push(f);
                    }
                    Err(e) if e.contains("No such file") || e.contains("not found") => {}
                    Err(e) => {
                        warn!(file = %f.display(), error = %e, "dropping an unreadable spooled report");
                        let _ = fs::remove_file(&f);
                        out.dropped += 1;
                    }
                }
            }
            if reports.is_empty() {
                continue;
            }
            let n = reports.len();
            match send(&UsageBatch::new(reports)) {
                Sent::Accepted => {
                    for f in &taken {
                        match fs::remove_file(f) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => {
                                warn!(file = %f.display(), error = %e, "cannot remove a sent report")
                            }
                        }
                    }
                    out.sent += n;
                    debug!(reports = n, "usage reports sent");
                }
                Sent::Rejected(why) => {
                    warn!(reports = n, reason = %why, "the webhook refused usage reports for good; dropped");
                    for f in &taken {
                        let _ = fs::remove_file(f);
                    }
                    out.dropped += n;
                }
                Sent::Failed(why) => {
                    out.failed = Some(why);
                    return out;
                }
            }
            // Keep the lock file's fd alive for the whole loop.
            let _ = _lock.as_fd();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conrdma_api::report::PodId;

    pub(crate) fn report(end: u64, fin: bool) -> UsageReport {
        UsageReport {
            node: "node-1".into(),
            pod: PodId {
                namespace: "default".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            pool: "default".into(),
            pf: "ens1f0".into(),
            vf: 0,
            guaranteed_mbps: 1,
            limit_mbps: 2,
            tx_mbps: 0.5,
            rx_mbps: 0.0,
            window_start_unix_ms: end.saturating_sub(10),
            window_end_unix_ms: end,
            is_final: fin,
        }
    }

    #[test]
    fn put_drain_and_retry() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path().join("spool"), 100);
        for i in 0..5 {
            s.put(&report(1000 + i, i == 4)).unwrap();
        }
        assert_eq!(s.files().len(), 5);
        // Reports say which pod holds which VF: root only.
        use std::os::unix::fs::MetadataExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(s.dir()), 0o700);
        assert!(s.files().iter().all(|f| mode(f) == 0o600));
        // Webhook down: nothing is lost.
        let r = s.drain(2, &mut |_| Sent::Failed("down".into()));
        assert_eq!((r.sent, r.failed.as_deref()), (0, Some("down")));
        assert_eq!(s.files().len(), 5);
        // Back up: batches of 2, oldest first, the final one last.
        let mut seen = Vec::new();
        let r = s.drain(2, &mut |b| {
            seen.push(
                b.reports
                    .iter()
                    .map(|r| r.window_end_unix_ms)
                    .collect::<Vec<_>>(),
            );
            Sent::Accepted
        });
        assert_eq!(r.sent, 5);
        assert_eq!(seen, vec![vec![1000, 1001], vec![1002, 1003], vec![1004]]);
        assert!(s.files().is_empty());
    }

    #[test]
    fn bound_drops_oldest_and_rejections_drop() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path(), 3);
        for i in 0..5 {
            s.put(&report(2000 + i, false)).unwrap();
        }
        let left: Vec<_> = s.files();
        assert_eq!(left.len(), 3);
        assert!(
            left[0].to_string_lossy().contains("0000000002002"),
            "{left:?}"
        );
        std::fs::write(d.path().join("0000000000001-x.json"), "garbage").unwrap();
        let r = s.drain(10, &mut |_| Sent::Rejected("400".into()));
        assert_eq!((r.sent, r.dropped), (0, 4));
        assert!(s.files().is_empty());
    }

    #[test]
    fn one_drainer_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path(), 10);
        s.put(&report(1, false)).unwrap();
        let s2 = s.clone();
        let r = s.drain(10, &mut |_| {
            // While we hold the lock, another drainer is told it is busy.
            let inner = s2.drain(10, &mut |_| Sent::Accepted);
            assert!(inner.busy);
            Sent::Accepted
        });
        assert_eq!(r.sent, 1);
    }
}
