//! [`Pool`], the parent's handle to a set of worker processes.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::driver::collector::Collector;
use crate::driver::settings::WorkerSettings;
use crate::driver::shared::Shared;
use crate::job::{Job, Sink, TaskName};
use crate::wire::splice::Spliced;
use crate::{panic_capture, sys, Error, PoolStats};

/// A pool of worker processes that run [`#[task]`](crate::task) functions.
///
/// Workers are forked when the pool is built and serve jobs from one queue that the parent
/// holds; each worker has its own connection to the parent, so no process can die holding
/// something the others need. Every failure of a task — a panic, a crash or kill of its worker,
/// arguments that do not decode — becomes an [`Error`] on that task; a dead worker is replaced
/// and the pool goes on.
///
/// `Pool` is `Send + Sync`: any number of threads may submit work to one pool at once, and each
/// result reaches the thread that asked for it.
///
/// # Lifecycle
///
/// [`close`](Pool::close) stops accepting work and lets queued work finish;
/// [`join`](Pool::join) then waits for the workers to exit. [`terminate`](Pool::terminate)
/// kills the workers at once, and pending results resolve to [`Error::Terminated`].
/// **Dropping a `Pool` without `close` and `join` terminates it** (like leaving Python's
/// `with Pool() as p:` block): work not yet finished is lost, and every worker is reaped before
/// `drop` returns.
///
/// # One process
///
/// A pool works in the process that built it: its collector thread, which feeds the workers
/// and delivers every result, lives there. A copy of the handle in a process forked from it (a
/// [`Process`](crate::Process) that captured an `Arc<Pool>`, a worker of another pool, a
/// program's own `fork`) fails every call at once with [`Error::WrongProcess`], as do the
/// pool's [`AsyncResult`](crate::AsyncResult)s and [`Imap`](crate::Imap)s there; `close` and `terminate` do nothing there, and
/// dropping the copy leaves the parent's pool and workers alone. Build a pool in the child
/// instead: pools nest, under every start method.
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
/// #[task]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// let pool = Pool::builder().processes(2).build()?;
/// assert_eq!(pool.apply(square, 7)?, 49); // one parameter: the bare value
/// assert_eq!(pool.apply(add, (2, 3))?, 5); // several: a tuple
/// let squares = pool.map(square, 0..1000)?;
/// assert_eq!(squares[999], 999 * 999);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct Pool {
    pub(crate) shared: Arc<Shared>,
    collector: Mutex<Option<JoinHandle<()>>>,
    pub(crate) processes: usize,
}

impl Pool {
    /// Starts the collector thread, which forks the workers; returns once they run.
    pub(crate) fn start(
        processes: usize,
        task_timeout: Option<Duration>,
        workers: WorkerSettings,
    ) -> Result<Pool, Error> {
        panic_capture::install();
        let (sender, queue) = crate::driver::jobqueue::unbounded();
        let bell = sys::eventfd().map_err(Error::spawn)?;
        let shared = Arc::new(Shared::new(sender, processes, bell, task_timeout));
        let listener: Arc<dyn crate::cancel::Listener> = shared.clone();
        crate::cancel::register(Arc::downgrade(&listener));
        let pool = Pool {
            shared: Arc::clone(&shared),
            collector: Mutex::new(None),
            processes,
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        // The collector forks the workers itself: a worker's parent-death signal is tied to the
        // thread that forked it, and the collector lives until every worker is reaped.
        let handle = std::thread::Builder::new()
            .name("pool-core-collector".into())
            .spawn(move || match Collector::start(shared, queue, workers) {
                Ok(collector) => {
                    let _ = ready_tx.send(Ok(()));
                    collector.run();
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            })
            .map_err(Error::spawn)?;
        *pool.lock_collector() = Some(handle);
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(pool),
            // Dropping the pool terminates and reaps whatever did start.
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::spawn(std::io::Error::other(
                "the collector thread ended before starting the workers",
            ))),
        }
    }

