//! `tracing` events of the pool (feature `tracing`). Without the feature these functions are
//! empty and inlined away: off costs nothing.
//!
//! Targets are `pool_core`; fields name the worker slot, pid, task and cause.

#[cfg(not(feature = "tracing"))]
mod imp {
    use crate::{Error, ExitCause};

    #[inline(always)]
    pub(crate) fn worker_started(_slot: usize, _pid: i32) {}
    #[inline(always)]
    pub(crate) fn worker_died(_slot: usize, _pid: i32, _cause: ExitCause) {}
    #[inline(always)]
    pub(crate) fn worker_exited(_slot: usize, _pid: i32, _cause: ExitCause) {}
    #[inline(always)]
    pub(crate) fn spawn_failed(_slot: usize, _err: &Error) {}
    #[inline(always)]
    pub(crate) fn task_failed(_task: &str, _items: u64, _err: Option<&Error>) {}
    #[inline(always)]
    pub(crate) fn task_items_failed(
        _task: &str,
        _items: u64,
        _frame: &crate::wire::frame::ResultFrame,
    ) {
    }
    #[inline(always)]
    pub(crate) fn task_timed_out(_task: &str, _limit: std::time::Duration, _pid: i32) {}
    #[inline(always)]
    pub(crate) fn task_retrying(_task: &str, _attempt: u32, _wait: std::time::Duration) {}
    #[inline(always)]
    pub(crate) fn worker_recycled(_slot: usize, _pid: i32) {}
    #[inline(always)]
    pub(crate) fn pool_broken(_reason: &str) {}
    #[inline(always)]
    pub(crate) fn pool_retrying() {}
    #[inline(always)]
    pub(crate) fn pool_healed() {}
}

#[cfg(feature = "tracing")]
mod imp {
    use crate::{Error, ExitCause};

    pub(crate) fn worker_started(slot: usize, pid: i32) {
        tracing::debug!(target: "pool_core", slot, pid, "worker started");
    }
    pub(crate) fn worker_died(slot: usize, pid: i32, cause: ExitCause) {
        tracing::warn!(target: "pool_core", slot, pid, %cause, "worker died; replacing it");
    }
    pub(crate) fn worker_exited(slot: usize, pid: i32, cause: ExitCause) {
        tracing::debug!(target: "pool_core", slot, pid, %cause, "worker exited");
    }
    pub(crate) fn spawn_failed(slot: usize, err: &Error) {
        tracing::error!(target: "pool_core", slot, error = %err, "could not start a worker");
    }
    pub(crate) fn task_failed(task: &str, items: u64, err: Option<&Error>) {
        match err {
            Some(err) => {
                tracing::warn!(target: "pool_core", task, items, error = %err, "task failed")
            }
            None => tracing::warn!(target: "pool_core", task, items, "task failed"),
        }
    }

    pub(crate) fn task_timed_out(task: &str, limit: std::time::Duration, pid: i32) {
        tracing::warn!(target: "pool_core", task, ?limit, pid, "task ran past its time limit; killing its worker");
    }

    pub(crate) fn task_retrying(task: &str, attempt: u32, wait: std::time::Duration) {
        tracing::warn!(target: "pool_core", task, attempt, ?wait, "task failed; running it again after a backoff");
    }

    pub(crate) fn worker_recycled(slot: usize, pid: i32) {
        tracing::debug!(target: "pool_core", slot, pid, "worker reached max_tasks_per_child; replacing it");
    }

    pub(crate) fn pool_broken(reason: &str) {
        tracing::error!(target: "pool_core", reason, "restart guard tripped; no workers are started until its backoff is over");
    }

    pub(crate) fn pool_retrying() {
        tracing::warn!(target: "pool_core", "restart guard: backoff over, starting workers again");
    }

    pub(crate) fn pool_healed() {
        tracing::info!(target: "pool_core", "restart guard: a worker answered after the backoff; the pool is healed");
    }

    /// Some items of a result frame failed: reports how many, with the first one's error.
    pub(crate) fn task_items_failed(
        task: &str,
        items: u64,
        frame: &crate::wire::frame::ResultFrame,
    ) {
        let first = frame.results().ok().and_then(|results| {
            results
                .filter_map(Result::ok)
                .find_map(|outcome| outcome.to_error(task))
        });
        task_failed(task, items, first.as_ref());
    }
}

pub(crate) use imp::*;
