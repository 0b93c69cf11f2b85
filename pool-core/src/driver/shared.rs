//! The state a pool's handle and its driver threads share.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::driver::jobqueue::JobSender;
use crate::job::Job;
use crate::owner::Owner;
use crate::start::ParentFd;
use crate::{sys, Error};

#[derive(Debug)]
pub(crate) struct Shared {
    /// The one job queue. `None` once the pool is closed: taking the sender out under the write
    /// lock means no job can slip in behind the close, and once the queue is empty the drivers
    /// see it disconnected and shut their workers down.
    sender: RwLock<Option<JobSender>>,
    terminated: AtomicBool,
    /// The live worker of each slot. A pid is cleared (under this lock) before its process is
    /// reaped, so a pid read under the lock always names our own unreaped child and can be
    /// signalled without hitting a recycled pid.
    workers: Vec<Mutex<Option<Pid>>>,
    /// The pool's eventfd: rung by callers and workers to wake the collector, and only while it
    /// says it sleeps (`collector_sleeping`), so the busy path makes no system call.
    bell: ParentFd,
    collector_sleeping: AtomicBool,
    /// Counters for `Pool::stats`.
    pub(crate) counters: Counters,
    /// The pool's time limit per item, for jobs without one of their own.
    pub(crate) task_timeout: Option<std::time::Duration>,
    /// The process that built the pool: the only one where its collector thread runs.
    pub(crate) owner: Owner,
    /// Why the pool runs below its size now (the restart guard backs off), for `stats()`.
    degraded: Mutex<Option<String>>,
}

/// What `Pool::stats` reports, kept as the pool runs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) replaced: AtomicU64,
    /// Nanoseconds each worker slot has spent running tasks, over all its processes.
    pub(crate) busy_ns: Vec<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(
        sender: JobSender,
        processes: usize,
        bell: OwnedFd,
        task_timeout: Option<std::time::Duration>,
    ) -> Self {
        Shared {
            sender: RwLock::new(Some(sender)),
            terminated: AtomicBool::new(false),
            workers: (0..processes).map(|_| Mutex::new(None)).collect(),
            bell: ParentFd::new(bell),
            collector_sleeping: AtomicBool::new(false),
            counters: Counters {
                busy_ns: (0..processes).map(|_| AtomicU64::new(0)).collect(),
                ..Counters::default()
            },
            task_timeout,
            owner: Owner::here(),
            degraded: Mutex::new(None),
        }
    }

    /// Records (or clears) why the pool runs below its size.
    pub(crate) fn set_degraded(&self, why: Option<String>) {
        *lock(&self.degraded) = why;
    }

    /// Why the pool runs below its size, if it does for a reason of its own.
    pub(crate) fn degraded(&self) -> Option<String> {
        if !self.owner.is_here() {
            return None;
        }
        lock(&self.degraded).clone()
    }

    pub(crate) fn processes(&self) -> usize {
        self.workers.len()
    }

    /// The bell's descriptor, as workers use it.
    pub(crate) fn bell(&self) -> RawFd {
        self.bell.raw()
    }

    pub(crate) fn bell_fd(&self) -> &OwnedFd {
        self.bell.fd()
    }

    /// The collector announces that it is about to sleep (`true`) or is awake (`false`).
    pub(crate) fn set_collector_sleeping(&self, sleeping: bool) {
        self.collector_sleeping.store(sleeping, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Wakes the collector if it sleeps. Call after making work visible to it.
    fn wake_collector(&self) {
        fence(Ordering::SeqCst);
        if self.collector_sleeping.load(Ordering::Relaxed) {
            sys::eventfd_signal(self.bell.raw());
        }
    }

    /// Queues a job, or resolves it at once with `Closed` when the pool takes no more work.
    #[inline]
    pub(crate) fn submit(&self, mut job: Job) {
        // Before any lock: in a forked child, a lock the parent held at the fork stays held.
        if !self.owner.is_here() {
            job.complete(Err(self.owner.error()));
            return;
        }
        if job.limit.is_none() {
            job.limit = self
                .task_timeout
                .map(|per_item| per_item * job.items.max(1));
        }
        let guard = self.sender.read().unwrap_or_else(PoisonError::into_inner);
        match &*guard {
            Some(sender) => {
                let items = u64::from(job.items);
                match sender.send(job) {
                    Ok(()) => {
                        self.counters.submitted.fetch_add(items, Ordering::Relaxed);
                        crate::meter::submitted("local", items);
                        self.wake_collector();
                    }
                    Err(job) => {
                        // The collector is gone (the pool was terminated).
                        drop(guard);
                        job.complete(Err(Error::Terminated));
                    }
                }
            }
            None => {
                drop(guard);
                let err = if self.is_terminated() {
                    Error::Terminated
                } else {
                    Error::Closed
                };
                job.complete(Err(err));
            }
        }
    }

    /// Accepts no more jobs; queued ones still run.
    pub(crate) fn close(&self) {
        if !self.owner.is_here() {
            return; // the parent's pool is not this process's to close
        }
        let sender = self
            .sender
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
        sys::eventfd_signal(self.bell.raw());
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.sender
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Stops at once: no more jobs, every worker killed. The collector resolves every job with
    /// `Terminated`, reaps the workers and exits.
    pub(crate) fn terminate(&self) {
        if !self.owner.is_here() {
            return; // the pids below are the parent's workers: never signal them from here
        }
        self.terminated.store(true, Ordering::SeqCst);
        self.close();
        for slot in &self.workers {
            if let Some(pid) = *lock(slot) {
                let _ = signal::kill(pid, Signal::SIGKILL);
            }
        }
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
    }

    /// Records slot `index`'s new worker. If the pool was terminated meanwhile, kills it, so a
    /// worker forked during `terminate` does not live on.
    pub(crate) fn set_worker(&self, index: usize, pid: Pid) {
        *lock(&self.workers[index]) = Some(pid);
        if self.is_terminated() {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }

    /// Forgets slot `index`'s worker; called before reaping it.
    pub(crate) fn clear_worker(&self, index: usize) {
        *lock(&self.workers[index]) = None;
    }

    /// Jobs waiting in the queue (not yet sent to a worker).
    pub(crate) fn queue_len(&self) -> usize {
        if !self.owner.is_here() {
            return 0;
        }
        self.sender
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, JobSender::len)
    }

    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        if !self.owner.is_here() {
            return Vec::new(); // no worker of this pool serves this process
        }
        self.workers
            .iter()
            .filter_map(|slot| lock(slot).map(Pid::as_raw))
            .collect()
    }
}

impl crate::cancel::Listener for Shared {
    /// Something was cancelled: the collector looks at its jobs when it wakes.
    fn cancel_requested(&self) {
        self.wake_collector();
    }
}
