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
}

/// The cancel grace when none is set.
pub(crate) const DEFAULT_CANCEL_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

impl WorkerSettings {
    pub(crate) fn cancel_grace(&self) -> std::time::Duration {
        self.cancel_grace.unwrap_or(DEFAULT_CANCEL_GRACE)
    }
}

/// A task every new worker runs once before any other, as built by
/// [`PoolBuilder::initializer`](crate::PoolBuilder::initializer).
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) task: &'static str,
    pub(crate) frame: Result<Vec<u8>, String>,
}
