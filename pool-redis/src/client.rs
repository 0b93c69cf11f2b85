//! The client side: [`RedisPool`], which submits tasks to a queue and collects their results.
//!
//! # Threads and ownership
//!
//! A `RedisPool` runs two threads, each with its own connection:
//!
//! - the *submitter* takes jobs from a channel and sends them as `XADD`s, many per round trip;
//! - the *collector* reads this client's result stream with `XREAD` (from the last id it has
//!   seen, so a reply lost in a reconnection is read again) and resolves the waiting jobs.
//!
//! A pool from `connect_async` also keeps the `redis` crate's async connection, on which
//! `apply_await` sends its job from the caller's own task (feature `tokio`).
//!
//! Every job is in the `pending` table from its submission until its first result; a result for
//! a job no longer there (a duplicate, after a redelivery) is dropped. That table is what makes
//! delivery at-least-once on the wire but exactly-once for the caller.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use pool_core::__private::{Engine, JobFrame, JobSink, Owner};
use pool_core::{AsyncResult, Imap, Task};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conn::{Connector, Link};
use crate::status::{self, QueueStatus};
use crate::wire::{self, Keys, WireError};
use crate::Error;
use pool_core::meter;

/// What a job's items gave: all values, or (when one failed) each item's own outcome.
enum Answered {
    All(Vec<Vec<u8>>),
    Each(Vec<Result<Vec<u8>, Error>>),
}

/// How a job's outcome reaches whoever waits for it.
type Resolve = Box<dyn FnOnce(Result<Answered, Error>) + Send>;

/// Submissions sent in one round trip, at most.
const SUBMIT_BATCH: usize = 1024;
/// How long the collector's `XREAD` blocks, so that it notices a drop.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// Chunks an `imap` keeps in flight.
const IMAP_WINDOW: usize = 64;
/// The largest default chunk of a `map`.
const MAX_DEFAULT_CHUNK: usize = 4096;

/// A pool whose workers are on other machines (or other processes), fed through a Redis queue.
///
/// It has the calls of [`pool_core::Pool`] wherever they make sense: typed [`apply`],
/// [`apply_async`], [`map`] (in chunks), [`imap`] and [`imap_unordered`], and [`close`] /
/// [`join`] for the work this client submitted. The results of a call come back to this client
/// only (each client reads its own result stream).
///
/// Delivery is at-least-once: a job whose worker goes silent is handed to another worker, so a
/// task may *run* more than once (its side effects may happen twice), but the caller receives
/// exactly one result per call.
///
/// A job waits in Redis until a worker takes it: with no worker serving the queue, `apply` and
/// `get` wait too (as with any broker). Bound the wait with
/// [`AsyncResult::get_timeout`] / [`wait_timeout`](AsyncResult::wait_timeout) where that
/// matters, and watch [`status`](RedisPool::status) for live workers.
///
/// [`apply`]: RedisPool::apply
/// [`apply_async`]: RedisPool::apply_async
/// [`map`]: RedisPool::map
/// [`imap`]: RedisPool::imap
/// [`imap_unordered`]: RedisPool::imap_unordered
/// [`close`]: RedisPool::close
/// [`join`]: RedisPool::join
///
/// # Examples
///
/// ```no_run
/// use pool_core::task;
/// use pool_redis::RedisPool;
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = RedisPool::connect("redis://127.0.0.1:6379/", "jobs")?;
/// assert_eq!(pool.apply(square, 7)?, 49);
/// assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), pool_redis::Error>(())
/// ```
pub struct RedisPool {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The process that connected: the only one where the submitter and result threads run.
    /// In a process forked from it, every call fails at once with `WrongProcess`, and a drop
    /// leaves the parent's connection alone (see `pool_core::Error::WrongProcess`).
    owner: Owner,
}

struct Inner {
    url: String,
    client: Connector,
    keys: Keys,
    client_id: String,
    next_id: AtomicU64,
    /// The jobs waiting for their result, by job id (one table, one lock and one lookup per
    /// job on the way in and on the way out).
    pending: Mutex<HashMap<u64, Pending, JobIdHash>>,
    /// Signalled when `pending` becomes empty.
    idle: Condvar,
    submit: Mutex<Option<Sender<Submission>>>,
    stop: AtomicBool,
    /// Jobs not begun this long after their submission are not run (ms; 0: never expire).
    expiry_ms: AtomicU64,
    /// For `RedisPool::apply_await`: the async connection a pool from `connect_async` made.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    aio: Aio,
}

