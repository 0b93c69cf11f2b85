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
}

/// A task every new worker runs once before any other, as built by
/// [`PoolBuilder::initializer`](crate::PoolBuilder::initializer).
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) task: &'static str,
    pub(crate) frame: Result<Vec<u8>, String>,
}