    /// The number of worker processes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = pool_core::Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The process ids of the live workers (a dead worker's replacement appears here once it is
    /// forked).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = pool_core::Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<i32> {
        self.shared.worker_pids()
    }

    /// Counters of the pool's work so far: tasks submitted, completed and failed, workers alive
    /// and replaced, queue depth, busy time per worker. See [`PoolStats`].
    pub fn stats(&self) -> PoolStats {
        PoolStats::read(&self.shared)
    }

    fn lock_collector(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one job frame; `sink` gets its result frame (or the error that ended it) as part
    /// `part`.
    pub(crate) fn submit_frame(
        &self,
        (frame, spliced): (Vec<u8>, Spliced),
        task: TaskName,
        sink: Arc<dyn Sink>,
        part: usize,
    ) {
        self.shared
            .submit(Job::with_spliced((frame, spliced), task, sink, part));
    }

    /// Stops accepting work. Work already submitted still runs; then the workers exit. Later
    /// submissions resolve to [`Error::Closed`].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let queued = pool.apply_async(square, 3);
    /// pool.close();
    /// assert!(matches!(pool.apply(square, 4), Err(Error::Closed)));
    /// assert_eq!(queued.get()?, 9); // queued work still finishes
    /// pool.join()?;
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn close(&self) {
        self.shared.close();
    }

    /// Kills the workers now (SIGKILL), without waiting for queued or running work, which
    /// resolves to [`Error::Terminated`]. Returns at once; [`join`](Self::join) waits until
    /// every worker is reaped.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    ///
    /// #[task]
    /// fn forever() {
    ///     loop {
    ///         std::thread::sleep(std::time::Duration::from_secs(1));
    ///     }
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let stuck = pool.apply_async(forever, ());
    /// pool.terminate();
    /// pool.join()?;
    /// assert!(matches!(stuck.get(), Err(Error::Terminated)));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits for the workers to exit after [`close`](Self::close) or
    /// [`terminate`](Self::terminate); fails with [`Error::NotClosed`] before either.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{Error, Pool};
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert!(matches!(pool.join(), Err(Error::NotClosed)));
    /// pool.close();
    /// pool.join()?;
    /// assert!(pool.worker_pids().is_empty());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn join(&self) -> Result<(), Error> {
        self.shared.owner.check()?;
        if !self.shared.is_closed() {
            return Err(Error::NotClosed);
        }
        let mut collector = self.lock_collector();
        if let Some(handle) = collector.take() {
            // The collector only ends by finishing its loop (a panic would be a bug, and its
            // `Drop` still reaps every worker), so the join result carries nothing to report.
            let _ = handle.join();
        }
        Ok(())
    }
}

/// The local engine: jobs go to this pool's queue and its workers.
impl crate::engine::Engine for Pool {
    #[inline]
    fn submit_job(&self, job: crate::engine::JobFrame, sink: crate::engine::JobSink) {
        self.shared.submit(Job::with_spliced(
            (job.frame, job.spliced),
            job.task,
            sink.sink,
            sink.part,
        ));
    }

    fn lookahead(&self) -> usize {
        // Enough to keep every worker busy while the consumer works through a chunk.
        2 * self.processes + 2
    }

    fn owner(&self) -> crate::owner::Owner {
        self.shared.owner
    }

    fn accepts_work(&self) -> bool {
        !self.shared.is_closed()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.shared.owner.is_here() {
            // A copy in a forked child: the collector and the workers are the parent's. Leave
            // them alone, and take no lock (one held at the fork stays held here): the shared
            // state is leaked, never dropped, in this process.
            std::mem::forget(Arc::clone(&self.shared));
            if let Ok(mut handle) = self.collector.try_lock() {
                std::mem::forget(handle.take());
            }
            return;
        }
        if self.lock_collector().is_some() {
            self.terminate();
            let _ = self.join();
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("workers", &self.worker_pids())
            .field("closed", &self.shared.is_closed())
            .field("terminated", &self.shared.is_terminated())
            .finish()
    }
}
