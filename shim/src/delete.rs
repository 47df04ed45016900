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
use crate::report::{drain_until, now_ms, spool_window};
use crate::settings::{ReportSettings, RUNC_SHIM};
use crate::spec::Spec;
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
    // stderr of `delete` lands in containerd's log as cleanup warnings; a ShimError's text
    // already carries the prefix.
    let msg = msg.strip_prefix("conrdma: ").unwrap_or(&msg);
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
    if let (Some(cfg), false, Some(pod)) = (&st.reports, st.final_spooled, &st.pod) {
        let now = Sample {
            unix_ms: now_ms(),
            counters: limiter.counters(&rec.pf, rec.vf).unwrap_or_else(|_| {
                st.last_sample
                    .map(|s| s.counters)
                    .unwrap_or(VfCounters::default())
            }),
        };
        let from = st.last_sample.unwrap_or(now);
        match spool_window(cfg, pod, &rec, from, now, true) {
            Ok(()) => st.final_spooled = true,
            Err(e) => warn(format!("the pod's final usage report: {e}")),
        }
    }
    if let Err(e) = st.save(bundle) {
        warn(e.to_string());
    }
    // Also when the final report was spooled before: it may still wait there to be sent.
    st.reports
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{container, ok, record, sandbox, HttpsWebhook, World};
    use conrdma_api::report::USAGE_REPORT_PATH;
    use conrdma_node::limiter::{RateLimiter, SimulatedLimiter, VfRate};

    /// A shim that crashed mid-pod leaves its record; containerd's `delete` must still reset the
    /// VF and deliver the final report to a webhook that only a private CA vouches for.
    #[test]
    fn a_crashed_pods_final_report_reaches_an_https_webhook_with_a_private_ca() {
        let hook = HttpsWebhook::start();
        let spool = tempfile::tempdir().unwrap();
        let w = World::new(&format!(
            "webhook_url = {:?}\nca_file = {:?}\nnode_name = \"node-1\"\nspool_dir = {:?}\nreport_interval = \"1h\"\n",
            hook.url,
            hook.ca_file,
            spool.path()
        ));
        let sb = w.bundle("sb", sandbox());
        assert!(ok(&w.create("sb", sb.clone(), None)));
        let c = w.bundle("c1", container("main", Some(record(1).to_json())));
        assert!(ok(&w.create("c1", c, None)));
        let sim = SimulatedLimiter::new(&w.nic);
        assert_eq!(sim.get("ens1f0", 1).unwrap(), VfRate::new(1_000, 4_000));
        // The crash: the proxy goes without the sandbox's Delete, so without a final report.
        w.proxy.finish(Duration::ZERO);
        assert!(hook.received().is_empty());

        // containerd then runs `delete` in the sandbox's bundle (a stand-in runc shim answers).
        let runc = w.dir.path().join("runc-shim");
        std::fs::write(&runc, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            Path::new(&sb).join(RUNC_SHIM_FILE),
            runc.to_string_lossy().as_bytes(),
        )
        .unwrap();
        let argv: Vec<String> = [
            "-namespace",
            "k8s.io",
            "-id",
            "sb",
            "-bundle",
            &sb,
            "delete",
        ]
        .map(String::from)
        .into();
        let flags = Flags::parse(argv.clone()).unwrap();
        assert_eq!(delete(&flags, &argv), 0);

        assert_eq!(sim.get("ens1f0", 1).unwrap(), VfRate::NONE);
        let got = hook.received();
        let finals: Vec<_> = got
            .iter()
            .filter(|(path, _)| path == USAGE_REPORT_PATH)
            .flat_map(|(_, b)| b.reports.iter().filter(|r| r.is_final))
            .collect();
        assert_eq!(finals.len(), 1, "{got:?}");
        assert_eq!(
            (finals[0].node.as_str(), finals[0].pod.name.as_str()),
            ("node-1", "p")
        );
        assert!(crate::spool::Spool::new(spool.path(), 10)
            .files()
            .is_empty());
        let st = RateState::load(Path::new(&sb)).unwrap().unwrap();
        assert!(st.reset && st.final_spooled);
    }
}
