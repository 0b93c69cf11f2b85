//! The parent's side of all of a pool's workers: one thread that feeds them jobs from the shared
//! queue, delivers their results, and replaces the ones that die.
//!
//! # How work flows
//!
//! Callers put jobs in the pool's queue. The collector moves them into the workers' job rings —
//! to the worker with the least work queued, and behind other jobs only while that worker's
//! queued work stays under [`TARGET_QUEUED_NS`]. Work is estimated per task from how long its
//! items took before (each result carries the worker's own timing); a task not yet measured goes
//! only to an idle worker. So tiny tasks stream without a pause, while long ones — or ones not
//! known to be short — go to whichever worker is free, as with Python's pool. It reads results from
//! the result rings in the same order and completes the jobs. Everything the collector does is
//! non-blocking: a frame that does not fit in a ring is sent in pieces as the worker makes room,
//! and when nothing can progress the collector sleeps in `poll` on the pool's bell (rung by
//! callers and by workers, only when the collector said it sleeps) and on every worker's pidfd.
//!
//! # When a worker dies
//!
//! Its pidfd becomes readable. The collector takes the results it finished, then looks at its
//! `jobs_started` counter: if it began a job it did not answer, that job (the first unanswered
//! one, since a worker runs its jobs in order) resolves to `WorkerDied`; the jobs behind it were
//! never begun and go to other workers. The region is discarded and a new worker forked.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::PollTimeout;

use super::guard::{InitSink, RestartGuard};
use super::jobqueue::{JobReceiver, TryRecvError};
use super::schedule::Estimates;
use super::seat::Seat;
use super::shared::Shared;
use crate::driver::settings::{Initializer, WorkerSettings};
use crate::job::Job;
use crate::start::WorkerProcess;
use crate::transport::envelope;
use crate::wire::frame::ResultFrame;
use crate::{sys, trace, Error, ExitCause};

/// How often to look for dead workers while busy.
const DEATH_CHECK: Duration = Duration::from_millis(5);
/// The longest the collector sleeps while jobs are out at workers. A worker wakes it when it
/// answers, but a task can sabotage that (it may close the bell: see `region::Bell`); this
/// bound turns such a lost wake-up into a delay, never a hang.
const MAX_SLEEP_WITH_JOBS_OUT_NS: u64 = 250_000_000;
/// How long the collector keeps looking for work before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

pub(crate) struct Collector {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: JobReceiver,
    pub(super) queue_open: bool,
    /// Jobs to send before the queue's: their worker died before it began them.
    pub(super) retry: VecDeque<Job>,
    pub(super) seats: Vec<Seat>,
    pub(super) last_death_check: Instant,
    /// Limits, recycling and the start method.
    pub(super) settings: WorkerSettings,
    /// The job every new worker runs first, and where its outcome goes.
    pub(super) initializer: Option<(Initializer, Arc<InitSink>)>,
    /// The restart guard (see `guard`).
    pub(super) guard: RestartGuard,
    /// What each task's items take (see `schedule`).
    pub(super) estimates: Estimates,
    /// The process's cancel epoch when this collector last looked at its jobs (see `cancel`).
    pub(super) cancel_epoch: u64,
    /// Jobs to run again once their backoff ends (monotonic ns), after a retried failure.
    pub(super) delayed: Vec<(u64, Job)>,
    /// Some registered task retries its panics: jobs keep their frames once sent.
    keeps_panics: bool,
}

impl Collector {
    /// Forks the pool's workers.
    pub(crate) fn start(
        shared: Arc<Shared>,
        queue: JobReceiver,
        mut settings: WorkerSettings,
    ) -> Result<Self, Error> {
        let mut collector = Collector {
            initializer: settings
                .initializer
                .take()
                .map(|init| (init, Arc::new(InitSink::default()))),
            settings,
            guard: RestartGuard::default(),
            seats: (0..shared.processes()).map(|_| Seat::new()).collect(),
            shared,
            queue,
            queue_open: true,
            retry: VecDeque::new(),
            last_death_check: Instant::now(),
            estimates: Estimates::default(),
            cancel_epoch: 0,
            delayed: Vec::new(),
            keeps_panics: crate::registry::any_retries_panics(),
        };
        for i in 0..collector.seats.len() {
            collector.spawn(i)?;
        }
        Ok(collector)
    }

