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
use std::mem;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, Signal};

use crate::builder::{Initializer, WorkerSettings};
use crate::job::{Job, Sink};
use crate::jobqueue::{JobReceiver, TryRecvError};
use crate::shared::Shared;
use crate::start::{self, WorkerProcess};
use crate::transport::region::EXIT_BELL_LOST;
use crate::worker::MAX_FRAME;
use crate::{sys, trace, Error, ExitCause};

/// How much work (in the worker's own measured time) to keep queued at each worker.
const TARGET_QUEUED_NS: u64 = 200_000;
/// Jobs in flight per worker at most.
const MAX_DEPTH: usize = 1024;
/// How often to look for dead workers while busy.
const DEATH_CHECK: Duration = Duration::from_millis(5);
/// How long a worker asked to exit gets before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a worker whose task ran out of time gets between SIGTERM and SIGKILL.
const KILL_GRACE_NS: u64 = 100_000_000;
/// The restart guard: more worker failures outside any task than this within `GUARD_WINDOW`
/// and the pool stops replacing workers — for a while: it tries again after a backoff that
/// starts at `GUARD_BACKOFF` and doubles on each trip up to `GUARD_BACKOFF_MAX`. While it
/// backs off, work no live worker can take fails with `PoolBroken`; once a worker of the next
/// round answers a job, the pool is healed and the backoff starts over.
const GUARD_FAILURES: usize = 10;
const GUARD_WINDOW: Duration = Duration::from_secs(10);
const GUARD_BACKOFF: Duration = Duration::from_secs(1);
const GUARD_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest the collector sleeps while jobs are out at workers. A worker wakes it when it
/// answers, but a task can sabotage that (it may close the bell: see `region::Bell`); this
/// bound turns such a lost wake-up into a delay, never a hang.
const MAX_SLEEP_WITH_JOBS_OUT_NS: u64 = 250_000_000;
/// How many times a job goes back to the queue because its worker died before starting it.
const MAX_REQUEUES: u8 = 3;
/// How long the collector keeps looking for work before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

pub(crate) struct Collector {
    shared: Arc<Shared>,
    queue: JobReceiver,
    queue_open: bool,
    /// Jobs to send before the queue's: their worker died before it began them.
    retry: VecDeque<Job>,
    slots: Vec<Slot>,
    last_death_check: Instant,
    /// Limits, recycling and the start method.
    settings: WorkerSettings,
    /// The job every new worker runs first, and where its outcome goes.
    initializer: Option<(Initializer, Arc<InitSink>)>,
    /// When workers failed outside any task (initializer failures, deaths while idle).
    recent_failures: VecDeque<Instant>,
    /// Set when the restart guard tripped: no workers are started until `retry_at`.
    broken: Option<Error>,
    /// When to start workers again after the guard tripped.
    retry_at: Option<Instant>,
    /// The backoff for the guard's next trip.
    backoff: Duration,
    /// Set after a backoff, until a worker answers a job: one more failure outside any task
    /// trips the guard again (with a doubled backoff).
    probation: bool,
    /// Nanoseconds per item, by task name (a moving average of what workers reported). A short
    /// list: programs have few tasks, and comparing names beats hashing them per job.
    estimates: Vec<(Box<str>, u64)>,
}

/// One worker and the jobs at it.
struct Slot {
    process: Option<WorkerProcess>,
    /// Jobs sent (or being sent), oldest first, with their expected run time (`None`: unknown);
    /// results come back in this order.
    in_flight: VecDeque<(Job, Option<u64>)>,
    /// The sum of the known expected run times in flight, and how many are unknown.
    queued_ns: u64,
    unknown: usize,
    /// How many jobs in flight have a time limit (so the loop need not scan for them).
    limited: usize,
    /// How many bytes of the newest job's `len ++ frame` are written, while it is incomplete.
    sending: Option<usize>,
    incoming: Incoming,
    /// Results received from the current process.
    answered: u64,
    /// Busy time of this slot's earlier processes, in nanoseconds.
    busy_base: u64,
    /// Why the last fork failed, and when to try again.
    spawn_error: Option<(Error, Instant)>,
    /// Jobs of the program (not the initializer) sent to the current process, for
    /// `max_tasks_per_child`.
    sent: u64,
    /// The current process was asked to exit after its quota of jobs or memory.
    retiring: bool,
    /// The current process grew past `max_memory_per_child`: no more jobs go to it.
    over_memory: bool,
    /// Why the collector killed this worker outside any task (its initializer failed).
    doomed: Option<String>,
    /// The running job ran past `limit`; the worker got SIGTERM and gets SIGKILL at
    /// `sigkill_at` (monotonic ns) if it is still there.
    timed_out: Option<(Duration, u64)>,
}

