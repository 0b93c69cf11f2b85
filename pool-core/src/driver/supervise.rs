//! Supervision: starting a seat's worker, and what happens when one dies, overruns its time
//! limit, finishes its quota, or fails its initializer — the restart guard decides whether to
//! start another. Methods of the collector, kept apart from its loop.

use std::mem;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, Signal};

use super::collector::{died, kill, retry_later, settle, Collector};
use super::guard::self_inflicted;
use super::seat::Incoming;
use super::split;
use crate::job::{Job, Sink};
use crate::start;
use crate::transport::envelope;
use crate::wire::frame::ResultFrame;
use crate::{sys, trace, Error};

/// The task an error names.
fn err_task(err: &Error) -> String {
    match err {
        Error::WorkerDied { task, .. } | Error::Timeout { task, .. } => task.clone(),
        _ => String::new(),
    }
}

/// The stop signal, as `nix` names it.
fn cancel_signal() -> Signal {
    Signal::try_from(crate::cancel::STOP_SIGNAL).unwrap_or(Signal::SIGKILL)
}

/// How long a worker asked to exit gets before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a worker whose task ran out of time gets between SIGTERM and SIGKILL.
const KILL_GRACE_NS: u64 = 100_000_000;
/// How many times a job goes back to the queue because its worker died before starting it.
const MAX_REQUEUES: u8 = 3;

