//! [`Pool`], the parent's handle to a set of worker processes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::{PoolBuilder, WorkerSettings};
use crate::driver::collector::Collector;
use crate::driver::shared::Shared;
use crate::imap::Imap;
use crate::job::{Job, Sink, TaskName};
use crate::result::{decode_all, decode_one, encoded_all, Counts, Slot};
use crate::wire::frame::JobBuilder;
use crate::wire::splice::Spliced;
use crate::{panic_capture, sys, AsyncResult, Error, PoolStats, Task};

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
/// pool's [`AsyncResult`]s and [`Imap`]s there; `close` and `terminate` do nothing there, and
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
    processes: usize,
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

    /// [`submit_frame`](Self::submit_frame) for a submitter that reuses the result's buffer for
    /// its next job (see `Job::recycle`).
    fn submit_recycled(
        &self,
        (frame, spliced): (Vec<u8>, Spliced),
        task: TaskName,
        sink: Arc<dyn Sink>,
        part: usize,
    ) {
        let mut job = Job::with_spliced((frame, spliced), task, sink, part);
        job.recycle = true;
        self.shared.submit(job);
    }

    /// Runs `task(args)` in a worker and waits for the result.
    ///
    /// `args` is the bare value for a one-parameter task and a tuple for several.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn greet(name: String, times: usize) -> String {
    ///     format!("hello {name}! ").repeat(times)
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert_eq!(pool.apply(greet, ("Ada".to_string(), 2))?, "hello Ada! hello Ada! ");
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output, Error> {
        self.apply_async(task, args).get()
    }

    /// Submits `task(args)` and returns at once with a handle to the result.
    ///
    /// Callbacks can be attached to the handle with [`AsyncResult::on_success`] and
    /// [`AsyncResult::on_error`].
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending: Vec<_> = (0..10).map(|i| pool.apply_async(square, i)).collect();
    /// let values: Vec<u64> = pending.iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(values[9], 81);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_async<T: Task>(&self, _task: T, args: T::Args) -> AsyncResult<T::Output> {
        self.apply_async_by_name(T::NAME.into(), None, move |name| {
            let mut b = JobBuilder::for_one(name, &args);
            b.push_owned(args)?;
            Ok(b)
        })
    }

    /// [`apply`](Self::apply) with a time limit for this call (overriding the pool's
    /// [`task_timeout`](PoolBuilder::task_timeout)): past it, the worker is killed and replaced
    /// and the call fails with [`Error::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::time::Duration;
    ///
    /// #[task]
    /// fn spin() {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// match pool.apply_timeout(spin, (), Duration::from_millis(100)) {
    ///     Err(Error::Timeout { limit, .. }) => assert_eq!(limit, Duration::from_millis(100)),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_timeout<T: Task>(
        &self,
        task: T,
        args: T::Args,
        limit: Duration,
    ) -> Result<T::Output, Error> {
        self.apply_async_timeout(task, args, limit).get()
    }

    /// [`apply_async`](Self::apply_async) with a time limit for this call; see
    /// [`apply_timeout`](Self::apply_timeout).
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
    /// let r = pool.apply_async_timeout(square, 5, std::time::Duration::from_secs(10));
    /// assert_eq!(r.get()?, 25);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_async_timeout<T: Task>(
        &self,
        _task: T,
        args: T::Args,
        limit: Duration,
    ) -> AsyncResult<T::Output> {
        self.apply_async_by_name(T::NAME.into(), Some(limit), move |name| {
            let mut b = JobBuilder::for_one(name, &args);
            b.push_owned(args)?;
            Ok(b)
        })
    }

    /// Runs the task registered as `name` with untyped arguments, and decodes its result as `R`.
    ///
    /// This is for names known only at run time (from a config file, a message, another
    /// language). Arguments that do not fit the task's parameters give [`Error::ArgsDecode`];
    /// a name no task has gives [`Error::UnknownTask`]. Prefer [`apply`](Self::apply), which
    /// checks types at compile time.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    ///
    /// #[task(name = "math.square")]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert_eq!(pool.apply_named::<_, u64>("math.square", 4)?, 16);
    /// assert!(matches!(
    ///     pool.apply_named::<_, u64>("math.cube", 4),
    ///     Err(Error::UnknownTask { .. })
    /// ));
    /// assert!(matches!(
    ///     pool.apply_named::<_, u64>("math.square", "four"),
    ///     Err(Error::ArgsDecode { .. })
    /// ));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_named<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        name: &str,
        args: A,
    ) -> Result<R, Error> {
        self.apply_async_by_name(TaskName::Owned(name.to_owned()), None, |name| {
            let mut b = JobBuilder::new(name);
            b.push_any(&args)?;
            Ok(b)
        })
        .get()
    }

    fn apply_async_by_name<R: DeserializeOwned + 'static>(
        &self,
        name: TaskName,
        limit: Option<Duration>,
        build: impl FnOnce(&str) -> Result<JobBuilder, String>,
    ) -> AsyncResult<R> {
        let slot = Slot::new(name.clone(), Counts::One(1), decode_one::<R>);
        if name.len() > usize::from(u16::MAX) {
            slot.complete_part(0, Err(Error::UnknownTask { name: name.into() }));
            return AsyncResult::new(slot);
        }
        let builder = match build(&name) {
            Ok(builder) => builder,
            Err(message) => {
                let task = name.into_owned();
                slot.complete_part(0, Err(Error::ArgsEncode { task, message }));
                return AsyncResult::new(slot);
            }
        };
        let mut job = Job::with_spliced(builder.finish_spliced(), name, slot.clone(), 0);
        job.limit = limit;
        self.shared.submit(job);
        AsyncResult::new(slot)
    }

    /// Runs the task registered as `name` once per item of `items`, as one job (like one chunk
    /// of a `map`), where each item is the task's arguments already encoded with
    /// [`wire::encode`](crate::wire::encode); the result holds each item's return value,
    /// encoded the same way, in order. It fails with the first item's error, as `map` does.
    ///
    /// For transports that carry tasks as bytes (such as `pool-redis`), which need no types:
    /// the worker decodes and encodes as the task's own signature says, so undecodable
    /// arguments are an [`Error::ArgsDecode`] and an unknown name an [`Error::UnknownTask`].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, wire, Pool, Task};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let items = [wire::encode(&3u64).unwrap(), wire::encode(&4u64).unwrap()];
    /// let out = pool.apply_encoded(square::NAME, &items).get()?;
    /// let out: Vec<u64> = out.iter().map(|b| wire::decode(b).unwrap()).collect();
    /// assert_eq!(out, [9, 16]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_encoded<B: AsRef<[u8]>>(
        &self,
        name: &str,
        items: &[B],
    ) -> AsyncResult<Vec<Vec<u8>>> {
        let name: TaskName = TaskName::Owned(name.to_owned());
        if items.is_empty() {
            return AsyncResult::new(Slot::new(name, Counts::Many(Vec::new()), encoded_all));
        }
        let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
        let slot = Slot::new(name.clone(), Counts::One(count), encoded_all);
        if name.len() > usize::from(u16::MAX) {
            slot.complete_part(0, Err(Error::UnknownTask { name: name.into() }));
            return AsyncResult::new(slot);
        }
        let mut builder = JobBuilder::new(&name);
        for item in items {
            if let Err(message) = builder.push_encoded(item.as_ref()) {
                let task = name.into_owned();
                slot.complete_part(0, Err(Error::ArgsEncode { task, message }));
                return AsyncResult::new(slot);
            }
        }
        self.shared
            .submit(Job::new(builder.finish(), name, slot.clone(), 0));
        AsyncResult::new(slot)
    }

    /// Applies `task` to every item and returns the results in order, failing with the first
    /// error (as Python's `map` raises).
    ///
    /// Items travel in chunks (one frame per chunk); the default chunk size is Python's,
    /// `ceil(n / (4 × processes))`, and a chunk also ends once it holds 128 KiB of encoded
    /// arguments. See [`map_chunked`](Self::map_chunked) to choose an exact size. Results are
    /// decoded into the output as chunks come back, while later chunks are encoded and run, with
    /// at most 16 MiB of chunks in flight. A task that takes and returns scalars (integers,
    /// floats, `bool`) takes a faster path: fixed-width items, read and written in tight loops.
    /// A task that takes a `Vec<u8>` gets each buffer of 64 KiB or more moved into its job, not
    /// copied: the collector copies it straight into the worker's shared memory, and this
    /// thread frees it once its result is back.
    ///
    /// The error returned is always the first in item order. Unlike Python's `map`, which runs
    /// every item before it raises, this one stops submitting chunks once it has that error:
    /// chunks already sent finish in the background (they still count in
    /// [`stats`](Self::stats)) and their results are dropped, so how many items after the
    /// failing one ran depends on timing.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let v = pool.map(square, 0..10_000)?;
    /// assert_eq!(v.len(), 10_000);
    /// assert_eq!(v[100], 10_000);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map<T, I>(&self, _task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_now::<T, _>(
            iter,
            n,
            self.default_chunksize(n),
            Some(DEFAULT_CHUNK_BYTES),
        )
    }

    /// [`map`](Self::map) with `chunksize` items per frame (at least 1). Larger chunks cost
    /// less per item; smaller ones balance uneven work better.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.map_chunked(square, 0..5, 2)?, [0, 1, 4, 9, 16]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_now::<T, _>(iter, n, chunksize.clamp(1, u32::MAX as usize), None)
    }

    /// The blocking `map`: submits chunks as they are encoded and decodes each result as it
    /// arrives — between submissions, then while waiting for the rest — so encoding, the
    /// workers' computing and decoding overlap instead of following one another. With
    /// `max_bytes`, a chunk also ends once its frame holds that many bytes.
    fn map_now<T: Task, I: Iterator<Item = T::Args>>(
        &self,
        mut iter: I,
        n: usize,
        chunksize: usize,
        max_bytes: Option<usize>,
    ) -> Result<Vec<T::Output>, Error> {
        self.shared.owner.check()?;
        let (sink, rx) = crate::imap::ChannelSink::with_given_back(true);
        // Results are decoded straight onto the end of `out` in chunk order; a chunk that comes
        // back before its turn waits, undecoded, in `early` (workers finish chunks in about the
        // order they took them, so it stays small).
        let mut out: Vec<T::Output> = Vec::with_capacity(n);
        let mut early: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        // Decoded result frames, whose buffers the next chunks are built in.
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut flight = InFlight::default();
        let mut next = 0usize;
        let mut take = |(index, result): crate::imap::Delivery,
                        flight: &mut InFlight,
                        out: &mut Vec<T::Output>,
                        spare: &mut Vec<Vec<u8>>|
         -> Result<(), Error> {
            let index = index as usize;
            let (count, size, spliced) = flight.chunks[index];
            if spliced {
                // Given back before the outcome was delivered (see `Job::complete`).
                sink.free_given_back();
            }
            flight.pending -= 1;
            flight.bytes -= size;
            let frame = result?;
            crate::result::check_frame(&frame, T::NAME, count)?;
            early.insert(index, frame);
            while let Some(frame) = early.remove(&next) {
                sys::prefault(out, flight.chunks[next].0 as usize);
                crate::result::decode_into(&frame, T::NAME, out)?;
                spare.push(frame);
                next += 1;
            }
            Ok(())
        };
        // Bytes of job frames in flight at once: enough to keep every worker busy while the
        // next chunk is encoded, bounded so that memory stays bounded and the result buffers
        // come back to be reused for the next chunks. At least two chunks per worker go,
        // however big.
        let mut left = n;
        while left > 0 {
            while flight.pending >= 2 * self.processes.max(1) && flight.bytes > MAX_IN_FLIGHT_BYTES
            {
                let delivery = rx.recv().expect("the sink holds a sender");
                take(delivery, &mut flight, &mut out, &mut spare)?;
            }
            let want = chunksize.min(left) as u32;
            let buf = spare.pop().unwrap_or_default();
            let (frame, spliced, count) = encode_chunk::<T>(buf, &mut iter, want, n, max_bytes)?;
            let size = frame.len() + spliced.len();
            left -= count as usize;
            flight.chunks.push((count, size, !spliced.is_empty()));
            flight.pending += 1;
            flight.bytes += size;
            let sink: Arc<dyn Sink> = sink.clone();
            let part = flight.chunks.len() - 1;
            self.submit_recycled((frame, spliced), T::NAME.into(), sink, part);
            while let Ok(delivery) = rx.try_recv() {
                take(delivery, &mut flight, &mut out, &mut spare)?;
            }
        }
        // `n` came from the iterator's size hint: an iterator that yields more than it promised
        // fails the map rather than losing the rest (see `counted`).
        if iter.next().is_some() {
            return Err(too_many(n));
        }
        while flight.pending > 0 {
            // Every submitted chunk is answered exactly once (see `Job`), and `sink` keeps the
            // channel open, so this wait ends.
            let delivery = rx.recv().expect("the sink holds a sender");
            take(delivery, &mut flight, &mut out, &mut spare)?;
        }
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }

    /// Like [`map`](Self::map), but returns at once with a handle to the whole result.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let r = pool.map_async(square, vec![1, 2, 3]);
    /// assert_eq!(r.get()?, vec![1, 4, 9]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_async<T, I>(&self, _task: T, items: I) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_exact::<T, _>(iter, n, self.default_chunksize(n))
    }

    /// Python's default: `ceil(n / (4 × processes))`.
    fn default_chunksize(&self, n: usize) -> usize {
        n.div_ceil(4 * self.processes).max(1)
    }

    /// [`map_async`](Self::map_async) with `chunksize` items per frame (at least 1).
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let r = pool.map_async_chunked(square, 0..1000, 100);
    /// assert_eq!(r.get()?.len(), 1000);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_async_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_exact::<T, _>(iter, n, chunksize.clamp(1, u32::MAX as usize))
    }

    /// Submits `n` items in chunks as they are encoded, so workers start on the first chunk
    /// while the caller encodes the next.
    fn map_exact<T: Task, I: Iterator<Item = T::Args>>(
        &self,
        mut iter: I,
        n: usize,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>> {
        if let Err(err) = self.shared.owner.check() {
            let slot = Slot::new(
                T::NAME.into(),
                Counts::Many(vec![0]),
                decode_all::<T::Output>,
            );
            slot.complete_part(0, Err(err));
            return AsyncResult::new(slot);
        }
        let counts = chunk_counts(n, chunksize);
        if counts.is_empty() && iter.next().is_some() {
            let slot = Slot::new(
                T::NAME.into(),
                Counts::Many(vec![0]),
                decode_all::<T::Output>,
            );
            slot.complete_part(0, Err(too_many(n)));
            return AsyncResult::new(slot);
        }
        let slot = Slot::new(
            T::NAME.into(),
            Counts::Many(counts.clone()),
            decode_all::<T::Output>,
        );
        let last = counts.len().wrapping_sub(1);
        for (index, &count) in counts.iter().enumerate() {
            let encoded = encode_chunk::<T>(Vec::new(), &mut iter, count, n, None);
            // Checked before the last chunk goes, so the map fails as a whole (see `counted`).
            let encoded = match encoded {
                Ok(_) if index == last && iter.next().is_some() => Err(too_many(n)),
                other => other,
            };
            match encoded {
                Ok((frame, spliced, _)) => {
                    self.submit_frame((frame, spliced), T::NAME.into(), slot.clone(), index)
                }
                Err(err) => {
                    // The whole map fails with this error; nothing more is submitted.
                    slot.complete_part(index, Err(err));
                    break;
                }
            }
        }
        AsyncResult::new(slot)
    }

    /// [`map`](Self::map) with a progress bar (rate and ETA) on standard error, advanced as
    /// results arrive; hidden when standard error is not a terminal. Feature `progress`.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let v = pool.map_with_progress(square, 0..10_000)?;
    /// assert_eq!(v[9_999], 9_999 * 9_999);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn map_with_progress<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let items: Vec<T::Args> = items.into_iter().collect();
        let n = items.len();
        // Smaller chunks than `map`'s default, so the bar moves smoothly.
        let chunksize = n.div_ceil(64 * self.processes).max(1);
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
            )
            .expect("a valid template"),
        );
        let mut out = Vec::with_capacity(n);
        for result in self.imap_chunked(task, items, chunksize) {
            match result {
                Ok(value) => out.push(value),
                Err(err) => {
                    bar.abandon();
                    return Err(err);
                }
            }
            bar.inc(1);
        }
        bar.finish();
        Ok(out)
    }

    /// A lazy, ordered map: an iterator of one `Result` per item, in input order, with chunk
    /// size 1 (as in Python). See [`Imap`].
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// for (i, r) in pool.imap(square, 0..10).enumerate() {
    ///     assert_eq!(r?, (i * i) as u64);
    /// }
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_chunked(task, items, 1)
    }

    /// [`imap`](Self::imap) with `chunksize` items per frame.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let total: u64 = pool.imap_chunked(square, 0..10_000, 256).map(Result::unwrap).sum();
    /// assert_eq!(total, (0..10_000u64).map(|x| x * x).sum());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Imap::on_engine(self, items.into_iter(), chunksize, true)
    }

    /// Like [`imap`](Self::imap), but yields each chunk's results as soon as it finishes,
    /// whatever its position.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut v: Vec<u64> = pool.imap_unordered(square, 0..5).collect::<Result<_, _>>()?;
    /// v.sort();
    /// assert_eq!(v, [0, 1, 4, 9, 16]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap_unordered<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_unordered_chunked(task, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) with `chunksize` items per frame.
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
    /// let pool = Pool::builder().processes(2).build()?;
    /// let n = pool.imap_unordered_chunked(square, 0..1000, 50).count();
    /// assert_eq!(n, 1000);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap_unordered_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Imap::on_engine(self, items.into_iter(), chunksize, false)
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

