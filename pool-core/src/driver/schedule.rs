//! Scheduling: how much work to queue at a worker, from what its tasks took before. Pure logic,
//! tested here without processes.
//!
//! Work is estimated per task from how long its items took (each result carries the worker's
//! own timing); a task not yet measured goes only to an idle worker. A job goes behind others
//! at a worker only while everything queued there is known and the total stays under
//! [`TARGET_QUEUED_NS`]: tiny tasks stream without a pause, long ones (or ones not known to be
//! short) go to whichever worker is free, as with Python's pool.

use crate::job::Job;

/// How much work (in the worker's own measured time) to keep queued at each worker.
pub(super) const TARGET_QUEUED_NS: u64 = 200_000;
/// Jobs in flight per worker at most.
pub(super) const MAX_DEPTH: usize = 1024;

/// What is queued at a busy worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    /// Jobs whose run time is not known.
    pub(super) unknown: usize,
    /// The sum of the known expected run times, in ns.
    pub(super) known_ns: u64,
    /// Jobs in flight.
    pub(super) depth: usize,
}

/// Whether a job expected to run `expected` ns (`None`: unknown) may queue behind `queued` at a
/// busy worker.
pub(super) fn room_behind(queued: Queued, expected: Option<u64>) -> bool {
    match expected {
        Some(ns) => {
            queued.unknown == 0
                && queued.depth < MAX_DEPTH
                && queued.known_ns.saturating_add(ns) <= TARGET_QUEUED_NS
        }
        None => false,
    }
}

/// Nanoseconds per item, by task name: a moving average of what workers reported. A short
/// list: programs have few tasks, and comparing names beats hashing them per job.
#[derive(Debug, Default)]
pub(super) struct Estimates(Vec<(Box<str>, u64)>);

impl Estimates {
    /// How long `job` is expected to run, from what its task's items took before.
    pub(super) fn of(&self, job: &Job) -> Option<u64> {
        self.expected(job.task.as_ref(), job.items)
    }

    fn expected(&self, task: &str, items: u32) -> Option<u64> {
        let (_, per_item) = self.0.iter().find(|(n, _)| &**n == task)?;
        Some(per_item.saturating_mul(u64::from(items.max(1))))
    }

    /// Folds a job's measured run time into its task's per-item estimate.
    pub(super) fn learn(&mut self, job: &Job, busy_ns: u64) {
        self.learn_task(job.task.as_ref(), job.items, busy_ns)
    }

    fn learn_task(&mut self, task: &str, items: u32, busy_ns: u64) {
        let sample = busy_ns / u64::from(items.max(1));
        match self.0.iter_mut().find(|(n, _)| &**n == task) {
            Some((_, avg)) => *avg = (*avg * 7 + sample) / 8,
            None => self.0.push((task.into(), sample)),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn unknown_tasks_go_only_to_idle_workers() {
        let empty = Queued {
            unknown: 0,
            known_ns: 0,
            depth: 1,
        };
        assert!(!room_behind(empty, None));
        assert!(room_behind(empty, Some(1_000)));
        let behind_unknown = Queued {
            unknown: 1,
            ..empty
        };
        assert!(!room_behind(behind_unknown, Some(1)));
    }

    #[test]
    fn known_work_queues_up_to_the_target_and_the_depth() {
        let q = |known_ns, depth| Queued {
            unknown: 0,
            known_ns,
            depth,
        };
        assert!(room_behind(q(TARGET_QUEUED_NS - 10, 3), Some(10)));
        assert!(!room_behind(q(TARGET_QUEUED_NS - 10, 3), Some(11)));
        assert!(!room_behind(q(0, MAX_DEPTH), Some(1)));
        assert!(
            !room_behind(q(u64::MAX, 1), Some(u64::MAX)),
            "saturates, never wraps"
        );
    }

    #[test]
    fn estimates_are_per_item_moving_averages() {
        let mut e = Estimates::default();
        assert_eq!(e.expected("t", 10), None);
        e.learn_task("t", 10, 10_000); // 1,000 ns per item
        assert_eq!(e.expected("t", 10), Some(10_000));
        assert_eq!(
            e.expected("t", 0),
            Some(1_000),
            "an empty job counts as one item"
        );
        e.learn_task("t", 1, 9_000); // (1000 * 7 + 9000) / 8
        assert_eq!(e.expected("t", 1), Some(2_000));
        e.learn_task("u", 0, 5);
        assert_eq!(e.expected("u", 2), Some(10));
        assert_eq!(e.expected("t", 1), Some(2_000), "tasks are kept apart");
    }
}
