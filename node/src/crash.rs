//! Crash points for fault tests: with `CONRDMA_CRASH_AT=<name>` in its environment, a process
//! kills itself with SIGKILL when it reaches the point of that name, exactly as a `kill -9` at
//! that moment would. Unset (every production run), a point costs one cached comparison.

use std::sync::OnceLock;

/// The environment variable naming the point to die at.
pub const ENV: &str = "CONRDMA_CRASH_AT";

/// Dies here if `CONRDMA_CRASH_AT` names this point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        tracing::warn!(point = name, "crash point reached: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
