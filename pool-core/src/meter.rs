//! Numbers for dashboards through the `metrics` facade (feature `metrics`): whatever recorder
//! the program installs (Prometheus, StatsD …) receives them. Without the feature these
//! functions are empty and inlined away: off costs nothing.
//!
//! Every metric has the label `engine` (`local` here, `redis` for `pool-redis`):
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `pool_tasks_submitted_total` | counter | items submitted |
//! | `pool_tasks_completed_total` | counter | items answered with a value |
//! | `pool_tasks_failed_total` | counter | items answered with an error (not a cancel) |
//! | `pool_tasks_retried_total` | counter | items run again under a retry policy |
//! | `pool_tasks_cancelled_total` | counter | items cancelled |
//! | `pool_task_duration_seconds` | histogram | how long an item ran on its worker (a job's busy time over its items) |
//! | `pool_queue_depth` | gauge | jobs waiting for a worker |
//! | `pool_workers_alive` | gauge | worker processes running |
//! | `pool_workers_replaced_total` | counter | workers that died and were replaced |

#[cfg(not(feature = "metrics"))]
mod imp {
    #[inline(always)]
    pub fn submitted(_engine: &'static str, _items: u64) {}
    #[inline(always)]
    pub fn settled(_engine: &'static str, _completed: u64, _failed: u64) {}
    #[inline(always)]
    pub fn cancelled(_engine: &'static str, _items: u64) {}
    #[inline(always)]
    pub fn retried(_engine: &'static str, _items: u64) {}
    #[inline(always)]
    pub fn task_seconds(_engine: &'static str, _seconds: f64) {}
    #[inline(always)]
    pub fn queue_depth(_engine: &'static str, _jobs: u64) {}
    #[inline(always)]
    pub fn workers_alive(_engine: &'static str, _workers: u64) {}
    #[inline(always)]
    pub fn worker_replaced(_engine: &'static str) {}
}

#[cfg(feature = "metrics")]
mod imp {
    // Literal names and labels: the `metrics` macros then build their keys statically, with no
    // allocation per call.
    macro_rules! by_engine {
        ($engine:expr, $kind:ident, $name:literal) => {
            if $engine == "redis" {
                ::metrics::$kind!($name, "engine" => "redis")
            } else {
                ::metrics::$kind!($name, "engine" => "local")
            }
        };
    }

    pub fn submitted(engine: &'static str, items: u64) {
        by_engine!(engine, counter, "pool_tasks_submitted_total").increment(items);
    }
    pub fn settled(engine: &'static str, completed: u64, failed: u64) {
        if completed > 0 {
            by_engine!(engine, counter, "pool_tasks_completed_total").increment(completed);
        }
        if failed > 0 {
            by_engine!(engine, counter, "pool_tasks_failed_total").increment(failed);
        }
    }
    pub fn cancelled(engine: &'static str, items: u64) {
        by_engine!(engine, counter, "pool_tasks_cancelled_total").increment(items);
    }
    pub fn retried(engine: &'static str, items: u64) {
        by_engine!(engine, counter, "pool_tasks_retried_total").increment(items);
    }
    pub fn task_seconds(engine: &'static str, seconds: f64) {
        by_engine!(engine, histogram, "pool_task_duration_seconds").record(seconds);
    }
    pub fn queue_depth(engine: &'static str, jobs: u64) {
        by_engine!(engine, gauge, "pool_queue_depth").set(jobs as f64);
    }
    pub fn workers_alive(engine: &'static str, workers: u64) {
        by_engine!(engine, gauge, "pool_workers_alive").set(workers as f64);
    }
    pub fn worker_replaced(engine: &'static str) {
        by_engine!(engine, counter, "pool_workers_replaced_total").increment(1);
    }
}

pub use imp::*;