impl Collector {
    pub(super) fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let process = start::start_worker(
            self.settings.start_method,
            self.shared.bell(),
            self.settings.memory_cap,
        )
        .map_err(Error::spawn);
        let process = match process {
            Ok(process) => process,
            Err(err) => {
                // Retried every 100 ms; meanwhile the pool says why it is short of a worker.
                self.shared.set_degraded(Some(format!(
                    "a worker could not be started ({err}); retrying"
                )));
                return Err(err);
            }
        };
        self.shared.set_worker(i, process.pid());
        trace::worker_started(i, process.pid().as_raw());
        let seat = &mut self.seats[i];
        seat.process = Some(process);
        seat.answered = 0;
        seat.sent = 0;
        seat.retiring = false;
        seat.over_memory = false;
        seat.timed_out = None;
        seat.doomed = None;
        seat.incoming = Incoming::default();
        seat.spawn_error = None;
        if let Some((init, sink)) = &self.initializer {
            // First in line at the new worker; its outcome goes to the init sink, keyed by pid.
            let frame = init.frame.clone().expect("checked at build");
            let pid = seat.process.as_ref().map_or(0, |p| p.pid().as_raw());
            let sink: Arc<dyn Sink> = sink.clone();
            let mut job = Job::new(frame, init.task.into(), sink, pid as usize);
            job.internal = true;
            seat.push(job, None);
        }
        if self.guard.broken().is_none() && self.seats.iter().all(|s| s.spawn_error.is_none()) {
            self.shared.set_degraded(None);
        }
        Ok(())
    }

    /// Records a worker failure outside any task; trips the restart guard when they come too
    /// fast.
    pub(super) fn guard(&mut self, what: String) {
        if let Some(reason) = self.guard.failure(&what, Instant::now()) {
            trace::pool_broken(&reason);
            self.shared.set_degraded(Some(reason));
        }
    }

    /// After the guard's backoff: starts workers again, on probation.
    pub(super) fn end_backoff(&mut self) {
        if self.guard.end_backoff(Instant::now()) {
            self.shared.set_degraded(None);
            trace::pool_retrying();
        }
    }

    /// Kills workers whose initializer failed (they are replaced like any dead worker).
    pub(super) fn check_initializers(&mut self) {
        let Some((_, sink)) = &self.initializer else {
            return;
        };
        let failures = sink.take_failures();
        for (pid, err) in failures {
            let reason = format!("the initializer failed: {err}");
            let mut found = false;
            for seat in &mut self.seats {
                if let Some(p) = &seat.process {
                    if p.pid().as_raw() == pid {
                        kill(p);
                        seat.doomed = Some(reason.clone());
                        found = true;
                    }
                }
            }
            if !found {
                // The worker is gone already (the initializer killed it).
                self.guard(reason);
            }
        }
    }

    /// Forks replacements for slots without a worker (after a failed fork, at most every
    /// 100 ms).
    pub(super) fn respawn_missing(&mut self) {
        self.end_backoff();
        if self.guard.broken().is_some() {
            return;
        }
        for i in 0..self.seats.len() {
            let seat = &self.seats[i];
            if seat.process.is_some() {
                continue;
            }
            if matches!(&seat.spawn_error, Some((_, at)) if at.elapsed() < Duration::from_millis(100))
            {
                continue;
            }
            if let Err(err) = self.spawn(i) {
                self.seats[i].spawn_error = Some((err, Instant::now()));
            }
        }
    }

    /// No worker could be started: jobs fail with the reason instead of waiting forever.
    pub(super) fn fail_without_workers(&mut self) {
        let err = self.guard.broken().cloned().unwrap_or_else(|| {
            self.seats
                .iter()
                .find_map(|s| s.spawn_error.as_ref().map(|(e, _)| e.clone()))
                .unwrap_or(Error::Terminated)
        });
        while let Some(job) = self.next_job() {
            settle(&self.shared, job, Err(err.clone()));
        }
    }

    /// A worker that has answered its quota of jobs (`max_tasks_per_child`) is asked to exit;
    /// its death is then handled like any other, and a fresh worker takes its seat.
    pub(super) fn retire_if_done(&mut self, i: usize) {
        if self.settings.max_tasks_per_child.is_none()
            && self.settings.max_memory_per_child.is_none()
        {
            return;
        }
        let seat = &mut self.seats[i];
        let Some(process) = &seat.process else {
            return;
        };
        if seat.retiring {
            return;
        }
        if let Some(limit) = self.settings.max_memory_per_child {
            let rss = process.region.header().rss_bytes.load(Ordering::Relaxed);
            if rss > limit && seat.answered > 0 {
                // Billiard's rule: checked after a job; the worker gets no more work.
                seat.over_memory = true;
            }
        }
        let quota_done = self
            .settings
            .max_tasks_per_child
            .is_some_and(|max| seat.sent >= max);
        if !(quota_done || seat.over_memory) || !seat.in_flight.is_empty() {
            return;
        }
        seat.retiring = true;
        trace::worker_recycled(i, process.pid().as_raw());
        envelope::send_small(process.region.jobs(), crate::wire::frame::shutdown_frame());
    }

    /// Kills workers whose running job is past its limit (SIGTERM, then SIGKILL after a grace);
    /// asks running jobs past the soft limit to stop, and sends the stop signal (then SIGKILL)
    /// to workers whose stopped job outlived the cancel grace (see `cancel`). Returns how long
    /// until the next limit or grace ends, if any.
    pub(super) fn check_timeouts(&mut self) -> Option<u64> {
        let soft = self.settings.soft_timeout;
        let limited = soft.is_some()
            || self
                .seats
                .iter()
                .any(|s| s.timed_out.is_some() || s.limited > 0 || s.stopping.is_some());
        if !limited {
            return None;
        }
        let grace_ns = self
            .settings
            .cancel_grace()
            .as_nanos()
            .min(u64::MAX as u128) as u64;
        let now = sys::monotonic_ns();
        let mut next: Option<u64> = None;
        let mut soonest = |ns: u64| next = Some(next.map_or(ns, |n| n.min(ns)));
        for seat in &mut self.seats {
            let Some(process) = &seat.process else {
                continue;
            };
            if let Some((_, sigkill_at)) = &mut seat.timed_out {
                if now >= *sigkill_at {
                    let _ = signal::kill(process.pid(), Signal::SIGKILL);
                    *sigkill_at = u64::MAX;
                } else if *sigkill_at != u64::MAX {
                    soonest(*sigkill_at - now);
                }
                continue;
            }
            let header = process.region.header();
            if let Some(stop) = &mut seat.stopping {
                // Signals only while the stopped job is unanswered and still the one running.
                let still = seat.answered <= stop.seq
                    && header.jobs_started.0.load(Ordering::SeqCst) == stop.seq + 1;
                if now >= stop.signal_at && stop.signal_at != u64::MAX {
                    if still {
                        let _ = signal::kill(process.pid(), cancel_signal());
                    }
                    stop.signal_at = u64::MAX;
                }
                if now >= stop.kill_at && stop.kill_at != u64::MAX {
                    if still {
                        let _ = signal::kill(process.pid(), Signal::SIGKILL);
                    }
                    stop.kill_at = u64::MAX;
                }
                for at in [stop.signal_at, stop.kill_at] {
                    if at != u64::MAX {
                        soonest(at.saturating_sub(now));
                    }
                }
            }
            let started = header.jobs_started.0.load(Ordering::SeqCst);
            let running = started.checked_sub(seat.answered + 1).map(|i| i as usize);
            let mut soft_stop = None;
            for (index, (job, _)) in seat.in_flight.iter().enumerate() {
                let per_item = |d: Duration| d * job.items.max(1);
                let hard = job
                    .limit
                    .map(|l| (l, l.as_nanos().min(u64::MAX as u128) as u64));
                let soft = soft.filter(|_| !job.internal).map(|s| {
                    let s = per_item(s);
                    (s, s.as_nanos().min(u64::MAX as u128) as u64)
                });
                if hard.is_none() && soft.is_none() {
                    continue;
                }
                if Some(index) == running {
                    let began = header.job_started_ns.load(Ordering::Relaxed);
                    let elapsed = now.saturating_sub(began);
                    if let Some((limit, soft_ns)) = soft {
                        if seat.stopping.is_none() {
                            if elapsed >= soft_ns {
                                soft_stop = Some((started - 1, limit));
                            } else {
                                soonest(soft_ns - elapsed);
                            }
                        }
                    }
                    if let Some((limit, limit_ns)) = hard {
                        if elapsed >= limit_ns {
                            let _ = signal::kill(process.pid(), Signal::SIGTERM);
                            trace::task_timed_out(&job.task, limit, process.pid().as_raw());
                            seat.timed_out = Some((limit, now + KILL_GRACE_NS));
                            soonest(KILL_GRACE_NS);
                            break;
                        }
                        soonest(limit_ns - elapsed);
                    }
                } else if running.is_none_or(|r| index > r) {
                    // Not begun yet: its limits cannot run out sooner than in full from now.
                    for (_, ns) in [hard, soft].into_iter().flatten() {
                        soonest(ns);
                    }
                }
            }
            if let Some((seq, limit)) = soft_stop {
                if seat.timed_out.is_none() {
                    seat.stop_running(seq, now, grace_ns, Some(limit));
                    soonest(grace_ns);
                }
            }
        }
        next
    }

    /// Polls the bell and the pidfds; handles every worker that died.
    pub(super) fn check_deaths(&mut self, timeout: PollTimeout) {
        self.last_death_check = Instant::now();
        crate::meter::queue_depth("local", self.queue.len() as u64);
        crate::meter::workers_alive(
            "local",
            self.seats.iter().filter(|s| s.process.is_some()).count() as u64,
        );
        let dead: Vec<usize> = {
            let mut fds = vec![PollFd::new(
                self.shared.bell_fd().as_fd(),
                PollFlags::POLLIN,
            )];
            let mut owners = Vec::new();
            for (i, seat) in self.seats.iter().enumerate() {
                if let Some(p) = &seat.process {
                    fds.push(PollFd::new(p.pidfd().as_fd(), PollFlags::POLLIN));
                    owners.push(i);
                }
            }
            match poll(&mut fds, timeout) {
                Ok(n) if n > 0 => fds[1..]
                    .iter()
                    .zip(&owners)
                    .filter(|(fd, _)| fd.any().unwrap_or(false))
                    .map(|(_, &i)| i)
                    .collect(),
                _ => Vec::new(),
            }
        };
        for i in dead {
            self.bury(i);
        }
    }

    /// Worker `i` has died: settles its jobs and forks a replacement.
    pub(super) fn bury(&mut self, i: usize) {
        self.receive(i); // what it finished before dying still counts
        let seat = &mut self.seats[i];
        let Some(process) = seat.process.take() else {
            return;
        };
        self.shared.clear_worker(i);
        let header = process.region.header();
        let started = header.jobs_started.0.load(Ordering::SeqCst);
        let running_item = header.item.0.load(Ordering::SeqCst) as u32;
        seat.busy_base += header.busy_ns.load(Ordering::Relaxed);
        let pid = process.pid().as_raw();
        let cause = process.reap(Duration::ZERO);
        if seat.retiring {
            trace::worker_exited(i, pid, cause);
        } else {
            trace::worker_died(i, pid, cause);
        }
        let began_unanswered = started > seat.answered;
        let stopped_at_soft_limit = seat.stopping.take().and_then(|s| s.timeout);
        let timed_out = seat
            .timed_out
            .take()
            .map(|(limit, _)| limit)
            .or(stopped_at_soft_limit);
        let recycled = mem::replace(&mut seat.retiring, false);
        let mut jobs = seat.take_all();
        let partials = mem::take(&mut seat.partials);
        let doomed = seat.doomed.take();
        let terminated = self.shared.is_terminated();
        if began_unanswered {
            if let Some(job) = jobs.pop_front() {
                let death = Death {
                    running: running_item,
                    partials,
                    timed_out,
                    pid,
                    cause,
                };
                self.answer_interrupted(job, death, terminated);
            }
        }
        // The rest were never begun: other workers take them, first.
        for mut job in jobs.into_iter().rev() {
            if terminated || job.requeues >= MAX_REQUEUES {
                let err = died(&job, pid, cause, terminated);
                settle(&self.shared, job, Err(err));
            } else {
                job.requeues += 1;
                self.retry.push_front(job);
            }
        }
        // The restart guard counts what makes a pool fork-loop: initializers that fail, and
        // workers that end on their own outside any task (see `self_inflicted`). A worker
        // killed from outside — by any signal that only comes from outside: an operator's
        // SIGHUP or SIGKILL, the OOM killer — is replaced without counting, whatever it was
        // doing (idle, starting, running its initializer).
        if !terminated && !recycled && !began_unanswered {
            if let Some(reason) = doomed {
                self.guard(reason);
            } else if self_inflicted(cause) {
                self.guard(format!("worker {pid} {cause} while idle"));
            }
        }
        if !terminated && self.guard.broken().is_none() {
            if !recycled {
                self.shared
                    .counters
                    .replaced
                    .fetch_add(1, Ordering::Relaxed);
                crate::meter::worker_replaced("local");
            }
            if let Err(err) = self.spawn(i) {
                trace::spawn_failed(i, &err);
                self.seats[i].spawn_error = Some((err, Instant::now()));
            }
        }
    }

    /// Answers the job a worker died running (or was killed for overrunning `timed_out`): a job
    /// of several items is split so that only item `running` fails or runs again (see
    /// `split`); a job of one item runs again under the retry policy, else fails.
    fn answer_interrupted(&mut self, job: Job, death: Death, terminated: bool) {
        let Death {
            running,
            partials,
            timed_out,
            pid,
            cause,
        } = death;
        let err = match timed_out {
            Some(limit) if !terminated => Error::Timeout {
                task: job.task.to_string(),
                limit,
                pid,
                attempts: job.attempts + 1,
            },
            _ => died(&job, pid, cause, terminated),
        };
        // A job whose frame is gone (its result had begun to arrive: the frame's buffer became
        // the result's) cannot be sent again.
        let may_run_again =
            !terminated && !job.internal && !job.is_cancelled() && !job.frame.is_empty();
        let again = may_run_again && job.attempts < self.settings.retry_policy(&job.task).0;
        let job = if may_run_again {
            match split::split(job, partials, running, &err, again) {
                Ok(parts) => {
                    if !again {
                        self.shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                        trace::task_failed(&err_task(&err), 1, Some(&err));
                    }
                    if let Some(rest) = parts.rest {
                        self.retry.push_front(rest);
                    }
                    if let Some(item) = parts.running {
                        retry_later(&mut self.delayed, &self.settings, &self.shared, item);
                    }
                    return;
                }
                Err(job) => job,
            }
        } else {
            job
        };
        if again {
            retry_later(&mut self.delayed, &self.settings, &self.shared, job);
        } else {
            settle(&self.shared, job, Err(err));
        }
    }
}

