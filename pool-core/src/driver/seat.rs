//! [`Seat`]: one worker's place in the pool — its process, the jobs out at it (oldest first,
//! answered in that order), the frame being sent and the result being read, and what the
//! collector knows of it (limits, recycling, why it must go). Owned by the collector thread.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::schedule::{room_behind, Queued};
use crate::job::Job;
use crate::start::WorkerProcess;
use crate::transport::envelope::{self, RESULT_HEAD};
use crate::transport::region::SKIP_SLOTS;
use crate::wire::frame::ResultFrame;
use crate::Error;

/// One worker and the jobs at it.
pub(super) struct Seat {
    pub(super) process: Option<WorkerProcess>,
    /// Jobs sent (or being sent), oldest first, with their expected run time (`None`: unknown);
    /// results come back in this order.
    pub(super) in_flight: VecDeque<(Job, Option<u64>)>,
    /// The sum of the known expected run times in flight, and how many are unknown.
    pub(super) queued_ns: u64,
    pub(super) unknown: usize,
    /// How many jobs in flight have a time limit (so the loop need not scan for them).
    pub(super) limited: usize,
    /// How many bytes of the newest job's `len ++ frame` are written, while it is incomplete.
    pub(super) sending: Option<usize>,
    pub(super) incoming: Incoming,
    /// Results received from the current process.
    pub(super) answered: u64,
    /// Busy time of this slot's earlier processes, in nanoseconds.
    pub(super) busy_base: u64,
    /// Why the last fork failed, and when to try again.
    pub(super) spawn_error: Option<(Error, Instant)>,
    /// Jobs of the program (not the initializer) sent to the current process, for
    /// `max_tasks_per_child`.
    pub(super) sent: u64,
    /// The current process was asked to exit after its quota of jobs or memory.
    pub(super) retiring: bool,
    /// The current process grew past `max_memory_per_child`: no more jobs go to it.
    pub(super) over_memory: bool,
    /// Why the collector killed this worker outside any task (its initializer failed).
    pub(super) doomed: Option<String>,
    /// The running job ran past `limit`; the worker got SIGTERM and gets SIGKILL at
    /// `sigkill_at` (monotonic ns) if it is still there.
    pub(super) timed_out: Option<(Duration, u64)>,
    /// The running job was asked to stop (cancelled, or past its soft limit): see `cancel`.
    pub(super) stopping: Option<Stop>,
    /// Partial result frames of the oldest job in flight (the one running), in order: the
    /// outcomes of its first items, sent while it runs (see `wire::frame::split`). Kept here,
    /// not on the job, so that a job stays small on the way of every call.
    pub(super) partials: Vec<ResultFrame>,
}

/// A running job asked to stop, and when its worker gets the stop signal and SIGKILL
/// (monotonic ns; `u64::MAX` once sent).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stop {
    /// The job's sequence number at its worker (see `cancel`).
    pub(super) seq: u64,
    pub(super) signal_at: u64,
    pub(super) kill_at: u64,
    /// `Some(limit)` for a soft time limit: the job fails with `Timeout` if its worker dies.
    pub(super) timeout: Option<Duration>,
}

/// How long after the stop signal a worker still on the same job gets SIGKILL.
const STOP_KILL_AFTER_NS: u64 = 1_000_000_000;

/// A result frame being read: its header (`len:u64 busy_ns:u64`), then its body.
#[derive(Default)]
pub(super) struct Incoming {
    pub(super) head: [u8; 16],
    pub(super) head_got: usize,
    pub(super) body: Option<Vec<u8>>,
    /// The length of the frame being read into `body`.
    pub(super) want: usize,
}

impl Incoming {
    /// Reads what is available; returns the bytes consumed and a completed frame with the
    /// worker's run time for it, if any. `spare` gives a buffer for a new frame: the frame of
    /// the job being answered, which the caller allocated and will free, so no buffer is freed
    /// by a thread other than the one that made it; and whether to use it whatever its size
    /// (see `Job::recycle`).
    #[allow(clippy::type_complexity)]
    pub(super) fn pull(
        &mut self,
        ring: &crate::transport::spsc_ring::SpscRing,
        spare: impl FnOnce(bool) -> (Vec<u8>, bool),
    ) -> Result<(usize, Option<(Vec<u8>, u64)>), ()> {
        let mut consumed = 0;
        if self.body.is_none() {
            let n = ring.read(&mut self.head[self.head_got..]);
            consumed += n;
            self.head_got += n;
            if self.head_got < RESULT_HEAD {
                return Ok((consumed, None));
            }
            let Some((len, busy)) = envelope::read_result_head(&self.head) else {
                return Err(());
            };
            // A partial frame does not answer the job: its buffer stays the job's.
            let (mut body, recycle) = spare(busy == envelope::PARTIAL);
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
        let (_, busy) = envelope::read_result_head(&self.head).ok_or(())?;
        let frame = self.body.take().map(|f| (f, busy));
        self.head_got = 0;
        Ok((consumed, frame))
    }
}

impl Seat {
    pub(super) fn new() -> Self {
        Seat {
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
            stopping: None,
            partials: Vec::new(),
        }
    }