/// A result frame being read: its header (`len:u64 busy_ns:u64`), then its body.
#[derive(Default)]
struct Incoming {
    head: [u8; 16],
    head_got: usize,
    body: Option<Vec<u8>>,
    /// The length of the frame being read into `body`.
    want: usize,
}

impl Incoming {
    /// Reads what is available; returns the bytes consumed and a completed frame with the
    /// worker's run time for it, if any. `spare` gives a buffer for a new frame: the frame of
    /// the job being answered, which the caller allocated and will free, so no buffer is freed
    /// by a thread other than the one that made it; and whether to use it whatever its size
    /// (see `Job::recycle`).
    #[allow(clippy::type_complexity)]
    fn pull(
        &mut self,
        ring: &crate::transport::ring::Ring,
        spare: impl FnOnce() -> (Vec<u8>, bool),
    ) -> Result<(usize, Option<(Vec<u8>, u64)>), ()> {
        let mut consumed = 0;
        if self.body.is_none() {
            let n = ring.read(&mut self.head[self.head_got..]);
            consumed += n;
            self.head_got += n;
            if self.head_got < 16 {
                return Ok((consumed, None));
            }
            let len = u64::from_le_bytes(self.head[..8].try_into().expect("8 bytes"));
            if len > MAX_FRAME {
                return Err(());
            }
            let len = len as usize;
            let (mut body, recycle) = spare();
            let oversized = body.capacity() > 64 << 10 && body.capacity() / 4 > len;
            if body.capacity() < len || (oversized && !recycle) {
                // Too small, or so much larger than needed that holding on to it would waste
                // memory while the result waits to be read.
                body = Vec::with_capacity(len);
            }
            body.clear();
            self.body = Some(body);
            self.want = len;
        }
        let body = self.body.as_mut().expect("set above");
        // Read without zeroing first: the whole body is overwritten.
        consumed += ring.read_append(body, self.want - body.len());
        if body.len() < self.want {
            return Ok((consumed, None));
        }
        let busy = u64::from_le_bytes(self.head[8..].try_into().expect("8 bytes"));
        let frame = self.body.take().map(|f| (f, busy));
        self.head_got = 0;
        Ok((consumed, frame))
    }
}

impl Slot {
    fn new() -> Self {
        Slot {
            process: None,
            in_flight: VecDeque::new(),
            limited: 0,
            queued_ns: 0,
            unknown: 0,
            sending: None,
            incoming: Incoming::default(),
            answered: 0,
            busy_base: 0,
            spawn_error: None,
            sent: 0,
            retiring: false,
            over_memory: false,
            timed_out: None,
            doomed: None,
        }
    }

    /// Whether a job expected to run `expected` ns (`None`: unknown) may go to this worker now:
    /// always when it is idle; behind other jobs only when all are known and short.
    fn can_take(&self, expected: Option<u64>, max_jobs: Option<u64>) -> bool {
        if self.process.is_none()
            || self.sending.is_some()
            || self.retiring
            || self.over_memory
            || self.timed_out.is_some()
            || self.doomed.is_some()
            || max_jobs.is_some_and(|max| self.sent >= max)
        {
            return false;
        }
        if self.in_flight.is_empty() {
            return true;
        }
        match expected {
            Some(ns) => {
                self.unknown == 0
                    && self.in_flight.len() < MAX_DEPTH
                    && self.queued_ns.saturating_add(ns) <= TARGET_QUEUED_NS
            }
            None => false,
        }
    }

    /// Work queued here, for choosing the least loaded worker.
    fn load(&self) -> (usize, u64, usize) {
        (self.unknown, self.queued_ns, self.in_flight.len())
    }

