//! What the collector needs to know of a pool's configuration: how to start, limit and recycle
//! its workers, and the initializer each new worker runs first.

use crate::StartMethod;

/// How the pool's collector starts, limits and recycles workers.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSettings {
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) memory_cap: Option<u64>,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) start_method: StartMethod,
    /// Past this (per item of a job), `cancelled()` turns true in the task, which then has the
    /// cancel grace to return.
    pub(crate) soft_timeout: Option<std::time::Duration>,
    /// How long a task asked to stop may take to return before its worker is stopped.
    pub(crate) cancel_grace: Option<std::time::Duration>,
    /// How many more times a job whose worker died or ran out of time runs (unless its task
    /// says otherwise).
    pub(crate) retries: u32,
    /// The first and the longest wait before a retry (`None`: the defaults).
    pub(crate) retry_backoff: Option<(std::time::Duration, std::time::Duration)>,
}

/// The wait before a first retry, and the longest, when none are set.
pub(crate) const DEFAULT_RETRY_BACKOFF: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(10),
);

/// The cancel grace when none is set.
pub(crate) const DEFAULT_CANCEL_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

impl WorkerSettings {
    pub(crate) fn cancel_grace(&self) -> std::time::Duration {
        self.cancel_grace.unwrap_or(DEFAULT_CANCEL_GRACE)
    }

    /// The wait before retry number `attempt` (1 for the first): exponential from the first
    /// wait, capped, with "equal jitter" (half fixed, half random) so that retries of jobs that
    /// failed together spread out.
    pub(crate) fn backoff(&self, attempt: u32) -> std::time::Duration {
        let (first, max) = self.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF);
        let full = first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(max);
        let half = full / 2;
        let random = crate::sys::random_u128() as u64 % (half.as_nanos() as u64 + 1);
        half + std::time::Duration::from_nanos(random)
    }

    /// How many retries `task` gets, and whether its panics are retried.
    pub(crate) fn retry_policy(&self, task: &str) -> (u32, bool) {
        match crate::registry::lookup(task) {
            Some(e) => (e.retries.unwrap_or(self.retries), e.retry_on_panic),
            None => (self.retries, false),
        }
    }
}

/// A task every new worker runs once before any other, as built by
/// [`PoolBuilder::initializer`](crate::PoolBuilder::initializer).
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) task: &'static str,
    pub(crate) frame: Result<Vec<u8>, String>,
}