/// The async connection of a pool from `connect_async` (nothing without the `tokio` feature).
#[derive(Default)]
struct Aio(#[cfg(feature = "tokio")] Option<(redis::Client, redis::aio::MultiplexedConnection)>);

/// A job waiting for its result.
struct Pending {
    resolve: Resolve,
    /// How to tell that its caller cancelled it (absent when the caller cannot).
    cancelled: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Its entry in the task stream, once sent (for a cancel to delete it).
    entry: Option<String>,
}

/// Hashes job ids with one multiplication instead of SipHash (the table sees every job twice).
/// Safe from collisions chosen by others: only ids this client counted up itself are ever
/// inserted; an answer's id (which a hostile writer could choose) is only looked up.
#[derive(Default, Clone, Copy)]
struct JobIdHash;

impl std::hash::BuildHasher for JobIdHash {
    type Hasher = JobIdHasher;

    fn build_hasher(&self) -> JobIdHasher {
        JobIdHasher(0)
    }
}

#[derive(Default)]
struct JobIdHasher(u64);

impl std::hash::Hasher for JobIdHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing: the high bits, which the table's control bytes use, mix every
        // bit of the id.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// A job of `apply_await` registered and not yet in Redis: answered `Closed` (and so taken out
/// of the table) if the future sending it is dropped first.
#[cfg(feature = "tokio")]
struct Unsent<'a> {
    inner: &'a Inner,
    id: Option<u64>,
}

#[cfg(feature = "tokio")]
impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.resolve(id, Err(Error::Closed));
        }
    }
}

/// A registered job, encoded, on its way to the task stream.
struct Outgoing {
    id: u64,
    task: String,
    args: Vec<u8>,
}

enum Submission {
    Job(Outgoing),
    /// Something was cancelled: take cancelled jobs back (see [`Inner::take_back_cancelled`]).
    Cancels,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random identifier (128 bits from the kernel), in hex.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the live local buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Never expected on Linux; fall back to something still unique enough per host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisPool {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` with the `tls` feature) and to the queue named `queue`. Fails at once if
    /// Redis cannot be reached; later disconnections are retried.
    ///
    /// # Examples
    ///
    /// ```
    /// // A malformed URL is an error, not a panic.
    /// assert!(pool_redis::RedisPool::connect("not a url", "jobs").is_err());
    /// ```
    pub fn connect(url: &str, queue: &str) -> Result<RedisPool, Error> {
        RedisPool::with_client(crate::conn::open(url)?, queue)
    }

    /// [`connect`](Self::connect) through a `redis::Client` built by the caller: for TLS with a
    /// private certificate authority or client certificates (see [`tls_client`] with the
    /// `tls` feature), or any setting a URL cannot carry.
    ///
    /// [`tls_client`]: crate::tls_client
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let client = pool_redis::redis::Client::open("redis://127.0.0.1/")?;
    /// let pool = pool_redis::RedisPool::with_client(client, "jobs")?;
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn with_client(client: redis::Client, queue: &str) -> Result<RedisPool, Error> {
        RedisPool::with_connector(client.into(), queue)
    }

    /// [`connect`](Self::connect) to a Redis Cluster through any of `nodes` (feature
    /// `cluster`). The client follows the cluster's slots, redirections and failovers; every
    /// key of a queue shares one hash tag, so a queue lives on one master and its replicas.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let nodes = ["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"];
    /// let pool = pool_redis::RedisPool::connect_cluster(&nodes, "jobs")?;
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    #[cfg(feature = "cluster")]
    pub fn connect_cluster(nodes: &[&str], queue: &str) -> Result<RedisPool, Error> {
        RedisPool::with_connector(Connector::cluster(nodes)?, queue)
    }

    fn with_connector(client: Connector, queue: &str) -> Result<RedisPool, Error> {
        let keys = Keys::new(queue)?;
        let mut first = Link::new(client.clone(), Duration::from_secs(5));
        first.connect_once()?;
        status::ensure_group(&mut first, &keys)?;
        RedisPool::start(client, keys, first, Aio::default())
    }

    /// [`connect`](Self::connect) for async code (feature `tokio`): the connection check and
    /// the queue's setup go through the `redis` crate's async (multiplexed, tokio) connection,
    /// so no runtime thread waits on the network, and the pool keeps that connection for
    /// [`apply_await`](Self::apply_await), which submits on it from the caller's task. The
    /// pool's other calls never block an async caller either: a submission is handed to the
    /// client's own submitter thread through a channel, and every result ([`AsyncResult`],
    /// [`Imap`] with pool-core's `stream` feature) is a `Future` (a `Stream`). So the
    /// blocking calls still work from any thread, and nothing of the pool stops with the
    /// runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # async fn run() -> Result<(), pool_redis::Error> {
    /// let pool = pool_redis::RedisPool::connect_async("redis://127.0.0.1/", "jobs").await?;
    /// assert_eq!(pool.apply_async(square, 7).await?, 49);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn connect_async(url: &str, queue: &str) -> Result<RedisPool, Error> {
        RedisPool::with_client_async(crate::conn::open(url)?, queue).await
    }

