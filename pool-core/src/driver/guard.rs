//! The restart guard: what keeps a pool whose workers keep failing outside any task from
//! fork-looping, without breaking it for good. Pure logic (time is passed in), tested here.
//!
//! More failures than [`GUARD_FAILURES`] within [`GUARD_WINDOW`] trip it: the pool stops
//! starting workers for a backoff that starts at [`GUARD_BACKOFF`] and doubles on each trip up
//! to [`GUARD_BACKOFF_MAX`]. While it backs off, work no live worker can take fails with
//! `PoolBroken`. After the backoff workers start again, on probation: one more failure trips
//! it again at once; a worker that answers a job heals the pool and resets the backoff.
//!
//! What counts is decided by [`self_inflicted`]: only ends the pool's own code, a task or the
//! initializer can cause, never a signal from outside.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::job::Sink;
use crate::transport::region::EXIT_BELL_LOST;
use crate::{Error, ExitCause};

pub(super) const GUARD_FAILURES: usize = 10;
pub(super) const GUARD_WINDOW: Duration = Duration::from_secs(10);
pub(super) const GUARD_BACKOFF: Duration = Duration::from_secs(1);
pub(super) const GUARD_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The guard's state.
#[derive(Debug)]
pub(super) struct RestartGuard {
    /// When workers failed outside any task (initializer failures, deaths while idle).
    recent_failures: VecDeque<Instant>,
    /// Set while the guard backs off: no workers are started until `retry_at`.
    broken: Option<Error>,
    retry_at: Option<Instant>,
    /// The backoff for the guard's next trip.
    backoff: Duration,
    /// Set after a backoff, until a worker answers a job.
    probation: bool,
}

impl Default for RestartGuard {
    fn default() -> Self {
        RestartGuard {
            recent_failures: VecDeque::new(),
            broken: None,
            retry_at: None,
            backoff: GUARD_BACKOFF,
            probation: false,
        }
    }
}

impl RestartGuard {
    /// The error work gets while the guard backs off.
    pub(super) fn broken(&self) -> Option<&Error> {
        self.broken.as_ref()
    }

    /// Records a worker failure outside any task at `now`. Returns the reason when this trips
    /// the guard.
    pub(super) fn failure(&mut self, what: &str, now: Instant) -> Option<String> {
        self.recent_failures.push_back(now);
        while self
            .recent_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > GUARD_WINDOW)
        {
            self.recent_failures.pop_front();
        }
        let tripped = self.recent_failures.len() > GUARD_FAILURES || self.probation;
        if !tripped || self.broken.is_some() {
            return None;
        }
        let reason = format!(
            "workers failed {} times in {:?} outside any task (the last: {what}); \
             trying again in {:?}",
            self.recent_failures.len(),
            GUARD_WINDOW,
            self.backoff
        );
        self.broken = Some(Error::PoolBroken(reason.clone()));
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(GUARD_BACKOFF_MAX);
        self.recent_failures.clear();
        self.probation = false;
        Some(reason)
    }

    /// At `now`, ends a backoff that is over: workers may start again, on probation. Returns
    /// whether it did.
    pub(super) fn end_backoff(&mut self, now: Instant) -> bool {
        if self.broken.is_some() && self.retry_at.is_some_and(|at| now >= at) {
            self.broken = None;
            self.retry_at = None;
            self.probation = true;
            return true;
        }
        false
    }

    /// A worker answered a job of the program. Returns whether that healed the pool (it was on
    /// probation).
    pub(super) fn answered(&mut self) -> bool {
        if self.probation {
            self.probation = false;
            self.backoff = GUARD_BACKOFF;
            return true;
        }
        false
    }
}

/// Whether a worker's end is one that the pool's own code, a task or an initializer can cause,
/// as opposed to a signal from outside. Only these count towards the restart guard.
///
/// Synchronous faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT — `abort`, a failed allocation
/// under the memory cap —, SIGSYS, SIGTRAP) and resource limits (SIGXCPU, SIGXFSZ) are raised
/// by the process's own code; every other signal (SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGTERM,
/// SIGUSR1, …) is sent from outside. An exit with a code is the worker's own doing, except
/// [`EXIT_BELL_LOST`] (a task closed the worker's bell; the worker answered and left) and
/// `cancel::EXIT_STOPPED` (the collector stopped a cancelled or overdue job). A status
/// that could not be read (the program ignores SIGCHLD) counts, so that a pool whose
/// initializer always crashes still stops fork-looping there.
pub(super) fn self_inflicted(cause: ExitCause) -> bool {
    match cause {
        ExitCause::Exited(code) => code != EXIT_BELL_LOST && code != crate::cancel::EXIT_STOPPED,
        ExitCause::Signal(sig) => matches!(
            sig,
            libc::SIGSEGV
                | libc::SIGBUS
                | libc::SIGILL
                | libc::SIGFPE
                | libc::SIGABRT
                | libc::SIGSYS
                | libc::SIGTRAP
                | libc::SIGXCPU
                | libc::SIGXFSZ
        ),
        _ => true,
    }
}

