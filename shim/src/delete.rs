//! `delete`: containerd's cleanup command, run whenever its connection for a container closes
//! (every normal teardown, a shim crash, a failed Create, a bundle it cannot reconnect). It gets
//! 5 seconds. Steps, each idempotent:
//! 1. if this bundle owns a pod's VF rate (`conrdma-shim.json`) that is not yet reset: reset it,
//!    and spool the pod's final usage report if the shim did not get to;
//! 2. run the runc shim's own `delete` with the same arguments and relay its stdout (a
//!    `DeleteResponse`) and exit code verbatim;
//! 3. if the group's proxy is gone, remove its stale sockets;
//! 4. try briefly to send the spool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conrdma_node::limiter::VfCounters;

use crate::child::child_socket;
use crate::flags::Flags;
use crate::pod::{RateState, Sample};
use crate::report::{drain_until, now_ms, window_report};
use crate::settings::{ReportSettings, DEFAULT_INTERVAL, DEFAULT_SPOOL_MAX, RUNC_SHIM};
use crate::spec::Spec;
use crate::spool::Spool;
use crate::start::{accepts, socket_path, RUNC_SHIM_FILE};

const RUNC_DELETE_TIMEOUT: Duration = Duration::from_millis(3500);

pub fn delete(flags: &Flags, argv: &[String]) -> i32 {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(&flags.bundle)
    };
    let started = Instant::now();
    let report = reset_and_spool(&bundle);
    let code = run_runc_delete(&bundle, argv);
    remove_stale_sockets(flags, &bundle);
    if let Some(cfg) = report {
        let left = Duration::from_millis(4500).saturating_sub(started.elapsed());
        if !left.is_zero() {
            let _ = drain_until(&cfg, Instant::now() + left.min(Duration::from_millis(800)));
        }
    }
    code
}

fn warn(msg: String) {
    // stderr of `delete` lands in containerd's log as cleanup warnings.
    let _ = writeln!(std::io::stderr(), "conrdma: {msg}");
}

/// Step 1. Returns the report settings when there is something to send.
fn reset_and_spool(bundle: &Path) -> Option<ReportSettings> {
    let mut st = match RateState::load(bundle) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            warn(e.to_string());
            return None;
        }
    };
    let limiter = st.limiter.build();
    let rec = st.allocation.clone();
    if !st.reset {
        match limiter.reset(&rec.pf, rec.vf) {
            Ok(()) => {
                st.reset = true;
                warn(format!(
                    "reset the VF rate of {} VF {} left by the pod's shim",
                    rec.pf, rec.vf
                ));
            }
            Err(e) => warn(format!("VF rate reset failed: {e}")),
        }
    }
    let mut cfg = None;
    if let (Some(spool_dir), Some(node), Some(url)) = (&st.spool_dir, &st.node, &st.webhook_url) {
        let settings = ReportSettings {
            url: url.clone(),
            credential_file: st.credential_file.clone(),
            ca_file: None,
            interval: DEFAULT_INTERVAL,
            node: node.clone(),
            spool_dir: spool_dir.clone(),
            spool_max: DEFAULT_SPOOL_MAX,
        };
        if let (false, Some(pod)) = (st.final_spooled, &st.pod) {
            let now = Sample {
                unix_ms: now_ms(),
                counters: limiter.counters(&rec.pf, rec.vf).unwrap_or_else(|_| {
                    st.last_sample
                        .map(|s| s.counters)
                        .unwrap_or(VfCounters::default())
                }),
            };
            let from = st.last_sample.unwrap_or(now);
            let r = window_report(node, pod, &rec, from, now, true);
            match r.validate() {
                Ok(()) => match Spool::new(spool_dir, DEFAULT_SPOOL_MAX).put(&r) {
                    Ok(_) => st.final_spooled = true,
                    Err(e) => warn(format!("cannot spool the final usage report: {e}")),
                },
                Err(e) => warn(format!("final usage report would be refused: {e}")),
            }
        }
        cfg = Some(settings);
    }
    if let Err(e) = st.save(bundle) {
        warn(e.to_string());
    }
    cfg
}

/// Step 2.
fn run_runc_delete(bundle: &Path, argv: &[String]) -> i32 {
    let runc = std::fs::read_to_string(bundle.join(RUNC_SHIM_FILE))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_file())
        .or_else(|| crate::settings::Settings::default().runc_shim_path("").ok())
        .unwrap_or_else(|| PathBuf::from(RUNC_SHIM));
    let child = Command::new(&runc)
        .args(argv)
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            warn(format!("running {} delete: {e}", runc.display()));
            return 1;
        }
    };
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUNC_DELETE_TIMEOUT) {
        Ok(Ok(out)) => {
            let _ = std::io::stdout().write_all(&out.stdout);
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().write_all(&out.stderr);
            out.status.code().unwrap_or(1)
        }
        Ok(Err(e)) => {
            warn(format!("waiting for {} delete: {e}", runc.display()));
            1
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            warn(format!(
                "{} delete did not finish within {RUNC_DELETE_TIMEOUT:?}",
                runc.display()
            ));
            1
        }
    }
}

/// Step 3. Only when the group's proxy no longer answers: its runc child is dead or dying then
/// (PDEATHSIG), and neither removes its socket file after a crash.
fn remove_stale_sockets(flags: &Flags, bundle: &Path) {
    if flags.address.is_empty() || flags.namespace.is_empty() {
        return;
    }
    let spec = Spec::read(bundle).unwrap_or_default();
    let socket = socket_path(&flags.address, &flags.namespace, spec.group(&flags.id));
    if accepts(&socket) {
        return;
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(child_socket(&socket));
}