/// An input whose length is known: the iterator itself when its size hint is exact, otherwise
/// its items collected first (as Python's `map` does).
///
/// A size hint is only a hint: an iterator may break it. Every user of a `Counted` therefore
/// checks both ways — `encode_chunk` fails when the input ends before `n` items, and the maps
/// check that nothing follows the `n`th ([`too_many`]) — so a lying hint fails the map with
/// [`Error::BadIterator`] and never drops or invents an item.
enum Counted<I: Iterator> {
    Exact(I),
    Collected(std::vec::IntoIter<I::Item>),
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        match self {
            Counted::Exact(iter) => iter.next(),
            Counted::Collected(iter) => iter.next(),
        }
    }
}

fn counted<I: IntoIterator>(items: I) -> (Counted<I::IntoIter>, usize) {
    let iter = items.into_iter();
    match iter.size_hint() {
        (lo, Some(hi)) if lo == hi => (Counted::Exact(iter), lo),
        _ => {
            let items: Vec<I::Item> = iter.collect();
            let n = items.len();
            (Counted::Collected(items.into_iter()), n)
        }
    }
}

/// The error for an input that yielded more items than its exact size hint promised.
fn too_many(n: usize) -> Error {
    Error::BadIterator(format!(
        "its size_hint promised exactly {n} items and it yielded more"
    ))
}