/// Receives initializer outcomes (part = the worker's pid) for the collector to act on.
#[derive(Default)]
pub(crate) struct InitSink {
    failures: Mutex<Vec<(i32, Error)>>,
}

impl Sink for InitSink {
    fn deliver(&self, pid: usize, outcome: Result<crate::wire::frame::ResultFrame, Error>) {
        let failure = match outcome {
            Ok(frame) => crate::result::check_frame(&frame, "initializer", 1).err(),
            Err(Error::Terminated) => None,
            // Killed from outside while it ran its initializer: not the initializer's fault.
            // The worker is replaced like any other that dies, without counting.
            Err(Error::WorkerDied { cause, .. }) if !self_inflicted(cause) => None,
            Err(err) => Some(err),
        };
        if let Some(err) = failure {
            self.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((pid as i32, err));
        }
    }
}

impl InitSink {
    /// The initializer failures delivered since the last call, by worker pid.
    pub(super) fn take_failures(&self) -> Vec<(i32, Error)> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn eleven_failures_in_the_window_trip_it_and_the_backoff_doubles() {
        let mut g = RestartGuard::default();
        let t0 = Instant::now();
        for i in 0..GUARD_FAILURES {
            assert_eq!(g.failure("x", t0 + Duration::from_millis(i as u64)), None);
        }
        let reason = g.failure("the last", t0).expect("trips");
        assert!(
            reason.contains("the last") && reason.contains("trying again in 1s"),
            "{reason}"
        );
        assert!(matches!(g.broken(), Some(Error::PoolBroken(_))));
        assert!(!g.end_backoff(t0 + Duration::from_millis(999)));
        assert!(g.end_backoff(t0 + GUARD_BACKOFF));
        assert!(g.broken().is_none());
        // On probation: one failure trips it again, with twice the backoff.
        let again = g
            .failure("again", t0 + GUARD_BACKOFF)
            .expect("trips at once");
        assert!(again.contains("trying again in 2s"), "{again}");
        assert!(g.end_backoff(t0 + GUARD_BACKOFF * 3));
        // A worker that answers heals it: the backoff starts over.
        assert!(g.answered());
        assert!(!g.answered());
        assert_eq!(g.backoff, GUARD_BACKOFF);
        assert_eq!(
            g.failure("one", t0 + GUARD_BACKOFF * 4),
            None,
            "no longer on probation"
        );
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let mut g = RestartGuard::default();
        let t0 = Instant::now();
        for i in 0..100u64 {
            let at = t0 + GUARD_WINDOW / 5 * i as u32;
            assert_eq!(g.failure("slow", at), None, "failure {i}");
        }
    }

    #[test]
    fn the_backoff_stops_doubling_at_its_maximum() {
        let mut g = RestartGuard::default();
        let mut now = Instant::now();
        for _ in 0..20 {
            for _ in 0..=GUARD_FAILURES {
                g.failure("x", now);
            }
            now += GUARD_BACKOFF_MAX;
            g.end_backoff(now);
            g.probation = false;
        }
        assert_eq!(g.backoff, GUARD_BACKOFF_MAX);
    }

    #[test]
    fn only_self_inflicted_ends_count() {
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGABRT,
        ] {
            assert!(self_inflicted(ExitCause::Signal(sig)), "{sig}");
        }
        for sig in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGKILL,
            libc::SIGTERM,
            libc::SIGUSR1,
        ] {
            assert!(!self_inflicted(ExitCause::Signal(sig)), "{sig}");
        }
        assert!(self_inflicted(ExitCause::Exited(1)));
        assert!(!self_inflicted(ExitCause::Exited(EXIT_BELL_LOST)));
        assert!(!self_inflicted(ExitCause::Exited(
            crate::cancel::EXIT_STOPPED
        )));
        assert!(self_inflicted(ExitCause::Unknown));
    }
}