    /// Serves jobs until the pool is closed and drained, or terminated.
    pub(crate) fn run(mut self) {
        let mut idle = 0u32;
        let mut idle_since = Instant::now();
        let mut turns = 0u32;
        loop {
            turns = turns.wrapping_add(1);
            if self.shared.is_terminated() {
                self.terminate();
                return;
            }
            let mut progress = false;
            for i in 0..self.seats.len() {
                progress |= self.receive(i);
                self.retire_if_done(i);
            }
            self.check_initializers();
            let epoch = crate::cancel::epoch();
            if epoch != self.cancel_epoch {
                self.cancel_epoch = epoch;
                self.stop_cancelled();
            }
            progress |= self.dispatch();
            self.check_timeouts();
            if self.finished() {
                self.shutdown();
                return;
            }
            // Reading the clock costs as much as a turn of a busy loop: look every 64 turns.
            if turns % 64 == 0 && self.last_death_check.elapsed() >= DEATH_CHECK {
                self.check_deaths(PollTimeout::ZERO);
            }
            if progress {
                idle = 0;
            } else {
                if idle == 0 {
                    idle_since = Instant::now();
                }
                idle += 1;
                if idle_since.elapsed() < SPIN {
                    if idle % 16 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                } else {
                    idle = 0;
                    self.sleep();
                }
            }
        }
    }

    /// Reads the results worker `i` has written. Returns whether anything was read.
    pub(super) fn receive(&mut self, i: usize) -> bool {
        let seat = &mut self.seats[i];
        // Taken out for the duration, so the seat's other fields can change meanwhile.
        let Some(process) = seat.process.take() else {
            return false;
        };
        let ring = process.region.results();
        let mut progress = false;
        loop {
            let spare = |partial: bool| {
                seat.in_flight
                    .front_mut()
                    .filter(|(job, _)| !job.keep_frame && !partial)
                    .map(|(job, _)| (std::mem::take(&mut job.frame), job.recycle))
                    .unwrap_or_default()
            };
            match seat.incoming.pull(ring, spare) {
                Ok((0, None)) => break,
                Ok((_, None)) => progress = true,
                Ok((_, Some((frame, busy_ns)))) if busy_ns == envelope::PARTIAL => {
                    progress = true;
                    if seat.in_flight.is_empty() {
                        kill(&process);
                        break;
                    }
                    seat.partials.push(ResultFrame::parse(frame));
                }
                Ok((_, Some((frame, busy_ns)))) => {
                    progress = true;
                    match seat.pop() {
                        Some(job) => {
                            seat.answered += 1;
                            if seat.stopping.is_some_and(|s| s.seq < seat.answered) {
                                seat.stopping = None; // the stopped job returned
                            }
                            if !job.internal && self.guard.answered() {
                                // A worker of the round after a backoff did real work: healed.
                                trace::pool_healed();
                            }
                            self.estimates.learn(&job, busy_ns);
                            if !job.internal {
                                crate::meter::task_seconds(
                                    "local",
                                    busy_ns as f64 / 1e9 / f64::from(job.items.max(1)),
                                );
                            }
                            let busy = process.region.header().busy_ns.load(Ordering::Relaxed);
                            self.shared.counters.busy_ns[i]
                                .store(seat.busy_base + busy, Ordering::Relaxed);
                            // The one place the parent parses a result frame's header.
                            let mut frame = ResultFrame::parse(frame);
                            if !seat.partials.is_empty() {
                                let mut all = std::mem::take(&mut seat.partials);
                                all.push(frame);
                                frame = crate::wire::frame::split::join(all);
                            }
                            if job.keep_frame
                                && frame.failed(job.items) > 0
                                && frame.has_panic()
                                && job.attempts < self.settings.retry_policy(&job.task).0
                            {
                                // Only the items that panicked run again; the others
                                // keep their answers, and count as completed now.
                                let items = job.items;
                                let job = match super::split::retry_panicked(job, &frame) {
                                    Ok(panicked) => {
                                        self.shared.counters.completed.fetch_add(
                                            u64::from(items - panicked.items),
                                            Ordering::Relaxed,
                                        );
                                        panicked
                                    }
                                    Err(whole) => whole,
                                };
                                retry_later(&mut self.delayed, &self.settings, &self.shared, job);
                            } else {
                                settle(&self.shared, job, Ok(frame));
                            }
                        }
                        None => {
                            // A result for no job: the worker is out of step. Kill it; its
                            // death is handled like any other.
                            kill(&process);
                            break;
                        }
                    }
                }
                Err(()) => {
                    kill(&process);
                    break;
                }
            }
        }
        if progress {
            ring.wake_producer();
        }
        seat.process = Some(process);
        progress
    }

