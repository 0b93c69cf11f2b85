//! [`PoolStats`]: counts a program can log or export.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::driver::shared::Shared;

/// A snapshot of a pool's counters, from [`Pool::stats`](crate::Pool::stats).
///
/// Task counts are per item: a `map` of 1,000 items submits 1,000 tasks, whatever its chunks.
///
/// # Examples
///
/// ```
/// use pool_core::{task, Pool};
///
/// #[task]
/// fn halve(x: u64) -> u64 {
///     assert!(x % 2 == 0, "odd input");
///     x / 2
/// }
///
/// let pool = Pool::builder().processes(2).build()?;
/// pool.map(halve, (0..100).map(|i| i * 2))?;
/// let _ = pool.apply(halve, 3); // panics in the worker: one failed task
/// let stats = pool.stats();
/// assert_eq!(stats.tasks_submitted, 101);
/// assert_eq!(stats.tasks_completed, 100);
/// assert_eq!(stats.tasks_failed, 1);
/// assert_eq!(stats.workers_alive, 2);
/// assert_eq!(stats.busy_time.len(), 2);
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tasks (items) accepted by the pool.
    pub tasks_submitted: u64,
    /// Tasks that returned a value.
    pub tasks_completed: u64,
    /// Tasks that ended in an error (a panic, a dead worker, bad arguments, termination …).
    pub tasks_failed: u64,
    /// Tasks whose caller cancelled them before they finished (not counted as failed).
    pub tasks_cancelled: u64,
    /// Times a task was run again after its worker died, it ran out of time or (when its
    /// task opts in) it panicked ([`PoolBuilder::retries`](crate::PoolBuilder::retries)).
    pub tasks_retried: u64,
    /// Worker processes running now.
    pub workers_alive: usize,
    /// Workers that died and were replaced.
    pub workers_replaced: u64,
    /// Jobs (single calls or chunks) waiting in the pool's queue for a worker.
    pub queue_depth: usize,
    /// Time each worker slot has spent running tasks, over all the processes it has had.
    pub busy_time: Vec<Duration>,
    /// Why the pool runs below its size right now, when it is for a reason of its own: workers
    /// kept failing outside any task, so the restart guard stopped starting them and will try
    /// again after a backoff (the same text as the [`PoolBroken`](crate::Error::PoolBroken)
    /// error that work gets meanwhile). `None` when the pool starts workers as it should; a
    /// worker that just died and is being replaced shows only in `workers_alive`.
    pub degraded: Option<String>,
}

impl PoolStats {
    pub(crate) fn read(shared: &Shared) -> Self {
        let c = &shared.counters;
        PoolStats {
            tasks_submitted: c.submitted.load(Ordering::Relaxed),
            tasks_completed: c.completed.load(Ordering::Relaxed),
            tasks_failed: c.failed.load(Ordering::Relaxed),
            tasks_cancelled: c.cancelled.load(Ordering::Relaxed),
            tasks_retried: c.retried.load(Ordering::Relaxed),
            workers_alive: shared.worker_pids().len(),
            workers_replaced: c.replaced.load(Ordering::Relaxed),
            queue_depth: shared.queue_len(),
            busy_time: c
                .busy_ns
                .iter()
                .map(|ns| Duration::from_nanos(ns.load(Ordering::Relaxed)))
                .collect(),
            degraded: shared.degraded(),
        }
    }
}
