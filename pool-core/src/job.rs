//! A unit of work on its way to a worker, and the promise that it resolves exactly once.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::wire::frame::ResultFrame;
use crate::wire::splice::Spliced;
use crate::Error;

/// A task's name as carried with its jobs: borrowed for `#[task]` functions, owned for names
/// given at run time.
pub(crate) type TaskName = Cow<'static, str>;

/// Where a job's outcome goes: the raw result frame, or the error that ended it. One sink serves
/// every part of a `map` (or every chunk of an `imap`), so a job costs no allocation of its own.
pub(crate) trait Sink: Send + Sync {
    /// Receives the outcome of part `part`.
    fn deliver(&self, part: usize, outcome: Result<ResultFrame, Error>);

    /// Takes back the buffers spliced into a job of this sink once the job has resolved (just
    /// before its outcome is delivered). By default they are freed here, on the collector's
    /// thread; a submitter with a thread of its own to spare can free them there instead.
    fn give_back(&self, spliced: Spliced) {
        drop(spliced);
    }

    /// Whether the caller cancelled part `part`: the job must then not begin, or must be
    /// stopped (see `cancel`). Asked only once something in the process was cancelled.
    fn is_cancelled(&self, _part: usize) -> bool {
        false
    }
}

/// One frame of work (one `apply`, or one chunk of a `map`) and what to do with its result.
///
/// # Size
///
/// A job is moved by value several times on the way of every call (queue, collector, seat,
/// settle), so its size shows in the rate of one-item jobs: a seat's entry `(Job, Option<u64>)`
/// is kept at 128 bytes, two cache lines (a test checks it). Rare data lives elsewhere: the
/// partial result frames of a running job are kept by its seat.
///
/// # Invariant
///
/// The sink hears of the job exactly once: through [`Job::complete`], or — when a job is dropped
/// unfinished anywhere (a queue discarded, a thread unwinding) — with [`Error::Terminated`] from
/// `Drop`. This is what makes a caller's wait always end.
pub(crate) struct Job {
    /// The frame's own bytes; with `spliced`, the frame the worker receives.
    pub(crate) frame: Vec<u8>,
    /// Big buffers that belong inside `frame`, kept until the job resolves (see `wire::splice`).
    pub(crate) spliced: Spliced,
    pub(crate) task: TaskName,
    /// How many items the frame carries.
    pub(crate) items: u32,
    /// How long the job may run once a worker begins it (per item, times `items`).
    pub(crate) limit: Option<std::time::Duration>,
    /// The pool's own job (an initializer), not counted in the statistics.
    pub(crate) internal: bool,
    /// How many times the job went back to the queue because its worker died before it began.
    pub(crate) requeues: u8,
    /// How many times the job ran and failed in a way its retry policy retries.
    pub(crate) attempts: u32,
    /// The frame is kept once sent, because a panic may send the job again
    /// (`#[task(retry_on_panic)]`).
    pub(crate) keep_frame: bool,
    /// The result is read into `frame`'s buffer whatever its size, because the submitter
    /// consumes the result at once and builds its next job in the same buffer (a blocking
    /// `map`). Otherwise a buffer much larger than the result is set aside, so that results
    /// waiting to be read do not hold on to the memory of their jobs.
    pub(crate) recycle: bool,
    sink: Option<Arc<dyn Sink>>,
    part: usize,
}

impl Job {
    /// Whether the caller cancelled this job (see [`Sink::is_cancelled`]).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.sink
            .as_ref()
            .is_some_and(|s| s.is_cancelled(self.part))
    }

    #[inline]
    pub(crate) fn new(frame: Vec<u8>, task: TaskName, sink: Arc<dyn Sink>, part: usize) -> Self {
        Self::with_spliced((frame, Spliced::default()), task, sink, part)
    }

    /// [`new`](Self::new) for a frame with spliced buffers: the frame's own bytes and the
    /// buffers that belong in it, as the worker receives them.
    #[inline]
    pub(crate) fn with_spliced(
        (frame, spliced): (Vec<u8>, Spliced),
        task: TaskName,
        sink: Arc<dyn Sink>,
        part: usize,
    ) -> Self {
        Job {
            items: crate::wire::frame::job_item_count(&frame),
            frame,
            spliced,
            task,
            requeues: 0,
            attempts: 0,
            keep_frame: false,
            recycle: false,
            limit: None,
            internal: false,
            sink: Some(sink),
            part,
        }
    }

    /// The length of the frame the worker receives.
    pub(crate) fn wire_len(&self) -> usize {
        self.frame.len() + self.spliced.len()
    }

    /// The frame the worker receives, in pieces.
    pub(crate) fn wire_pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.spliced.pieces(&self.frame)
    }

    /// Takes the job's sink and part, leaving it answered by nobody: the caller answers that
    /// part itself (a job split after its worker died).
    pub(crate) fn into_sink(mut self) -> Option<(Arc<dyn Sink>, usize)> {
        self.sink.take().map(|sink| (sink, self.part))
    }

    /// Resolves the job.
    pub(crate) fn complete(mut self, outcome: Result<ResultFrame, Error>) {
        if let Some(sink) = self.sink.take() {
            if !self.spliced.is_empty() {
                sink.give_back(std::mem::take(&mut self.spliced));
            }
            sink.deliver(self.part, outcome);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.deliver(self.part, Err(Error::Terminated));
        }
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("task", &self.task)
            .field("frame_len", &self.wire_len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod test {
    #[test]
    fn a_seat_entry_fits_two_cache_lines() {
        assert!(std::mem::size_of::<(super::Job, Option<u64>)>() <= 128);
    }
}
