//! The handshake between admission and the work-conserving controller.
//!
//! A pod admitted to a steered pool starts at its guarantee (`start_max_mbps`), but the other VFs
//! on its PF may be borrowing that bandwidth. Before CreateContainer answers (and so before the
//! runtime writes the pod's first rate), admission asks the controller for a decision with the
//! ledger as it is now, in which the new VF counts at its start maximum and the loans come down.
//! That keeps the PF's sum of maxima within its bound at every write.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How a request for a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The controller decided with the ledger as it was at the request.
    Done,
    /// No decision within the time allowed.
    TimedOut,
    /// No controller runs in this process (nothing to wait for).
    Unattached,
}

#[derive(Default)]
struct State {
    attached: bool,
    /// Tickets handed out to admissions.
    requested: u64,
    /// The newest ticket a finished round had seen at its start.
    done: u64,
}

#[derive(Default)]
pub struct Steering {
    state: Mutex<State>,
    cv: Condvar,
}

impl Steering {
    fn state(&self) -> MutexGuard<'_, State> {
        // Three integers, each written in one statement: a panic elsewhere cannot tear them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller thread runs: admissions in steered pools wait for it from now on.
    pub fn attach(&self) {
        self.state().attached = true;
    }

    /// Asks for a decision round that starts after this call, and waits for its end up to
    /// `timeout`.
    pub fn request(&self, timeout: Duration) -> Outcome {
        let mut s = self.state();
        if !s.attached {
            return Outcome::Unattached;
        }
        s.requested += 1;
        let ticket = s.requested;
        self.cv.notify_all();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.done < ticket)
            .unwrap_or_else(|p| p.into_inner());
        if s.done >= ticket {
            Outcome::Done
        } else {
            Outcome::TimedOut
        }
    }

    /// Controller, at the start of a round (before it reads the ledger): the ticket it answers.
    pub fn begin(&self) -> u64 {
        self.state().requested
    }

    /// Controller, at the end of the round that began with `ticket`.
    pub fn finish(&self, ticket: u64) {
        let mut s = self.state();
        if ticket > s.done {
            s.done = ticket;
            self.cv.notify_all();
        }
    }

    /// Controller: sleeps up to `pause`, or until an admission asks for a decision.
    pub fn sleep(&self, pause: Duration) {
        let s = self.state();
        let _ = self
            .cv
            .wait_timeout_while(s, pause, |s| s.requested <= s.done)
            .unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn without_a_controller_nobody_waits() {
        let s = Steering::default();
        let t = Instant::now();
        assert_eq!(s.request(Duration::from_secs(5)), Outcome::Unattached);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_request_is_answered_only_by_a_round_that_began_after_it() {
        let s = Arc::new(Steering::default());
        s.attach();
        let stale = s.begin();
        let asker = {
            let s = s.clone();
            std::thread::spawn(move || s.request(Duration::from_secs(30)))
        };
        // The request wakes a sleeping controller.
        s.sleep(Duration::from_secs(30));
        assert_eq!(s.begin(), stale + 1);
        // The round under way when the request came does not answer it.
        s.finish(stale);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!asker.is_finished());
        let ticket = s.begin();
        s.finish(ticket);
        assert_eq!(asker.join().unwrap(), Outcome::Done);
    }

    #[test]
    fn an_unanswered_request_times_out() {
        let s = Steering::default();
        s.attach();
        assert_eq!(s.request(Duration::from_millis(20)), Outcome::TimedOut);
    }
}