    fn push(&mut self, job: Job, expected: Option<u64>) {
        if !job.internal {
            self.sent += 1;
        }
        match expected {
            Some(ns) => self.queued_ns += ns,
            None => self.unknown += 1,
        }
        self.limited += usize::from(job.limit.is_some());
        self.in_flight.push_back((job, expected));
        self.sending = Some(0);
        self.send_more();
    }

    fn pop(&mut self) -> Option<Job> {
        let (job, expected) = self.in_flight.pop_front()?;
        self.limited -= usize::from(job.limit.is_some());
        match expected {
            Some(ns) => self.queued_ns -= ns,
            None => self.unknown -= 1,
        }
        Some(job)
    }

    fn take_all(&mut self) -> VecDeque<Job> {
        self.queued_ns = 0;
        self.unknown = 0;
        self.limited = 0;
        self.sending = None;
        self.in_flight.drain(..).map(|(job, _)| job).collect()
    }

    /// Writes as much of the newest job as fits. Returns whether any byte moved.
    fn send_more(&mut self) -> bool {
        let (Some(process), Some(offset), Some((job, _))) =
            (&self.process, self.sending, self.in_flight.back())
        else {
            return false;
        };
        let ring = process.region.jobs();
        let len = job.wire_len();
        let prefix = (len as u64).to_le_bytes();
        let at = if job.spliced.is_empty() {
            // Nearly every job: the frame is one buffer.
            let pieces = [&prefix[..], &job.frame[..]];
            offset + crate::wire::splice::write_from(ring, pieces.into_iter(), offset)
        } else {
            let pieces = std::iter::once(&prefix[..]).chain(job.wire_pieces());
            offset + crate::wire::splice::write_from(ring, pieces, offset)
        };
        let moved = at > offset;
        if moved {
            ring.wake_consumer();
        }
        self.sending = (at < prefix.len() + len).then_some(at);
        moved
    }
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
            recent_failures: VecDeque::new(),
            broken: None,
            retry_at: None,
            backoff: GUARD_BACKOFF,
            probation: false,
            slots: (0..shared.processes()).map(|_| Slot::new()).collect(),
            shared,
            queue,
            queue_open: true,
            retry: VecDeque::new(),
            last_death_check: Instant::now(),
            estimates: Vec::new(),
        };
        for i in 0..collector.slots.len() {
            collector.spawn(i)?;
        }
        Ok(collector)
    }

    fn spawn(&mut self, i: usize) -> Result<(), Error> {
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
        let slot = &mut self.slots[i];
        slot.process = Some(process);
        slot.answered = 0;
        slot.sent = 0;
        slot.retiring = false;
        slot.over_memory = false;
        slot.timed_out = None;
        slot.doomed = None;
        slot.incoming = Incoming::default();
        slot.spawn_error = None;
        if let Some((init, sink)) = &self.initializer {
            // First in line at the new worker; its outcome goes to the init sink, keyed by pid.
            let frame = init.frame.clone().expect("checked at build");
            let pid = slot.process.as_ref().map_or(0, |p| p.pid().as_raw());
            let sink: Arc<dyn Sink> = sink.clone();
            let mut job = Job::new(frame, init.task.into(), sink, pid as usize);
            job.internal = true;
            slot.push(job, None);
        }
        if self.broken.is_none() && self.slots.iter().all(|s| s.spawn_error.is_none()) {
            self.shared.set_degraded(None);
        }
        Ok(())
    }

    /// Records a worker failure outside any task; trips the restart guard when they come too
    /// fast.
    fn guard(&mut self, what: String) {
        let now = Instant::now();
        self.recent_failures.push_back(now);
        while self
            .recent_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > GUARD_WINDOW)
        {
            self.recent_failures.pop_front();
        }
        let tripped = self.recent_failures.len() > GUARD_FAILURES || self.probation;
        if tripped && self.broken.is_none() {
            let reason = format!(
                "workers failed {} times in {:?} outside any task (the last: {what}); \
                 trying again in {:?}",
                self.recent_failures.len(),
                GUARD_WINDOW,
                self.backoff
            );
            trace::pool_broken(&reason);
            self.shared.set_degraded(Some(reason.clone()));
            self.broken = Some(Error::PoolBroken(reason));
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(GUARD_BACKOFF_MAX);
            self.recent_failures.clear();
            self.probation = false;
        }
    }

    /// After the guard's backoff: starts workers again, on probation.
    fn end_backoff(&mut self) {
        if self.broken.is_some() && self.retry_at.is_some_and(|at| Instant::now() >= at) {
            self.broken = None;
            self.retry_at = None;
            self.probation = true;
            self.shared.set_degraded(None);
            trace::pool_retrying();
        }
    }

    /// Kills workers whose initializer failed (they are replaced like any dead worker).
    fn check_initializers(&mut self) {
        let Some((_, sink)) = &self.initializer else {
            return;
        };
        let failures =
            mem::take(&mut *sink.failures.lock().unwrap_or_else(PoisonError::into_inner));
        for (pid, err) in failures {
            let reason = format!("the initializer failed: {err}");
            let mut found = false;
            for slot in &mut self.slots {
                if let Some(p) = &slot.process {
                    if p.pid().as_raw() == pid {
                        kill(p);
                        slot.doomed = Some(reason.clone());
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
            for i in 0..self.slots.len() {
                progress |= self.receive(i);
                self.retire_if_done(i);
            }
            self.check_initializers();
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
    fn receive(&mut self, i: usize) -> bool {
        let slot = &mut self.slots[i];
        // Taken out for the duration, so the slot's other fields can change meanwhile.
        let Some(process) = slot.process.take() else {
            return false;
        };
        let ring = process.region.results();
        let mut progress = false;
        loop {
            let spare = || {
                slot.in_flight
                    .front_mut()
                    .map(|(job, _)| (std::mem::take(&mut job.frame), job.recycle))
                    .unwrap_or_default()
            };
            match slot.incoming.pull(ring, spare) {
                Ok((0, None)) => break,
                Ok((_, None)) => progress = true,
                Ok((_, Some((frame, busy_ns)))) => {
                    progress = true;
                    match slot.pop() {
                        Some(job) => {
                            slot.answered += 1;
                            if self.probation && !job.internal {
                                // A worker of the round after a backoff did real work: healed.
                                self.probation = false;
                                self.backoff = GUARD_BACKOFF;
                                trace::pool_healed();
                            }
                            learn(&mut self.estimates, &job, busy_ns);
                            let busy = process.region.header().busy_ns.load(Ordering::Relaxed);
                            self.shared.counters.busy_ns[i]
                                .store(slot.busy_base + busy, Ordering::Relaxed);
                            settle(&self.shared, job, Ok(frame));
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
        slot.process = Some(process);
        progress
    }

    /// How long `job` is expected to run, from what its task's items took before.
    fn estimate(&self, job: &Job) -> Option<u64> {
        let name: &str = job.task.as_ref();
        let (_, per_item) = self.estimates.iter().find(|(n, _)| &**n == name)?;
        Some(per_item.saturating_mul(job.items.max(1) as u64))
    }

    /// The next job to send: retries first, then the queue.
    fn next_job(&mut self) -> Option<Job> {
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

    /// Sends jobs to workers with room for them. Returns whether anything was sent.
    fn dispatch(&mut self) -> bool {
        let mut progress = false;
        for slot in &mut self.slots {
            progress |= slot.send_more();
        }
        self.respawn_missing();
        if self.slots.iter().all(|s| s.process.is_none()) {
            self.fail_without_workers();
            return progress;
        }
        while let Some(job) = self.next_job() {
            let expected = self.estimate(&job);
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.can_take(expected, self.settings.max_tasks_per_child))
                .min_by_key(|(_, s)| s.load())
                .map(|(i, _)| i);
            let Some(i) = best else {
                self.retry.push_front(job);
                break;
            };
            self.slots[i].push(job, expected);
            progress = true;
        }
        progress
    }

    /// Forks replacements for slots without a worker (after a failed fork, at most every
    /// 100 ms).
    fn respawn_missing(&mut self) {
        self.end_backoff();
        if self.broken.is_some() {
            return;
        }
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.process.is_some() {
                continue;
            }
            if matches!(&slot.spawn_error, Some((_, at)) if at.elapsed() < Duration::from_millis(100))
            {
                continue;
            }
            if let Err(err) = self.spawn(i) {
                self.slots[i].spawn_error = Some((err, Instant::now()));
            }
        }
    }

    /// No worker could be started: jobs fail with the reason instead of waiting forever.
    fn fail_without_workers(&mut self) {
        let err = self.broken.clone().unwrap_or_else(|| {
            self.slots
                .iter()
                .find_map(|s| s.spawn_error.as_ref().map(|(e, _)| e.clone()))
                .unwrap_or(Error::Terminated)
        });
        while let Some(job) = self.next_job() {
            settle(&self.shared, job, Err(err.clone()));
        }
    }

    /// Whether the pool is closed and every job is answered.
    fn finished(&mut self) -> bool {
        if !self.retry.is_empty() || self.slots.iter().any(|s| !s.in_flight.is_empty()) {
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
            let expected = self.estimate(job);
            if self
                .slots
                .iter()
                .any(|s| s.can_take(expected, self.settings.max_tasks_per_child))
            {
                return true;
            }
        } else if !self.queue.is_empty()
            && self
                .slots
                .iter()
                .any(|s| s.can_take(Some(0), self.settings.max_tasks_per_child))
        {
            return true;
        }
        self.slots.iter().any(|s| match &s.process {
            Some(p) => {
                p.region.results().readable() > 0
                    || (s.sending.is_some() && p.region.jobs().writable() > 0)
            }
            None => false,
        })
    }

    /// Sleeps until a caller or a worker rings the bell, or a worker dies.
    fn sleep(&mut self) {
        for slot in &self.slots {
            if let Some(p) = &slot.process {
                p.region.parent_will_sleep();
            }
        }
        self.shared.set_collector_sleeping(true);
        if self.has_work() || self.finished() {
            self.shared.set_collector_sleeping(false);
            return;
        }
        let waiting_to_respawn = self.slots.iter().any(|s| s.process.is_none());
        let mut wake_in_ns = self.check_timeouts();
        if waiting_to_respawn {
            wake_in_ns = Some(wake_in_ns.unwrap_or(u64::MAX).min(100_000_000));
        }
        if self.slots.iter().any(|s| !s.in_flight.is_empty()) {
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

    /// A worker that has answered its quota of jobs (`max_tasks_per_child`) is asked to exit;
    /// its death is then handled like any other, and a fresh worker takes its slot.
    fn retire_if_done(&mut self, i: usize) {
        if self.settings.max_tasks_per_child.is_none()
            && self.settings.max_memory_per_child.is_none()
        {
            return;
        }
        let slot = &mut self.slots[i];
        let Some(process) = &slot.process else {
            return;
        };
        if slot.retiring {
            return;
        }
        if let Some(limit) = self.settings.max_memory_per_child {
            let rss = process.region.header().rss_bytes.load(Ordering::Relaxed);
            if rss > limit && slot.answered > 0 {
                // Billiard's rule: checked after a job; the worker gets no more work.
                slot.over_memory = true;
            }
        }
        let quota_done = self
            .settings
            .max_tasks_per_child
            .is_some_and(|max| slot.sent >= max);
        if !(quota_done || slot.over_memory) || !slot.in_flight.is_empty() {
            return;
        }
        slot.retiring = true;
        trace::worker_recycled(i, process.pid().as_raw());
        let ring = process.region.jobs();
        let frame = crate::wire::frame::shutdown_frame();
        ring.write(&(frame.len() as u64).to_le_bytes());
        ring.write(frame);
        ring.wake_consumer();
    }

    /// Kills workers whose running job is past its limit (SIGTERM, then SIGKILL after a grace).
    /// Returns how long until the next limit or grace ends, if any.
    fn check_timeouts(&mut self) -> Option<u64> {
        let limited = self
            .slots
            .iter()
            .any(|s| s.timed_out.is_some() || s.limited > 0);
        if !limited {
            return None;
        }
        let now = sys::monotonic_ns();
        let mut next: Option<u64> = None;
        let mut soonest = |ns: u64| next = Some(next.map_or(ns, |n| n.min(ns)));
        for slot in &mut self.slots {
            let Some(process) = &slot.process else {
                continue;
            };
            if let Some((_, sigkill_at)) = &mut slot.timed_out {
                if now >= *sigkill_at {
                    let _ = signal::kill(process.pid(), Signal::SIGKILL);
                    *sigkill_at = u64::MAX;
                } else if *sigkill_at != u64::MAX {
                    soonest(*sigkill_at - now);
                }
                continue;
            }
            let header = process.region.header();
            let started = header.jobs_started.0.load(Ordering::SeqCst);
            let running = started.checked_sub(slot.answered + 1).map(|i| i as usize);
            for (index, (job, _)) in slot.in_flight.iter().enumerate() {
                let Some(limit) = job.limit else { continue };
                let limit_ns = limit.as_nanos().min(u64::MAX as u128) as u64;
                if Some(index) == running {
                    let began = header.job_started_ns.load(Ordering::Relaxed);
                    let elapsed = now.saturating_sub(began);
                    if elapsed >= limit_ns {
                        let _ = signal::kill(process.pid(), Signal::SIGTERM);
                        trace::task_timed_out(&job.task, limit, process.pid().as_raw());
                        slot.timed_out = Some((limit, now + KILL_GRACE_NS));
                        soonest(KILL_GRACE_NS);
                        break;
                    }
                    soonest(limit_ns - elapsed);
                } else if running.is_none_or(|r| index > r) {
                    // Not begun yet: its limit cannot run out sooner than a full limit from now.
                    soonest(limit_ns);
                }
            }
        }
        next
    }

    /// Polls the bell and the pidfds; handles every worker that died.
    fn check_deaths(&mut self, timeout: PollTimeout) {
        self.last_death_check = Instant::now();
        let dead: Vec<usize> = {
            let mut fds = vec![PollFd::new(
                self.shared.bell_fd().as_fd(),
                PollFlags::POLLIN,
            )];
            let mut owners = Vec::new();
            for (i, slot) in self.slots.iter().enumerate() {
                if let Some(p) = &slot.process {
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
    fn bury(&mut self, i: usize) {
        self.receive(i); // what it finished before dying still counts
        let slot = &mut self.slots[i];
        let Some(process) = slot.process.take() else {
            return;
        };
        self.shared.clear_worker(i);
        let header = process.region.header();
        let started = header.jobs_started.0.load(Ordering::SeqCst);
        slot.busy_base += header.busy_ns.load(Ordering::Relaxed);
        let pid = process.pid().as_raw();
        let cause = process.reap(Duration::ZERO);
        if slot.retiring {
            trace::worker_exited(i, pid, cause);
        } else {
            trace::worker_died(i, pid, cause);
        }
        let began_unanswered = started > slot.answered;
        let timed_out = slot.timed_out.take();
        let recycled = mem::replace(&mut slot.retiring, false);
        let mut jobs = slot.take_all();
        let terminated = self.shared.is_terminated();
        if began_unanswered {
            if let Some(job) = jobs.pop_front() {
                let err = match timed_out {
                    Some((limit, _)) if !terminated => Error::Timeout {
                        task: job.task.to_string(),
                        limit,
                        pid,
                    },
                    _ => died(&job, pid, cause, terminated),
                };
                settle(&self.shared, job, Err(err));
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
        let doomed = slot.doomed.take();
        if !terminated && !recycled && !began_unanswered {
            if let Some(reason) = doomed {
                self.guard(reason);
            } else if self_inflicted(cause) {
                self.guard(format!("worker {pid} {cause} while idle"));
            }
        }
        if !terminated && self.broken.is_none() {
            if !recycled {
                self.shared
                    .counters
                    .replaced
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let Err(err) = self.spawn(i) {
                trace::spawn_failed(i, &err);
                self.slots[i].spawn_error = Some((err, Instant::now()));
            }
        }
    }

    /// Closed and drained: asks every worker to exit, and reaps them.
    fn shutdown(&mut self) {
        for slot in &self.slots {
            if let Some(p) = &slot.process {
                let frame = crate::wire::frame::shutdown_frame();
                let ring = p.region.jobs();
                ring.write(&(frame.len() as u64).to_le_bytes());
                ring.write(frame);
                ring.wake_consumer();
            }
        }
        for i in 0..self.slots.len() {
            if let Some(p) = self.slots[i].process.take() {
                self.shared.clear_worker(i);
                let pid = p.pid().as_raw();
                let cause = p.reap(EXIT_GRACE);
                trace::worker_exited(i, pid, cause);
            }
        }
    }

    /// Terminated: every worker is killed (by `Shared::terminate`) and reaped, every job
    /// resolves to `Terminated`.
    fn terminate(&mut self) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(p) = slot.process.take() {
                self.shared.clear_worker(i);
                p.reap(Duration::ZERO);
            }
            for job in slot.take_all() {
                settle(&self.shared, job, Err(Error::Terminated));
            }
        }
        for job in self.retry.drain(..) {
            settle(&self.shared, job, Err(Error::Terminated));
        }
        while let Ok(job) = self.queue.try_recv() {
            settle(&self.shared, job, Err(Error::Terminated));
        }
    }
}

/// Receives initializer outcomes (part = the worker's pid) for the collector to act on.
#[derive(Default)]
pub(crate) struct InitSink {
    failures: Mutex<Vec<(i32, Error)>>,
}

impl Sink for InitSink {
    fn deliver(&self, pid: usize, outcome: Result<Vec<u8>, Error>) {
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

/// Resolves a job and counts its items as completed or failed.
fn settle(shared: &Shared, job: Job, outcome: Result<Vec<u8>, Error>) {
    if job.internal {
        job.complete(outcome);
        return;
    }
    let items = u64::from(job.items);
    let failed = match &outcome {
        Ok(frame) => match crate::wire::frame::parse_results(frame) {
            Ok(results) => u64::from(results.errors()),
            Err(_) => items,
        },
        Err(_) => items,
    };
    if failed > 0 {
        match &outcome {
            Ok(frame) => trace::task_items_failed(&job.task, failed, frame),
            Err(err) => trace::task_failed(&job.task, failed, Some(err)),
        }
    }
    let counters = &shared.counters;
    counters.failed.fetch_add(failed, Ordering::Relaxed);
    counters
        .completed
        .fetch_add(items.saturating_sub(failed), Ordering::Relaxed);
    job.complete(outcome);
}

/// Folds a job's measured run time into its task's per-item estimate.
fn learn(estimates: &mut Vec<(Box<str>, u64)>, job: &Job, busy_ns: u64) {
    let sample = busy_ns / job.items.max(1) as u64;
    let name: &str = job.task.as_ref();
    match estimates.iter_mut().find(|(n, _)| &**n == name) {
        Some((_, avg)) => *avg = (*avg * 7 + sample) / 8,
        None => estimates.push((name.into(), sample)),
    }
}

/// Whether a worker's end is one that the pool's own code, a task or an initializer can cause,
/// as opposed to a signal from outside. Only these count towards the restart guard.
///
/// Synchronous faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT — `abort`, a failed allocation
/// under the memory cap —, SIGSYS, SIGTRAP) and resource limits (SIGXCPU, SIGXFSZ) are raised
/// by the process's own code; every other signal (SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGTERM,
/// SIGUSR1, …) is sent from outside. An exit with a code is the worker's own doing, except
/// [`EXIT_BELL_LOST`] (a task closed the worker's bell; the worker answered and left). A status
/// that could not be read (the program ignores SIGCHLD) counts, so that a pool whose
/// initializer always crashes still stops fork-looping there.
fn self_inflicted(cause: ExitCause) -> bool {
    match cause {
        ExitCause::Exited(code) => code != EXIT_BELL_LOST,
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

fn kill(process: &WorkerProcess) {
    let _ = nix::sys::signal::kill(process.pid(), nix::sys::signal::Signal::SIGKILL);
}

fn died(job: &Job, pid: i32, cause: ExitCause, terminated: bool) -> Error {
    if terminated {
        Error::Terminated
    } else {
        Error::WorkerDied {
            task: job.task.to_string(),
            pid,
            cause,
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Normally every worker is reaped already; if the thread unwinds, none is left behind.
        for i in 0..self.slots.len() {
            if let Some(p) = self.slots[i].process.take() {
                self.shared.clear_worker(i);
                p.reap(Duration::ZERO);
            }
        }
    }
}