    /// Stops this worker's cancelled jobs: the ones not begun are marked to be skipped, the
    /// running one is asked to stop, with its stop signal due after `grace_ns`.
    pub(super) fn stop_cancelled(&mut self, now: u64, grace_ns: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(process) = &self.process else {
            return;
        };
        let header = process.region.header();
        let mut running = None;
        for index in 0..self.in_flight.len() {
            if !self.in_flight[index].0.is_cancelled() {
                continue;
            }
            let seq = self.answered + index as u64;
            if header.jobs_started.0.load(SeqCst) <= seq {
                header.skip[seq as usize % SKIP_SLOTS].store(seq + 1, SeqCst);
                if header.jobs_started.0.load(SeqCst) <= seq {
                    continue; // the worker will see the slot as it begins the job
                }
            }
            // Begun: stop it if it is still the one running (else it is answered already).
            if header.jobs_started.0.load(SeqCst) == seq + 1 {
                running = Some(seq);
            }
        }
        if let Some(seq) = running {
            self.stop_running(seq, now, grace_ns, None);
        }
    }

    /// Asks the running job `seq` to stop (its worker's `stop` word), with the stop signal due
    /// after `grace_ns`. Does nothing if a stop is under way already.
    pub(super) fn stop_running(
        &mut self,
        seq: u64,
        now: u64,
        grace_ns: u64,
        timeout: Option<Duration>,
    ) {
        let Some(process) = &self.process else {
            return;
        };
        if self.stopping.is_some() {
            return;
        }
        process
            .region
            .header()
            .stop
            .0
            .store(seq + 1, std::sync::atomic::Ordering::SeqCst);
        let signal_at = now.saturating_add(grace_ns);
        self.stopping = Some(Stop {
            seq,
            signal_at,
            kill_at: signal_at.saturating_add(STOP_KILL_AFTER_NS),
            timeout,
        });
    }

    /// Whether a job expected to run `expected` ns (`None`: unknown) may go to this worker now:
    /// always when it is idle; behind other jobs only when all are known and short.
    pub(super) fn can_take(&self, expected: Option<u64>, max_jobs: Option<u64>) -> bool {
        if self.process.is_none()
            || self.sending.is_some()
            || self.retiring
            || self.over_memory
            || self.timed_out.is_some()
            || self.stopping.is_some()
            || self.doomed.is_some()
            || max_jobs.is_some_and(|max| self.sent >= max)
        {
            return false;
        }
        if self.in_flight.is_empty() {
            return true;
        }
        room_behind(
            Queued {
                unknown: self.unknown,
                known_ns: self.queued_ns,
                depth: self.in_flight.len(),
            },
            expected,
        )
    }

    /// Work queued here, for choosing the least loaded worker.
    pub(super) fn load(&self) -> (usize, u64, usize) {
        (self.unknown, self.queued_ns, self.in_flight.len())
    }

    pub(super) fn push(&mut self, job: Job, expected: Option<u64>) {
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

    pub(super) fn pop(&mut self) -> Option<Job> {
        let (job, expected) = self.in_flight.pop_front()?;
        self.limited -= usize::from(job.limit.is_some());
        match expected {
            Some(ns) => self.queued_ns -= ns,
            None => self.unknown -= 1,
        }
        Some(job)
    }

    pub(super) fn take_all(&mut self) -> VecDeque<Job> {
        self.queued_ns = 0;
        self.unknown = 0;
        self.limited = 0;
        self.sending = None;
        self.in_flight.drain(..).map(|(job, _)| job).collect()
    }

    /// Writes as much of the newest job as fits. Returns whether any byte moved.
    pub(super) fn send_more(&mut self) -> bool {
        let (Some(process), Some(offset), Some((job, _))) =
            (&self.process, self.sending, self.in_flight.back())
        else {
            return false;
        };
        let ring = process.region.jobs();
        let len = job.wire_len();
        let prefix = envelope::job_head(len);
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
