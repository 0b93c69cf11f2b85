//! The pool's one job queue: callers push, the collector takes.
//!
//! An unbounded queue like crossbeam's list channel, with its semantics (the queue closes when
//! the sender is dropped; the receiver gets what is left, then `Disconnected`; once the
//! receiver is gone, `send` hands the job back), but without its allocation pattern: the list
//! channel allocates a block per 31 jobs in the sending thread and frees it in the receiving
//! one, and in a burst of `apply_async` those frees contended with the caller's own `malloc`
//! for the allocator's lock (perf showed most of the run's futex calls there). Here the
//! collector swaps the whole queue for its own drained buffer under a mutex, so every buffer
//! is grown in a caller's thread and never freed by another while the pool runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::job::Job;

#[derive(Debug)]
struct Queue {
    inner: Mutex<Inner>,
    /// Jobs sent and not yet taken, for statistics.
    len: AtomicUsize,
}

#[derive(Debug)]
struct Inner {
    jobs: VecDeque<Job>,
    /// The sender is alive.
    open: bool,
    /// The receiver is alive.
    receiving: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new queue's two ends.
pub(crate) fn unbounded() -> (JobSender, JobReceiver) {
    let queue = Arc::new(Queue {
        inner: Mutex::new(Inner {
            jobs: VecDeque::new(),
            open: true,
            receiving: true,
        }),
        len: AtomicUsize::new(0),
    });
    (
        JobSender {
            queue: Arc::clone(&queue),
        },
        JobReceiver {
            queue,
            local: VecDeque::new(),
        },
    )
}

/// The callers' end. Dropping it closes the queue.
#[derive(Debug)]
pub(crate) struct JobSender {
    queue: Arc<Queue>,
}

impl JobSender {
    /// Queues `job`, or hands it back if the receiver is gone.
    #[inline]
    pub(crate) fn send(&self, job: Job) -> Result<(), Job> {
        let mut inner = self.queue.lock();
        if !inner.receiving {
            return Err(job);
        }
        inner.jobs.push_back(job);
        drop(inner);
        self.queue.len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Jobs sent and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.queue.len.load(Ordering::Relaxed)
    }
}

impl Drop for JobSender {
    fn drop(&mut self) {
        self.queue.lock().open = false;
    }
}

/// Why [`JobReceiver::try_recv`] returned no job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// None now; more may come.
    Empty,
    /// None, and none will come: the sender is gone and the queue drained.
    Disconnected,
}

/// The collector's end.
#[derive(Debug)]
pub(crate) struct JobReceiver {
    queue: Arc<Queue>,
    /// Jobs taken from the shared queue in one swap, handed out one by one.
    local: VecDeque<Job>,
}

impl JobReceiver {
    /// The next job, in the order sent.
    #[inline]
    pub(crate) fn try_recv(&mut self) -> Result<Job, TryRecvError> {
        if self.local.is_empty() {
            let mut inner = self.queue.lock();
            // The drained buffer goes back to the callers, who grow it; nothing is freed here.
            std::mem::swap(&mut inner.jobs, &mut self.local);
            if self.local.is_empty() {
                return Err(if inner.open {
                    TryRecvError::Empty
                } else {
                    TryRecvError::Disconnected
                });
            }
        }
        let job = self.local.pop_front().expect("not empty");
        self.queue.len.fetch_sub(1, Ordering::Relaxed);
        Ok(job)
    }

    /// Jobs sent and not yet taken (those taken in the last swap included).
    pub(crate) fn len(&self) -> usize {
        self.queue.len.load(Ordering::Relaxed)
    }

    /// Whether no job is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.local.is_empty() && self.queue.lock().jobs.is_empty()
    }
}

impl Drop for JobReceiver {
    fn drop(&mut self) {
        let left = {
            let mut inner = self.queue.lock();
            inner.receiving = false;
            std::mem::take(&mut inner.jobs)
        };
        // Dropped outside the lock: a dropped job resolves its result with `Terminated`, which
        // may run a callback that submits again.
        drop(left);
        self.local.clear();
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::job::Sink;
    use crate::Error;

    /// Records each part's outcome.
    #[derive(Default)]
    struct Record(Mutex<Vec<(usize, bool)>>);

    impl Sink for Record {
        fn deliver(&self, part: usize, outcome: Result<crate::wire::frame::ResultFrame, Error>) {
            self.0.lock().unwrap().push((part, outcome.is_ok()));
        }
    }

    fn job(sink: &Arc<Record>, part: usize) -> Job {
        let sink: Arc<dyn Sink> = sink.clone();
        Job::new(vec![part as u8], "t".into(), sink, part)
    }

    #[test]
    fn in_order_then_disconnected_and_dropped_jobs_resolve() {
        let sink = Arc::new(Record::default());
        let (tx, mut rx) = unbounded();
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        for part in 0..5 {
            tx.send(job(&sink, part)).unwrap();
        }
        assert_eq!(tx.len(), 5);
        assert_eq!(rx.try_recv().unwrap().frame, [0]);
        tx.send(job(&sink, 5)).unwrap();
        drop(tx);
        let rest: Vec<u8> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|j| {
                let part = j.frame[0];
                j.complete(Ok(crate::wire::frame::ResultFrame::empty()));
                part
            })
            .collect();
        assert_eq!(rest, [1, 2, 3, 4, 5]);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
        assert!(rx.is_empty());

        // With the receiver gone, a send hands the job back; queued jobs resolve on drop.
        let (tx, rx) = unbounded();
        tx.send(job(&sink, 10)).unwrap();
        drop(rx);
        let back = tx.send(job(&sink, 11)).unwrap_err();
        back.complete(Err(Error::Terminated));
        let got = sink.0.lock().unwrap().clone();
        assert!(got.contains(&(10, false)) && got.contains(&(11, false)));
    }
}