/// How many items each chunk of a map of `n` items holds.
fn chunk_counts(n: usize, chunksize: usize) -> Vec<u32> {
    (0..n.div_ceil(chunksize))
        .map(|c| chunksize.min(n - c * chunksize) as u32)
        .collect()
}

/// With the default chunk size, a chunk of a blocking `map` also ends once its frame holds this
/// many bytes: a frame larger than a ring goes through in pieces, each a hand-over between the
/// processes, and a frame this small, with its results, stays in the caches of the cores that
/// copy it (here `map` of 40 M `u64` ran at 55 M/s with 1 MiB frames, 66 M/s with 128 KiB).
const DEFAULT_CHUNK_BYTES: usize = 128 << 10;

/// The chunks of a blocking `map`: each one's item count, frame length and whether buffers are
/// spliced into it, and how many of them, and how many bytes, are in flight.
#[derive(Default)]
struct InFlight {
    chunks: Vec<(u32, usize, bool)>,
    pending: usize,
    bytes: usize,
}

/// A blocking `map` waits for results before it submits more once its job frames in flight
/// hold this many bytes (and every worker has two chunks).
const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;

/// Encodes the next `count` items of a map of `n` into one job frame, built in `buf` (a
/// recycled buffer, or a new one), with fewer items (at least one) if the frame reaches
/// `max_bytes` first. Returns the frame and how many items it holds. Scalar arguments make a
/// fixed-width frame.
pub(crate) fn encode_chunk<T: Task>(
    buf: Vec<u8>,
    iter: &mut impl Iterator<Item = T::Args>,
    count: u32,
    n: usize,
    max_bytes: Option<usize>,
) -> Result<(Vec<u8>, Spliced, u32), Error> {
    let ended_early = || {
        Error::BadIterator(format!(
            "its size_hint promised exactly {n} items and it ended early"
        ))
    };
    if let Some(width) = crate::wire::codec::fixed_width::<T::Args>() {
        // Scalars (which always encode): a fixed-width job, written in runs of items in a
        // tight loop. `max_bytes` is checked between runs, so a frame may pass it by one run.
        let mut builder = JobBuilder::fixed_in_buffer(T::NAME, buf, width);
        while builder.count() < count && max_bytes.is_none_or(|max| builder.len() < max) {
            let mut ended = false;
            builder.push_small_run((count - builder.count()) as usize, || match iter.next() {
                Some(args) => crate::wire::codec::Small::fixed(&args),
                None => {
                    ended = true;
                    None
                }
            });
            if ended {
                return Err(ended_early());
            }
        }
        let count = builder.count();
        let (frame, spliced) = builder.finish_spliced();
        return Ok((frame, spliced, count));
    }
    let mut builder = JobBuilder::in_buffer(T::NAME, buf);
    while builder.count() < count {
        let Some(args) = iter.next() else {
            return Err(ended_early());
        };
        builder
            .push_owned(args)
            .map_err(|message| Error::ArgsEncode {
                task: T::NAME.to_owned(),
                message,
            })?;
        if builder.count() == 1 && count > 64 {
            // One allocation for a big chunk, instead of a dozen that copy and fault in pages.
            builder.reserve_like(count as usize - 1, max_bytes);
        }
        if max_bytes.is_some_and(|max| builder.len() >= max) {
            break;
        }
    }
    let count = builder.count();
    let (frame, spliced) = builder.finish_spliced();
    Ok((frame, spliced, count))
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
