//! [`PoolBuilder`]: how a pool is configured, and [`StartMethod`].

use std::time::Duration;

use crate::driver::settings::{Initializer, WorkerSettings};
use crate::wire::frame::JobBuilder;
use crate::{registry, Error, Pool, StartMethod, Task};

/// Configures and starts a [`Pool`].
///
/// # Examples
///
/// ```
/// use pool_core::Pool;
///
/// let pool = Pool::builder().processes(3).build()?;
/// assert_eq!(pool.processes(), 3);
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PoolBuilder {
    processes: Option<usize>,
    start_method: Option<StartMethod>,
    task_timeout: Option<Duration>,
    workers: WorkerSettings,
}

impl PoolBuilder {
    /// A builder with the defaults: one worker per CPU, no limits.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = pool_core::PoolBuilder::new().processes(2).build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn new() -> Self {
        PoolBuilder::default()
    }

    /// The number of worker processes (default: the number of CPUs, from `num_cpus`). Must be at
    /// least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{Error, Pool};
    ///
    /// assert_eq!(Pool::builder().processes(3).build()?.worker_pids().len(), 3);
    /// assert!(matches!(Pool::builder().processes(0).build(), Err(Error::Config(_))));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A time limit for every task of the pool (default: none). A task still running after it
    /// has its worker killed (SIGTERM, then SIGKILL after 100 ms), resolves to
    /// [`Error::Timeout`], and a new worker takes its place. For a chunk of a `map` the limit
    /// is per item: a chunk of 10 items may run 10 times as long. Measured from when the worker
    /// begins the task (time spent queued does not count), on the monotonic clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::time::Duration;
    ///
    /// #[task]
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = Pool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// assert_eq!(pool.apply(nap, 10)?, 10);
    /// assert!(matches!(pool.apply(nap, 10_000), Err(Error::Timeout { .. })));
    /// assert_eq!(pool.apply(nap, 10)?, 10); // a fresh worker took over
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// A soft time limit per task: once a task has run this long, [`cancelled()`](crate::cancelled)
    /// turns true inside it, so it can clean up and return (its value is delivered as usual).
    /// A task still running after the [`cancel_grace`](Self::cancel_grace) more is stopped:
    /// its worker exits and is replaced, and the call fails with [`Error::Timeout`](crate::Error::Timeout).
    /// Celery's `soft_time_limit`; a hard [`task_timeout`](Self::task_timeout) still applies
    /// on its own. For a chunk of a `map` the limit is per item, times the chunk's items.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::time::Duration;
    ///
    /// #[task]
    /// fn polite() -> String {
    ///     while !pool_core::cancelled() {
    ///         std::thread::sleep(Duration::from_millis(1));
    ///     }
    ///     "cleaned up".to_string()
    /// }
    ///
    /// #[task]
    /// fn stubborn() {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// let pool = Pool::builder()
    ///     .processes(1)
    ///     .soft_timeout(Duration::from_millis(100))
    ///     .build()?;
    /// assert_eq!(pool.apply(polite, ())?, "cleaned up");
    /// assert!(matches!(pool.apply(stubborn, ()), Err(Error::Timeout { .. })));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn soft_timeout(mut self, limit: Duration) -> Self {
        self.workers.soft_timeout = Some(limit);
        self
    }

    /// How long a task asked to stop — its call cancelled
    /// ([`AsyncResult::cancel`](crate::AsyncResult::cancel)) or past the
    /// [`soft_timeout`](Self::soft_timeout) — may take to return before its worker is stopped
    /// (the worker exits and is replaced). Default: 50 ms. Zero stops the worker at once.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.workers.cancel_grace = Some(grace);
        self
    }

    /// Runs a call again, up to `n` more times, when its worker died under it (a crash, an
    /// abort, an outside kill) or it ran out of time (`task_timeout`, `soft_timeout`), each
    /// time after a backoff ([`retry_backoff`](Self::retry_backoff)). Only when the last
    /// attempt fails too does its error reach the caller, saying how many attempts were made
    /// (`attempts` in [`Error::WorkerDied`](crate::Error::WorkerDied) and
    /// [`Error::Timeout`](crate::Error::Timeout)). Panics, bad arguments and results that do
    /// not encode are not retried (a task opts in for panics with `#[task(retry_on_panic)]`);
    /// a task's own `#[task(retries = N)]` overrides this. Cancelled calls are never retried.
    /// [`PoolStats::tasks_retried`](crate::PoolStats::tasks_retried) counts the retries.
    /// Default: 0.
    ///
    /// For a chunk of a `map`, the chunk is the unit that runs again.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    /// use std::time::Duration;
    ///
    /// /// Dies (as a crash would) on its first two runs; the third succeeds.
    /// #[task]
    /// fn flaky(marker: String) -> u32 {
    ///     let runs = std::fs::read_to_string(&marker).map_or(0, |s| s.len());
    ///     std::fs::write(&marker, "x".repeat(runs + 1)).unwrap();
    ///     if runs < 2 {
    ///         std::process::abort();
    ///     }
    ///     runs as u32 + 1
    /// }
    ///
    /// let marker = std::env::temp_dir().join(format!("flaky-doc-{}", std::process::id()));
    /// let pool = Pool::builder()
    ///     .processes(1)
    ///     .retries(2)
    ///     .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
    ///     .build()?;
    /// assert_eq!(pool.apply(flaky, marker.display().to_string())?, 3);
    /// assert_eq!(pool.stats().tasks_retried, 2);
    /// # std::fs::remove_file(&marker).ok();
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.workers.retries = n;
        self
    }

    /// The wait before each retry: `first` before the first, doubling each time up to `max`,
    /// with jitter (each wait is between half and all of that, at random), so that retries of
    /// calls that failed together do not all come back at once. Default: 100 ms, up to 10 s.
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.workers.retry_backoff = Some((first, max.max(first)));
        self
    }

    /// Replaces each worker after it has run `n` jobs (a call, or a chunk of a `map`), as
    /// Python's `maxtasksperchild` does: a way to bound what a leaky library can accumulate.
    /// Default: never. Must be at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn pid() -> u32 {
    ///     std::process::id()
    /// }
    ///
    /// let pool = Pool::builder().processes(1).max_tasks_per_child(2).build()?;
    /// let pids: Vec<u32> = (0..6).map(|_| pool.apply(pid, ())).collect::<Result<_, _>>()?;
    /// assert_eq!(pids[0], pids[1]);
    /// assert_ne!(pids[1], pids[2]); // recycled after two jobs
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.workers.max_tasks_per_child = Some(n);
        self
    }

    /// A task each new worker runs once, with `args`, before it serves any other (Python's
    /// `initializer` / `initargs`): to open a connection, load a model, set up a library. If it
    /// fails (panics, or kills its worker), the worker is replaced; if that keeps happening (more
    /// than 10 times in 10 s, counting also workers that end on their own outside any task), the
    /// pool stops replacing workers and reports
    /// [`Error::PoolBroken`] instead of fork-looping.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// static SCALE: AtomicU64 = AtomicU64::new(1);
    ///
    /// #[task]
    /// fn set_scale(factor: u64) {
    ///     SCALE.store(factor, Ordering::Relaxed); // in the worker's memory
    /// }
    ///
    /// #[task]
    /// fn scaled(x: u64) -> u64 {
    ///     x * SCALE.load(Ordering::Relaxed)
    /// }
    ///
    /// let pool = Pool::builder().processes(2).initializer(set_scale, 10).build()?;
    /// assert_eq!(pool.map(scaled, 1..=3)?, [10, 20, 30]);
    /// assert_eq!(scaled(3), 3); // the parent was not initialized
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn initializer<T: Task>(mut self, _task: T, args: T::Args) -> Self {
        let mut builder = JobBuilder::new(T::NAME);
        let frame = builder.push(&args).map(|()| builder.finish());
        self.workers.initializer = Some(Initializer {
            task: T::NAME,
            frame,
        });
        self
    }

    /// Replaces a worker whose resident memory, read after a job, is above `bytes` (the rule of
    /// Python's `billiard`): the worker gets no more jobs, finishes those it has, exits and is
    /// replaced. Memory is sampled at most every 10 ms, so a burst of tiny jobs may run a few
    /// more before the check. Default: no limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn leak(mib: usize) -> u32 {
    ///     let v = vec![1u8; mib << 20];
    ///     std::mem::forget(v); // a leaky library
    ///     std::process::id()
    /// }
    ///
    /// let pool = Pool::builder()
    ///     .processes(1)
    ///     .max_memory_per_child(64 << 20)
    ///     .build()?;
    /// let first = pool.apply(leak, 100)?;
    /// std::thread::sleep(std::time::Duration::from_millis(20));
    /// let second = pool.apply(leak, 1)?;
    /// assert_ne!(first, second); // the worker that grew past 64 MiB was replaced
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.workers.max_memory_per_child = Some(bytes);
        self
    }

    /// A hard cap: each worker may map at most `bytes` more address space than it starts with
    /// (`RLIMIT_AS`). A task that allocates past it cannot take the machine down: the
    /// allocation fails, Rust aborts the worker, the task fails with [`Error::WorkerDied`]
    /// (`SIGABRT`), and a new worker takes over. Default: no cap.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, ExitCause, Pool};
    ///
    /// #[task]
    /// fn hog(gib: usize) -> usize {
    ///     let v = vec![1u8; gib << 30];
    ///     v.len()
    /// }
    ///
    /// let pool = Pool::builder().processes(1).memory_cap(256 << 20).build()?;
    /// match pool.apply(hog, 4) {
    ///     Err(Error::WorkerDied { cause, .. }) => assert_eq!(cause, ExitCause::Signal(6)),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn memory_cap(mut self, bytes: u64) -> Self {
        self.workers.memory_cap = Some(bytes);
        self
    }

    /// How workers are started. The default is [`StartMethod::ForkServer`] when
    /// [`pool_core::init()`](crate::init) has run, and [`StartMethod::Fork`] otherwise. See
    /// [`StartMethod`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Checks the task registry, forks the workers, and returns the running pool.
    ///
    /// Fails with [`Error::DuplicateTask`] if two tasks share a name, [`Error::Config`] for a
    /// worker count of 0, and [`Error::Spawn`] if a worker or thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert_eq!(pool.apply(square, 4)?, 16);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn build(mut self) -> Result<Pool, Error> {
        let processes = self.processes.unwrap_or_else(num_cpus::get);
        if processes == 0 {
            return Err(Error::Config(
                "the number of processes must be at least 1".into(),
            ));
        }
        if let Some(Initializer {
            task,
            frame: Err(message),
        }) = &self.workers.initializer
        {
            return Err(Error::ArgsEncode {
                task: task.to_string(),
                message: message.clone(),
            });
        }
        if self.workers.max_tasks_per_child == Some(0) {
            return Err(Error::Config(
                "max_tasks_per_child must be at least 1".into(),
            ));
        }
        if std::env::var_os(crate::start::spawned::WORKER_ENV).is_some() {
            return Err(Error::Config(
                "this process was started as a pool worker (start method Spawn), but its `main` \
                 did not call pool_core::init() first"
                    .into(),
            ));
        }
        registry::check()?;
        self.workers.start_method = self.start_method.unwrap_or_default();
        if self.workers.start_method == StartMethod::ForkServer
            && !crate::start::forkserver::running()
        {
            return Err(Error::Config(
                "StartMethod::ForkServer needs pool_core::init() (or #[pool_core::main]) first in \
                 `main`, which starts the fork server"
                    .into(),
            ));
        }
        Pool::start(processes, self.task_timeout, self.workers)
    }
}

/// Starting a pool: `Pool::new()` and `Pool::builder()` live here, beside the builder, so that
/// the pool's own module does not depend on its configuration.
impl Pool {
    /// Starts a pool with one worker per CPU. Same as `Pool::builder().build()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = pool_core::Pool::new()?;
    /// assert!(pool.processes() >= 1);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn new() -> Result<Pool, Error> {
        PoolBuilder::new().build()
    }

    /// A [`PoolBuilder`] to configure a pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = pool_core::Pool::builder()
    ///     .processes(2)
    ///     .task_timeout(Duration::from_secs(60))
    ///     .build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }
}
