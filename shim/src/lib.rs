//! `containerd-shim-conrdma-v1`: containerd's runtime shim for pods with ConRDMA RDMA bandwidth.
//!
//! A thin task API proxy over containerd's own `containerd-shim-runc-v2`, which keeps the
//! whole container lifecycle (I/O, exec, tty, OOM, exit events, stats). The proxy adds what the
//! pod's allocation needs: the VF's rate is set before the first container that carries
//! `rdma.conrdma.io/allocation` is created, and reset when the pod's sandbox task is deleted
//! (or by the `delete` cleanup after a crash); a container that should have brought an
//! allocation but did not is refused; the VF's usage is reported to the placement webhook.
//!
//! Modes (argv, as containerd writes it): `start`, `delete`, and the server (no action).

pub mod bootstrap;
pub mod child;
pub mod daemon;
pub mod delete;
pub mod error;
pub mod flags;
pub mod line;
pub mod options;
pub mod pod;
pub mod report;
pub mod service;
pub mod settings;
pub mod spec;
pub mod spool;
pub mod start;
#[cfg(test)]
mod testing;

pub use error::{Result, ShimError};

/// The runtime type containerd maps to this binary.
pub const RUNTIME_TYPE: &str = "io.containerd.conrdma.v1";

/// Runs the binary with `args` (without argv[0]); returns the exit code.
pub fn main_with(args: Vec<String>) -> i32 {
    use std::io::Write;
    let flags = match flags::Flags::parse(args.clone()) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return 2;
        }
    };
    if flags.version {
        println!(
            "containerd-shim-conrdma-v1 {} ({RUNTIME_TYPE}, task API v2 and v3 over containerd-shim-runc-v2)",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    match flags.action.as_deref() {
        Some("start") => match start::start(&flags) {
            Ok(reply) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(&reply);
                let _ = out.flush();
                0
            }
            Err(e) => {
                // containerd shows this (stdout+stderr) as the start failure.
                let _ = writeln!(std::io::stderr(), "{e}");
                1
            }
        },
        Some("delete") => delete::delete(&flags, &args),
        None => daemon::serve(flags),
        Some(other) => {
            let _ = writeln!(
                std::io::stderr(),
                "conrdma: unknown action {other:?}; accepted: start, delete (or none for the server)"
            );
            2
        }
    }
}