    /// [`connect_async`](Self::connect_async) through a `redis::Client` built by the caller.
    #[cfg(feature = "tokio")]
    pub async fn with_client_async(client: redis::Client, queue: &str) -> Result<RedisPool, Error> {
        let keys = Keys::new(queue)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&keys.tasks)
            .arg(crate::wire::GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(err) if crate::conn::has_code(&err, "BUSYGROUP") => {}
            Err(err) => return Err(err.into()),
        }
        // The submitter's connection is opened by its own thread, on its first job.
        let first = Link::new(client.clone(), Duration::from_secs(5));
        RedisPool::start(
            client.clone().into(),
            keys,
            first,
            Aio(Some((client, conn))),
        )
    }

    /// Starts the client's threads; `first` is the submitter's connection.
    fn start(client: Connector, keys: Keys, first: Link, aio: Aio) -> Result<RedisPool, Error> {
        let url = client.describe();
        let first = first.role("client submitter");
        let (tx, rx) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner {
            url,
            client,
            keys,
            client_id: random_id(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::default()),
            idle: Condvar::new(),
            submit: Mutex::new(Some(tx)),
            stop: AtomicBool::new(false),
            expiry_ms: AtomicU64::new(0),
            aio,
        });
        let listener: Arc<dyn pool_core::__private::CancelListener> = inner.clone();
        pool_core::__private::on_cancel(Arc::downgrade(&listener));
        let submitter = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("pool-redis-submit".into())
                .spawn(move || inner.run_submitter(first, rx))
                .map_err(|e| Error::Config(format!("cannot start a thread: {e}")))?
        };
        let collector = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("pool-redis-results".into())
                .spawn(move || inner.run_collector())
                .map_err(|e| Error::Config(format!("cannot start a thread: {e}")))?
        };
        Ok(RedisPool {
            inner,
            threads: Mutex::new(vec![submitter, collector]),
            owner: Owner::here(),
        })
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.inner.keys.queue
    }

    /// Runs `task(args)` on a worker and waits for the result.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// assert_eq!(pool.apply(square, 3)?, 9);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn apply<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output, Error> {
        self.apply_async(task, args).get().map_err(Error::from)
    }

    /// Submits `task(args)` and returns at once; the result arrives in the [`AsyncResult`] —
    /// the same type a local [`pool_core::Pool`] returns: `get`, `get_timeout`, `wait`,
    /// `wait_timeout`, `ready`, `successful`, `on_success`/`on_error`, and `.await`. Its
    /// errors are [`pool_core::Error`]s; this crate's own (Redis unreachable, a job given up)
    /// come as [`pool_core::Error::Engine`], and `pool_redis::Error::from` turns any of them
    /// back into an [`Error`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let pending: Vec<_> = (0..10).map(|i| pool.apply_async(square, i)).collect();
    /// let total: u64 = pending.iter().map(|r| r.get()).sum::<Result<_, _>>()?;
    /// assert_eq!(total, 285);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn apply_async<T: Task>(&self, _task: T, args: T::Args) -> AsyncResult<T::Output> {
        let encoded = pool_core::wire::encode(&args);
        self.submit_one(T::NAME.into(), encoded)
    }

    /// Runs `task(args)` on a worker from async code, submitting through the `redis` crate's
    /// async connection (feature `tokio`): on a pool from
    /// [`connect_async`](Self::connect_async), the job's `XADD` is awaited on the calling task,
    /// with the reconnection and backoff of the client's other connections, and no thread of
    /// this client takes part in the submission. The result then arrives as for
    /// [`apply_async`](Self::apply_async). On a pool from [`connect`](Self::connect) it is
    /// `apply_async(task, args).await`.
    ///
    /// Dropping the future before Redis has the job takes it back: it is not sent later.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # async fn run() -> Result<(), pool_redis::Error> {
    /// let pool = pool_redis::RedisPool::connect_async("redis://127.0.0.1/", "jobs").await?;
    /// assert_eq!(pool.apply_await(square, 7).await?, 49);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn apply_await<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output, Error> {
        let Some((client, conn)) = self.inner.aio.0.clone() else {
            return self.apply_async(task, args).await.map_err(Error::from);
        };
        let (result, sink) = AsyncResult::pending_one(T::NAME);
        let job = match pool_core::wire::encode(&args) {
            Ok(encoded) => self.register_to(T::NAME, &[encoded], sink),
            Err(message) => {
                sink.deliver_items(Err(pool_core::Error::ArgsEncode {
                    task: T::NAME.to_owned(),
                    message,
                }));
                None
            }
        };
        if let Some((job, _)) = job {
            // Until Redis has it, the job is this future's to send: if the future is dropped
            // first, nothing else will, so it leaves the table (and `join` does not wait).
            let mut unsent = Unsent {
                inner: &self.inner,
                id: Some(job.id),
            };
            let batch = [job];
            let pipe = self.inner.jobs_pipeline(&batch);
            let mut link = crate::conn::AsyncLink::new(client, Some(conn), "client async submit");
            let sent = link.query(&self.inner.stop, &pipe).await;
            unsent.id = None;
            self.inner.jobs_sent(&batch, sent);
        }
        result.await.map_err(Error::from)
    }

    /// Runs the task registered as `name`, with arguments of any serializable type, and decodes
    /// its result as `R`. Arguments that do not match the task's parameters fail with
    /// `Error::Task(pool_core::Error::ArgsDecode)`, an unknown name with
    /// `Error::Task(pool_core::Error::UnknownTask)`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let r: Result<u64, _> = pool.apply_named("no::such::task", 1u64);
    /// assert!(r.is_err());
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn apply_named<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        name: &str,
        args: A,
    ) -> Result<R, Error> {
        let encoded = pool_core::wire::encode(&args);
        self.submit_one::<R>(name.to_owned().into(), encoded)
            .get()
            .map_err(Error::from)
    }

    fn submit_one<R: DeserializeOwned + 'static>(
        &self,
        name: std::borrow::Cow<'static, str>,
        encoded: Result<Vec<u8>, String>,
    ) -> AsyncResult<R> {
        let (result, sink) = AsyncResult::pending_one(name.clone());
        match encoded {
            Ok(args) => self.submit_to(&name, &[args], sink),
            Err(message) => sink.deliver_items(Err(pool_core::Error::ArgsEncode {
                task: name.into_owned(),
                message,
            })),
        }
        result
    }

    /// Sends one job (through the submitter thread) and delivers its outcome to `sink`.
    fn submit_to(&self, task: &str, items: &[Vec<u8>], sink: JobSink) {
        if let Some((job, sender)) = self.register_to(task, items, sink) {
            self.hand_to_submitter(job, &sender);
        }
    }

    /// Registers one job whose outcome goes to `sink`, and returns it ready to send (`None`:
    /// it has its answer already, an error).
    fn register_to(
        &self,
        task: &str,
        items: &[Vec<u8>],
        sink: JobSink,
    ) -> Option<(Outgoing, Sender<Submission>)> {
        let cancelled = Box::new(sink.cancel_check());
        let n = items.len() as u64;
        meter::submitted("redis", n);
        self.register(task, items, Some(cancelled), move |outcome| match outcome {
            Ok(Answered::All(values)) => {
                meter::settled("redis", values.len() as u64, 0);
                sink.deliver_items(Ok(values))
            }
            Ok(Answered::Each(each)) => {
                let failed = each.iter().filter(|i| i.is_err()).count() as u64;
                meter::settled("redis", each.len() as u64 - failed, failed);
                sink.deliver_each(Ok(each
                    .into_iter()
                    .map(|item| item.map_err(pool_core::Error::from))
                    .collect()))
            }
            Err(err) => {
                match pool_core::Error::from(err.clone()) {
                    pool_core::Error::Cancelled => meter::cancelled("redis", n),
                    _ => meter::settled("redis", 0, n),
                }
                sink.deliver_items(Err(err.into()))
            }
        })
    }

    /// Registers one job (a chunk of encoded items) as waiting, so that `resolve` gets its
    /// outcome, and returns it ready to send, with the submitter's channel (taken under the one
    /// lock that also says the pool is open). `None` if it was answered at once (the pool is
    /// closed, or this is a forked copy).
    fn register(
        &self,
        task: &str,
        items: &[Vec<u8>],
        cancelled: Option<Box<dyn Fn() -> bool + Send + Sync>>,
        resolve: impl FnOnce(Result<Answered, Error>) + Send + 'static,
    ) -> Option<(Outgoing, Sender<Submission>)> {
        if let Err(err) = self.owner.check() {
            resolve(Err(err.into()));
            return None;
        }
        let Some(sender) = lock(&self.inner.submit).clone() else {
            resolve(Err(Error::Closed));
            return None;
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pending).insert(
            id,
            Pending {
                resolve: Box::new(resolve),
                cancelled,
                entry: None,
            },
        );
        let job = Outgoing {
            id,
            task: task.to_owned(),
            args: wire::encode_items(items.iter().map(Vec::as_slice)),
        };
        Some((job, sender))
    }

    /// Hands a registered job to the submitter thread.
    fn hand_to_submitter(&self, job: Outgoing, sender: &Sender<Submission>) {
        let id = job.id;
        if sender.send(Submission::Job(job)).is_err() {
            // The submitter has stopped (the pool is being dropped).
            self.inner.resolve(id, Err(Error::Closed));
        }
    }

    /// Every item's own outcome, in order, in chunks of `chunksize`: an item that panics, or
    /// whose worker process crashes under it, is an `Err` in its place, and every other item
    /// keeps its value (the worker's local pool runs the rest of the chunk again). The outer
    /// `Err` is for failures of the whole call. The same as `pool_core::Pool::map_results`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let out = pool.map_results_chunked(square, 0..1000, 100)?;
    /// assert!(out.iter().all(Result::is_ok));
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn map_results_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<Result<T::Output, Error>>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let out = pool_core::Executor::map_results_chunked(self, task, items, chunksize)?;
        Ok(out.into_iter().map(|r| r.map_err(Error::from)).collect())
    }

    /// Applies `task` to every item, in chunks, and returns the results in order, failing with
    /// the first error. The default chunk size is `ceil(n / (4 × worker processes))` over the
    /// live workers (at most 4,096 items; 1 if no worker is alive yet).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// assert_eq!(pool.map(square, 1..=3)?, [1, 4, 9]);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn map<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.map_async(task, items).get().map_err(Error::from)
    }

    /// [`map`](Self::map) with `chunksize` items per job (at least 1).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// assert_eq!(pool.map_chunked(square, 0..1000, 100)?.len(), 1000);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn map_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.map_async_chunked(task, items, chunksize)
            .get()
            .map_err(Error::from)
    }

    /// [`map`](Self::map) that returns at once with a handle to the whole result.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let r = pool.map_async(square, 0..10);
    /// assert_eq!(r.get()?[9], 81);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn map_async<T, I>(&self, task: T, items: I) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let items: Vec<T::Args> = items.into_iter().collect();
        let chunksize = self.default_chunksize(items.len());
        self.map_async_chunked(task, items, chunksize)
    }

    /// [`map_chunked`](Self::map_chunked) that returns at once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let r = pool.map_async_chunked(square, 0..10, 5);
    /// assert_eq!(r.get()?[9], 81);
    /// # Ok::<(), pool_redis::Error>(())
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
        let chunksize = chunksize.max(1);
        let mut chunks: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut failed = None;
        for args in items {
            match pool_core::wire::encode(&args) {
                Ok(bytes) => match chunks.last_mut() {
                    Some(c) if c.len() < chunksize => c.push(bytes),
                    _ => chunks.push(vec![bytes]),
                },
                Err(message) => {
                    failed = Some(pool_core::Error::ArgsEncode {
                        task: T::NAME.to_owned(),
                        message,
                    });
                    break;
                }
            }
        }
        if let Some(err) = failed {
            let (result, sink) = AsyncResult::pending_many(T::NAME, vec![0]);
            sink.deliver_items(Err(err));
            return result;
        }
        let counts = chunks.iter().map(|c| c.len() as u32).collect();
        let (result, sink) = AsyncResult::pending_many(T::NAME, counts);
        // The first error resolves the whole map; later parts are ignored.
        for (index, chunk) in chunks.iter().enumerate() {
            self.submit_to(T::NAME, chunk, sink.part(index));
        }
        result
    }

    /// The results of `task` over `items`, in order, as they arrive; items are submitted lazily,
    /// one per job, with a bounded number of jobs in flight. See
    /// [`imap_chunked`](Self::imap_chunked). The iterator is [`pool_core::Imap`], as for a local
    /// pool (a `Stream` too, with pool-core's `stream` feature).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// for (i, r) in pool.imap(square, 0..5u64).enumerate() {
    ///     assert_eq!(r?, (i * i) as u64);
    /// }
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn imap<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_chunked(task, items, 1)
    }

    /// [`imap`](Self::imap) with `chunksize` items per job. A job that fails yields its error
    /// for each of its items, and iteration goes on with the next job.
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

    /// Like [`imap`](Self::imap), in the order results arrive.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let mut all: Vec<u64> = pool.imap_unordered(square, 0..5u64).collect::<Result<_, _>>()?;
    /// all.sort();
    /// assert_eq!(all, [0, 1, 4, 9, 16]);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn imap_unordered<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_unordered_chunked(task, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) with `chunksize` items per job.
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

    /// Stops accepting work from this client: later calls fail with [`Error::Closed`]. Work
    /// already submitted goes on.
    pub fn close(&self) {
        if self.owner.is_here() {
            lock(&self.inner.submit).take();
        }
    }

    /// After [`close`](Self::close), waits until every job this client submitted has its
    /// result.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use pool_core::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// let r = pool.apply_async(square, 2);
    /// pool.close();
    /// pool.join()?;
    /// assert!(r.ready());
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn join(&self) -> Result<(), Error> {
        self.owner.check()?;
        if lock(&self.inner.submit).is_some() {
            return Err(Error::NotClosed);
        }
        let mut pending = lock(&self.inner.pending);
        while !pending.is_empty() {
            pending = self
                .inner
                .idle
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    /// Jobs submitted by this client and not answered yet.
    pub fn outstanding(&self) -> usize {
        lock(&self.inner.pending).len()
    }

    /// Jobs submitted from now on that no worker has begun `after` their submission are not
    /// run: a worker that takes one later answers it [`Error::Expired`] (the caller gets
    /// `pool_core::Error::Engine` holding it). For work that is useless late, and so that the
    /// jobs of a client that died do not run long after it (`None`, the default: jobs wait as
    /// long as it takes). Worker and client clocks are compared: keep them in sync (NTP).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let pool = pool_redis::RedisPool::connect("redis://127.0.0.1/", "jobs")?;
    /// pool.expire_jobs_after(Some(Duration::from_secs(30)));
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn expire_jobs_after(&self, after: Option<Duration>) {
        let ms = after.map_or(0, |d| (d.as_millis() as u64).max(1));
        self.inner.expiry_ms.store(ms, Ordering::Relaxed);
    }

    /// This client's id: its result stream's name, and the `client` an operator gives
    /// [`Admin::cancel_client`](crate::Admin::cancel_client).
    pub fn id(&self) -> &str {
        &self.inner.client_id
    }

    /// An operator's handle on this client's queue (dead letters, purge, cancel …), on the
    /// same server.
    pub fn admin(&self) -> Result<crate::Admin, Error> {
        crate::Admin::with_connector(self.inner.client.clone(), &self.inner.keys.queue)
    }

    /// The queue as Redis sees it: jobs waiting and being worked on, and the workers with
    /// their last heartbeat. See [`status`](crate::status()).
    pub fn status(&self) -> Result<QueueStatus, Error> {
        let mut link = Link::new(self.inner.client.clone(), Duration::from_secs(5));
        status::read(&mut link, &self.inner.keys)
    }

    fn default_chunksize(&self, n: usize) -> usize {
        let processes: usize = self
            .status()
            .map(|s| {
                s.workers
                    .iter()
                    .filter(|w| w.alive)
                    .map(|w| w.processes)
                    .sum()
            })
            .unwrap_or(0);
        if processes == 0 {
            return 1;
        }
        n.div_ceil(4 * processes).clamp(1, MAX_DEFAULT_CHUNK)
    }
}

impl Inner {
    fn run_submitter(&self, mut link: Link, rx: Receiver<Submission>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut cancels = false;
            let mut next = Some(first);
            while let Some(s) = next {
                match s {
                    Submission::Job(job) => batch.push(job),
                    Submission::Cancels => cancels = true,
                }
                next = if batch.len() < SUBMIT_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                let pipe = self.jobs_pipeline(&batch);
                let sent = link.run(&self.stop, |conn| pipe.query(conn));
                self.jobs_sent(&batch, sent);
            }
            if cancels {
                self.take_back_cancelled(&mut link);
            }
        }
    }

    /// The `XADD`s that send `batch` in one round trip (with, on a cluster, a wait for a
    /// replica).
    fn jobs_pipeline(&self, batch: &[Outgoing]) -> redis::Pipeline {
        let expiry = self.expiry_ms.load(Ordering::Relaxed);
        let expires = (expiry > 0).then(|| status::now_ms().saturating_add(expiry));
        let mut pipe = redis::pipe();
        for job in batch {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.keys.tasks)
                .arg("*")
                .arg("task")
                .arg(&job.task)
                .arg("args")
                .arg(&job.args)
                .arg("reply")
                .arg(&self.client_id)
                .arg("id")
                .arg(job.id);
            if let Some(at) = expires {
                cmd.arg("expires_ms").arg(at);
            }
        }
        if self.client.is_cluster() {
            // On a cluster (asynchronous replication), a job is submitted once a replica has
            // it too, so that a failover right after does not lose it (up to 100 ms).
            pipe.cmd("WAIT").arg(1).arg(100).ignore();
        }
        pipe
    }

    /// After [`jobs_pipeline`](Self::jobs_pipeline) ran: remembers each job's entry (for a
    /// cancel), or answers every job of the batch with the error.
    fn jobs_sent(&self, batch: &[Outgoing], sent: Result<Vec<String>, redis::RedisError>) {
        match sent {
            Ok(entries) => {
                let mut pending = lock(&self.pending);
                for (job, entry) in batch.iter().zip(entries) {
                    if let Some(waiting) = pending.get_mut(&job.id) {
                        if waiting.cancelled.is_some() {
                            waiting.entry = Some(entry);
                        }
                    }
                }
            }
            Err(err) => {
                let err = if self.stop.load(Ordering::Relaxed) {
                    Error::Closed
                } else {
                    Error::from(err)
                };
                for job in batch {
                    self.resolve(job.id, Err(err.clone()));
                }
            }
        }
    }

    /// Takes cancelled jobs back: forgets them here, deletes the entries not yet delivered
    /// from the task stream (`XDEL`), and tells the workers to stop the ones they hold (an
    /// entry in the control stream, which every worker reads).
    fn take_back_cancelled(&self, link: &mut Link) {
        let (cancelled, now_idle) = {
            let mut pending = lock(&self.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, job)| job.cancelled.as_ref().is_some_and(|c| c()))
                .map(|(id, _)| *id)
                .collect();
            // The caller has its answer (`Cancelled`); nothing more is delivered.
            let cancelled: Vec<(u64, Option<String>)> = ids
                .into_iter()
                .filter_map(|id| pending.remove(&id).map(|job| (id, job.entry)))
                .collect();
            (cancelled, pending.is_empty())
        };
        if cancelled.is_empty() {
            return;
        }
        if now_idle {
            self.idle.notify_all();
        }
        let entries: Vec<&str> = cancelled.iter().filter_map(|(_, e)| e.as_deref()).collect();
        let ids = cancelled
            .iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let _ = link.run(&self.stop, |conn| {
            let mut pipe = redis::pipe();
            if !entries.is_empty() {
                pipe.cmd("XDEL")
                    .arg(&self.keys.tasks)
                    .arg(&entries)
                    .ignore();
            }
            self.keys.tell_cancel(&mut pipe, &self.client_id, &ids);
            pipe.query::<()>(conn)
        });
    }

    fn run_collector(&self) {
        let key = self.keys.results(&self.client_id);
        let mut link = Link::new(self.client.clone(), READ_BLOCK + Duration::from_secs(5))
            .role("client results");
        let mut last = "0-0".to_string();
        let options = StreamReadOptions::default()
            .count(1024)
            .block(READ_BLOCK.as_millis() as usize);
        while !self.stop.load(Ordering::Relaxed) {
            let reply: Result<StreamReadReply, _> = link.run(&self.stop, |conn| {
                crate::wire::xread(conn, &options, &key, &last)
            });
            let Ok(reply) = reply else {
                std::thread::sleep(READ_BLOCK);
                continue;
            };
            let mut seen = Vec::new();
            for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                last.clone_from(&entry.id);
                self.deliver(&entry.map);
                seen.push(entry.id);
            }
            if !seen.is_empty() {
                // Read results are not needed again; what is left expires with the key.
                let _ = link.run(&self.stop, |conn| {
                    redis::cmd("XDEL").arg(&key).arg(&seen).query::<()>(conn)
                });
            }
        }
    }

    /// Resolves the job a result entry answers, unless it was answered already.
    fn deliver(&self, map: &HashMap<String, Value>) {
        let Some(id) = field_u64(map, "id") else {
            return;
        };
        let outcome = if let Some(ok) = field_slice(map, "ok") {
            wire::decode_items(ok)
                .map(Answered::All)
                .map_err(|e| Error::Protocol(format!("result list: {e}")))
        } else if let Some(each) = field_slice(map, "each") {
            wire::decode_each(each)
                .map(|items| {
                    Answered::Each(
                        items
                            .into_iter()
                            .map(|i| i.map_err(WireError::into_error))
                            .collect(),
                    )
                })
                .map_err(|e| Error::Protocol(format!("outcome list: {e}")))
        } else if let Some(err) = field_slice(map, "err") {
            match rmp_serde::from_slice::<WireError>(err) {
                Ok(w) => Err(w.into_error()),
                Err(e) => Err(Error::Protocol(format!("error entry: {e}"))),
            }
        } else {
            Err(Error::Protocol("a result entry without ok or err".into()))
        };
        self.resolve(id, outcome);
    }

    fn resolve(&self, id: u64, outcome: Result<Answered, Error>) {
        let (job, now_idle) = {
            let mut pending = lock(&self.pending);
            let job = pending.remove(&id);
            (job, pending.is_empty())
        };
        if let Some(job) = job {
            (job.resolve)(outcome);
        }
        if now_idle {
            self.idle.notify_all();
        }
    }
}