/// How the worker running a job ended: the item it was running, what it had reported of the
/// items before (partial result frames), and why it ended.
pub(super) struct Death {
    running: u32,
    partials: Vec<ResultFrame>,
    /// The job ran past this limit (hard, or soft and then stopped).
    timed_out: Option<Duration>,
    pid: i32,
    cause: crate::ExitCause,
}

impl Collector {
    /// Closed and drained: asks every worker to exit, and reaps them.
    pub(super) fn shutdown(&mut self) {
        for seat in &self.seats {
            if let Some(p) = &seat.process {
                envelope::send_small(p.region.jobs(), crate::wire::frame::shutdown_frame());
            }
        }
        for i in 0..self.seats.len() {
            if let Some(p) = self.seats[i].process.take() {
                self.shared.clear_worker(i);
                let pid = p.pid().as_raw();
                let cause = p.reap(EXIT_GRACE);
                trace::worker_exited(i, pid, cause);
            }
        }
    }

    /// Terminated: every worker is killed (by `Shared::terminate`) and reaped, every job
    /// resolves to `Terminated`.
    pub(super) fn terminate(&mut self) {
        for i in 0..self.seats.len() {
            let seat = &mut self.seats[i];
            if let Some(p) = seat.process.take() {
                self.shared.clear_worker(i);
                p.reap(Duration::ZERO);
            }
            for job in seat.take_all() {
                settle(&self.shared, job, Err(Error::Terminated));
            }
        }
        for job in self.retry.drain(..) {
            settle(&self.shared, job, Err(Error::Terminated));
        }
        for (_, job) in self.delayed.drain(..) {
            settle(&self.shared, job, Err(Error::Terminated));
        }
        while let Ok(job) = self.queue.try_recv() {
            settle(&self.shared, job, Err(Error::Terminated));
        }
    }
}