    /// The next job to send: retries first, then the queue. (The caller answers the jobs
    /// cancelled meanwhile instead of sending them; `settle` does.)
    ///
    /// Inlined: a job is moved out of the queue once, into its seat, not through a chain of
    /// returns (each copy of a job just written costs a stalled load: see `Job`).
    #[inline(always)]
    pub(super) fn next_job(&mut self) -> Option<Job> {
        if !self.delayed.is_empty() {
            // Retries whose backoff has ended go first, with the other jobs to send again.
            let now = sys::monotonic_ns();
            let mut i = 0;
            while i < self.delayed.len() {
                if self.delayed[i].0 <= now {
                    let (_, job) = self.delayed.swap_remove(i);
                    self.retry.push_back(job);
                } else {
                    i += 1;
                }
            }
        }
        if let Some(job) = self.retry.pop_front() {
            return Some(job);
        }
        if !self.queue_open {
            return None;
        }
        match self.queue.try_recv() {
            Ok(job) => Some(job),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.queue_open = false;
                None
            }
        }
    }

    /// Something was cancelled: answers the cancelled jobs waiting here and stops the ones at
    /// workers (see `cancel`).
    fn stop_cancelled(&mut self) {
        let (cancelled, kept): (VecDeque<Job>, VecDeque<Job>) =
            self.retry.drain(..).partition(Job::is_cancelled);
        self.retry = kept;
        let (waiting, delayed): (Vec<_>, Vec<_>) = self
            .delayed
            .drain(..)
            .partition(|(_, job)| job.is_cancelled());
        self.delayed = delayed;
        for job in cancelled
            .into_iter()
            .chain(waiting.into_iter().map(|(_, job)| job))
        {
            settle(&self.shared, job, Err(Error::Cancelled));
        }
        let now = sys::monotonic_ns();
        let grace = self
            .settings
            .cancel_grace()
            .as_nanos()
            .min(u64::MAX as u128) as u64;
        for seat in &mut self.seats {
            seat.stop_cancelled(now, grace);
        }
    }

    /// Sends jobs to workers with room for them. Returns whether anything was sent.
    fn dispatch(&mut self) -> bool {
        let mut progress = false;
        for seat in &mut self.seats {
            progress |= seat.send_more();
        }
        self.respawn_missing();
        if self.seats.iter().all(|s| s.process.is_none()) {
            self.fail_without_workers();
            return progress;
        }
        while let Some(mut job) = self.next_job() {
            if self.cancel_epoch != 0 && job.is_cancelled() {
                settle(&self.shared, job, Err(Error::Cancelled));
                continue;
            }
            let expected = self.estimates.of(&job);
            let best = self
                .seats
                .iter()
                .enumerate()
                .filter(|(_, s)| s.can_take(expected, self.settings.max_tasks_per_child))
                .min_by_key(|(_, s)| s.load())
                .map(|(i, _)| i);
            let Some(i) = best else {
                self.retry.push_front(job);
                break;
            };
            if self.keeps_panics && !job.internal {
                job.keep_frame = self.settings.retry_policy(&job.task).1;
            }
            self.seats[i].push(job, expected);
            progress = true;
        }
        progress
    }

    /// Whether the pool is closed and every job is answered.
    pub(super) fn finished(&mut self) -> bool {
        if !self.retry.is_empty()
            || !self.delayed.is_empty()
            || self.seats.iter().any(|s| !s.in_flight.is_empty())
        {
            return false;
        }
        if self.queue_open {
            match self.queue.try_recv() {
                Ok(job) => {
                    self.retry.push_back(job);
                    return false;
                }
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => self.queue_open = false,
            }
        }
        !self.queue_open
    }

    /// Whether something can progress without waiting.
    fn has_work(&self) -> bool {
        if self.shared.is_terminated() {
            return true;
        }
        if let Some(job) = self.retry.front() {
            let expected = self.estimates.of(job);
            if self
                .seats
                .iter()
                .any(|s| s.can_take(expected, self.settings.max_tasks_per_child))
            {
                return true;
            }
        } else if !self.queue.is_empty()
            && self
                .seats
                .iter()
                .any(|s| s.can_take(Some(0), self.settings.max_tasks_per_child))
        {
            return true;
        }
        self.seats.iter().any(|s| match &s.process {
            Some(p) => {
                p.region.results().readable() > 0
                    || (s.sending.is_some() && p.region.jobs().writable() > 0)
            }
            None => false,
        })
    }

    /// Sleeps until a caller or a worker rings the bell, or a worker dies.
    fn sleep(&mut self) {
        for seat in &self.seats {
            if let Some(p) = &seat.process {
                p.region.parent_will_sleep();
            }
        }
        self.shared.set_collector_sleeping(true);
        if self.has_work() || self.finished() {
            self.shared.set_collector_sleeping(false);
            return;
        }
        let waiting_to_respawn = self.seats.iter().any(|s| s.process.is_none());
        let mut wake_in_ns = self.check_timeouts();
        if waiting_to_respawn {
            wake_in_ns = Some(wake_in_ns.unwrap_or(u64::MAX).min(100_000_000));
        }
        if let Some(due) = self.delayed.iter().map(|(due, _)| *due).min() {
            let ns = due.saturating_sub(sys::monotonic_ns()).max(1);
            wake_in_ns = Some(wake_in_ns.unwrap_or(u64::MAX).min(ns));
        }
        if self.seats.iter().any(|s| !s.in_flight.is_empty()) {
            wake_in_ns = Some(
                wake_in_ns
                    .unwrap_or(u64::MAX)
                    .min(MAX_SLEEP_WITH_JOBS_OUT_NS),
            );
        }
        let timeout = match wake_in_ns {
            // Rounded up to whole milliseconds, at most about 24 days.
            Some(ns) => {
                let ms = ns.div_ceil(1_000_000).clamp(1, i32::MAX as u64) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        self.check_deaths(timeout);
        self.shared.set_collector_sleeping(false);
        sys::eventfd_drain(self.shared.bell_fd());
    }
}

/// Resolves a job and counts its items as completed, failed or cancelled. A cancelled job's
/// outcome is `Cancelled`, whatever its worker answered.
pub(super) fn settle(shared: &Shared, job: Job, outcome: Result<ResultFrame, Error>) {
    if job.internal {
        job.complete(outcome);
        return;
    }
    let items = u64::from(job.items);
    if crate::cancel::epoch() != 0 && job.is_cancelled() {
        crate::meter::cancelled("local", items);
        shared
            .counters
            .cancelled
            .fetch_add(items, Ordering::Relaxed);
        job.complete(Err(Error::Cancelled));
        return;
    }
    let failed = match &outcome {
        Ok(frame) => u64::from(frame.failed(job.items)),
        Err(_) => items,
    };
    if failed > 0 {
        match &outcome {
            Ok(frame) => trace::task_items_failed(&job.task, failed, frame),
            Err(err) => trace::task_failed(&job.task, failed, Some(err)),
        }
    }
    crate::meter::settled("local", items.saturating_sub(failed), failed);
    let counters = &shared.counters;
    counters.failed.fetch_add(failed, Ordering::Relaxed);
    counters
        .completed
        .fetch_add(items.saturating_sub(failed), Ordering::Relaxed);
    job.complete(outcome);
}

/// Puts `job` back to run again after its backoff (a retried failure), counting its items as
/// retried.
pub(super) fn retry_later(
    delayed: &mut Vec<(u64, Job)>,
    settings: &WorkerSettings,
    shared: &Shared,
    mut job: Job,
) {
    job.attempts += 1;
    let wait = settings.backoff(job.attempts);
    trace::task_retrying(&job.task, job.attempts, wait);
    crate::meter::retried("local", u64::from(job.items));
    shared
        .counters
        .retried
        .fetch_add(u64::from(job.items), Ordering::Relaxed);
    let due = sys::monotonic_ns().saturating_add(wait.as_nanos().min(u64::MAX as u128) as u64);
    delayed.push((due, job));
}

pub(super) fn kill(process: &WorkerProcess) {
    let _ = nix::sys::signal::kill(process.pid(), nix::sys::signal::Signal::SIGKILL);
}

pub(super) fn died(job: &Job, pid: i32, cause: ExitCause, terminated: bool) -> Error {
    if terminated {
        Error::Terminated
    } else {
        Error::WorkerDied {
            task: job.task.to_string(),
            pid,
            cause,
            attempts: job.attempts + 1,
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Normally every worker is reaped already; if the thread unwinds, none is left behind.
        for i in 0..self.seats.len() {
            if let Some(p) = self.seats[i].process.take() {
                self.shared.clear_worker(i);
                p.reap(Duration::ZERO);
            }
        }
    }
}