/// A field's bytes, borrowed from the entry.
pub(crate) fn field_slice<'a>(map: &'a HashMap<String, Value>, name: &str) -> Option<&'a [u8]> {
    match map.get(name)? {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A field as text, borrowed from the entry.
pub(crate) fn field_str<'a>(map: &'a HashMap<String, Value>, name: &str) -> Option<&'a str> {
    std::str::from_utf8(field_slice(map, name)?).ok()
}

pub(crate) fn field_bytes(map: &HashMap<String, Value>, name: &str) -> Option<Vec<u8>> {
    field_slice(map, name).map(<[u8]>::to_vec)
}

pub(crate) fn field_string(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    field_str(map, name).map(str::to_owned)
}

pub(crate) fn field_u64(map: &HashMap<String, Value>, name: &str) -> Option<u64> {
    field_str(map, name)?.parse().ok()
}

impl pool_core::__private::CancelListener for Inner {
    /// Wakes the submitter, which takes cancelled jobs back (never blocks the cancelling thread).
    fn cancel_requested(&self) {
        if let Some(sender) = lock(&self.submit).as_ref() {
            let _ = sender.send(Submission::Cancels);
        }
    }
}

impl Drop for RedisPool {
    fn drop(&mut self) {
        if !self.owner.is_here() {
            // A copy in a forked child: the threads are the parent's. Leak, take no lock.
            std::mem::forget(Arc::clone(&self.inner));
            if let Ok(mut threads) = self.threads.try_lock() {
                std::mem::forget(std::mem::take(&mut *threads));
            }
            return;
        }
        self.close();
        self.inner.stop.store(true, Ordering::Relaxed);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        // Whatever is still waiting will never be answered to this client.
        let pending: Vec<Pending> = lock(&self.inner.pending).drain().map(|(_, j)| j).collect();
        for job in pending {
            (job.resolve)(Err(Error::Closed));
        }
        self.inner.idle.notify_all();
        // Best effort: this client's result stream is of no use to anyone now.
        if let Ok(mut conn) = self.inner.client.connect(Duration::from_millis(500)) {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(self.inner.keys.results(&self.inner.client_id))
                .query(conn.as_mut());
        }
    }
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool")
            .field("url", &self.inner.url)
            .field("queue", &self.inner.keys.queue)
            .field("client", &self.inner.client_id)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

/// One place a job's raw outcome is written once and waited for. Results are decoded by the
/// thread that takes them, so result types need not be `Send`.
/// The Redis engine: a job goes to the queue's task stream as one entry; its outcome comes
/// back on this client's result stream and is delivered to the job's sink (see
/// [`pool_core::__private::Engine`]).
impl Engine for RedisPool {
    fn submit_job(&self, job: JobFrame, sink: JobSink) {
        let task = job.task().to_owned();
        match job.into_items() {
            Ok(items) => self.submit_to(&task, &items, sink),
            Err(err) => sink.deliver_items(Err(err)),
        }
    }

    fn lookahead(&self) -> usize {
        IMAP_WINDOW
    }

    fn owner(&self) -> Owner {
        self.owner
    }

    fn accepts_work(&self) -> bool {
        !self.owner.is_here() || lock(&self.inner.submit).is_some()
    }
}

/// The calls a local [`pool_core::Pool`] serves, with the same result, iterator and error
/// types, so that `fn work<E: pool_core::Executor>(e: &E)` runs unchanged on either. The
/// blocking calls and the one-item `imap`s are the trait's defaults (the async forms and `get`,
/// chunks of one), which is what this client's own methods of those names do too.
impl pool_core::Executor for RedisPool {
    fn apply_async<T: Task>(&self, task: T, args: T::Args) -> AsyncResult<T::Output> {
        RedisPool::apply_async(self, task, args)
    }

    fn map_async<T, I>(&self, task: T, items: I) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        RedisPool::map_async(self, task, items)
    }

    fn map_async_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        RedisPool::map_async_chunked(self, task, items, chunksize)
    }

    fn imap_chunked<T, I>(&self, task: T, items: I, chunksize: usize) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        RedisPool::imap_chunked(self, task, items, chunksize)
    }

    fn imap_unordered_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        RedisPool::imap_unordered_chunked(self, task, items, chunksize)
    }

    fn close(&self) {
        RedisPool::close(self)
    }

    fn join(&self) -> Result<(), pool_core::Error> {
        RedisPool::join(self).map_err(pool_core::Error::from)
    }
}
