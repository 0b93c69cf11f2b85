//! The worker side: [`Worker`] serves a queue's jobs with the tasks registered in its own
//! binary, running them in a local [`pool_core::Pool`].
//!
//! # Threads and the life of a job
//!
//! - The *reader* (the thread that called [`Worker::run`]) takes up to `prefetch` jobs at a time
//!   with `XREADGROUP` and hands each to the local pool.
//! - The *writer* answers finished jobs, many per round trip, each in a transaction: the result
//!   goes to the caller's result stream, the job is acknowledged (`XACK`) and deleted from the
//!   queue (`XDEL`). A job is thus answered and removed together, or not at all.
//! - The *keeper* sends heartbeats, keeps the jobs this worker holds fresh (`XCLAIM … JUSTID`
//!   resets their idle time, so a long task is not taken for abandoned), and reclaims jobs that
//!   another worker left idle for longer than `claim_idle` (`XAUTOCLAIM`) — a worker that died
//!   or lost Redis. A job delivered more than `max_deliveries` times is answered with
//!   [`Error::GaveUp`] instead of being run again.
//!
//! A task that crashes its process is contained by the local pool (the job is answered with
//! `WorkerDied`); only the death of the whole worker leaves jobs for the others to reclaim.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use pool_core::{Pool, PoolBuilder};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::Value;

use crate::client::{field_slice, field_str, field_string, field_u64};
use crate::conn::{Connector, Link};
use crate::dead::{Dead, DeadKind};
use crate::status::{self, now_ms};
use crate::wire::{self, Keys, WireError, GROUP};
use crate::Error;

/// How long the reader's `XREADGROUP` blocks, so that it notices a shutdown.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How often a worker repeats the same error in its log, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Answers written in one round trip, at most.
const WRITE_BATCH: usize = 512;

/// Serves a queue: takes jobs from Redis, runs them in a local process pool, answers them.
///
/// Start it from the binary whose `#[task]` functions it should serve — the same binary the
/// clients are built from, or any binary linking the same tasks — typically behind a `worker`
/// subcommand (see `examples/src/bin/redis_cluster.rs`). It only ever runs tasks registered in
/// its own binary, with arguments decoded as their typed parameters: no code travels through
/// Redis.
///
/// Put `#[pool_core::main]` on the binary's `main`: the local pool then starts its workers from
/// the fork server, and this worker's own threads are never forked.
///
/// # Examples
///
/// ```no_run
/// use pool_core::task;
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[pool_core::main]
/// fn main() -> Result<(), pool_redis::Error> {
///     pool_redis::Worker::new("redis://127.0.0.1:6379/", "jobs")?
///         .processes(4)
///         .run() // until the process is stopped, or a ShutdownHandle says so
/// }
/// ```
pub struct Worker {
    url: String,
    client: Connector,
    keys: Keys,
    pool: PoolBuilder,
    processes: usize,
    prefetch: Option<usize>,
    claim_idle: Duration,
    heartbeat: Duration,
    max_deliveries: u64,
    result_ttl: Duration,
    shutdown: Arc<AtomicBool>,
    handle_signals: bool,
    max_outage: Duration,
}

/// Asks a running [`Worker`] to stop: it takes no new jobs, answers those it holds, and returns
/// from [`Worker::run`].
///
/// # Examples
///
/// ```no_run
/// let worker = pool_redis::Worker::new("redis://127.0.0.1/", "jobs")?;
/// let stop = worker.shutdown_handle();
/// let thread = std::thread::spawn(move || worker.run());
/// stop.shutdown();
/// thread.join().unwrap()?;
/// # Ok::<(), pool_redis::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<AtomicBool>);

impl ShutdownHandle {
    /// Asks the worker to stop.
    pub fn shutdown(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Worker {
    /// A worker for `queue` on the Redis at `url`, with the defaults: one process per CPU, 2
    /// jobs prefetched per process, heartbeats every second, jobs reclaimed after 30 s of
    /// silence, at most 3 deliveries per job, results kept for an hour.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let worker = pool_redis::Worker::new("redis://127.0.0.1/", "jobs")?
    ///     .processes(2)
    ///     .claim_idle(Duration::from_secs(10))
    ///     .max_deliveries(5);
    /// # drop(worker);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn new(url: &str, queue: &str) -> Result<Worker, Error> {
        Worker::with_client(crate::conn::open(url)?, queue)
    }

    /// [`new`](Self::new) through a `redis::Client` built by the caller (TLS with a private
    /// certificate authority, for instance: see [`tls_client`](crate::tls_client)).
    pub fn with_client(client: redis::Client, queue: &str) -> Result<Worker, Error> {
        Worker::with_connector(client.into(), queue)
    }

    /// A worker for `queue` on a Redis Cluster reached through any of `nodes` (feature
    /// `cluster`): the client follows the cluster's slots, redirections and failovers. Every key
    /// of a queue shares one hash tag, so a queue lives on one master (and its replicas);
    /// spread load over masters with several queues.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let nodes = ["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"];
    /// pool_redis::Worker::cluster(&nodes, "jobs")?.processes(4).run()?;
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    #[cfg(feature = "cluster")]
    pub fn cluster(nodes: &[&str], queue: &str) -> Result<Worker, Error> {
        Worker::with_connector(Connector::cluster(nodes)?, queue)
    }

    fn with_connector(client: Connector, queue: &str) -> Result<Worker, Error> {
        Ok(Worker {
            url: client.describe(),
            client,
            keys: Keys::new(queue)?,
            pool: Pool::builder(),
            processes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: None,
            claim_idle: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            max_deliveries: 3,
            result_ttl: Duration::from_secs(3600),
            shutdown: Arc::new(AtomicBool::new(false)),
            handle_signals: true,
            max_outage: Duration::from_secs(60),
        })
    }

    /// How many processes the local pool runs (default: one per CPU).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = n;
        self
    }

    /// The local pool's other settings (time limits, recycling, memory caps, start method);
    /// its process count is set by [`processes`](Self::processes).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let worker = pool_redis::Worker::new("redis://127.0.0.1/", "jobs")?
    ///     .pool(pool_core::Pool::builder().task_timeout(Duration::from_secs(60)));
    /// # drop(worker);
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn pool(mut self, builder: PoolBuilder) -> Self {
        self.pool = builder;
        self
    }

    /// How many jobs the worker holds at once (default: 2 per process, which keeps its
    /// processes busy while answers travel and leaves the rest of the queue to other workers).
    /// For floods of tiny unchunked tasks, more is faster: on the 2-core test machine, one
    /// worker of 2 processes answers 7–8k tasks/s with the default 4 held, ~15k/s with 16 and
    /// 23–28k/s with 128.
    /// Prefer chunking (`map` does it), which reaches millions of tasks per second.
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.prefetch = Some(jobs);
        self
    }

    /// After how long without news a job held by another worker is taken over (default 30 s).
    /// Jobs this worker holds are refreshed every heartbeat, so this is not a limit on how long
    /// a task may run. Must be at least three heartbeats.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often the worker reports that it is alive and refreshes its jobs (default 1 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How many times a job may be delivered before it is answered with [`Error::GaveUp`]
    /// (default 3): a job whose worker keeps dying is run at most this many times.
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n;
        self
    }

    /// How long an answer waits in Redis for its caller (default 1 h). A client that went away
    /// leaves nothing behind for longer.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// Whether [`run`](Self::run) drains on SIGTERM and SIGINT (default: yes). The first signal
    /// drains the worker: it stops taking jobs, puts the jobs it holds but has not begun back in
    /// the queue at once (other workers take them within a read), finishes the ones running,
    /// answers them and returns `Ok(())` — so the process exits 0. A second signal ends the
    /// process at once (exit status 128 + the signal); what it held is taken over by other
    /// workers after [`claim_idle`](Self::claim_idle). The program's own handlers are put back
    /// when `run` returns.
    ///
    /// Turn it off in programs that manage signals themselves, and drain with a
    /// [`ShutdownHandle`], which does the same.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let worker = pool_redis::Worker::new("redis://127.0.0.1/", "jobs")?.handle_signals(false);
    /// let stop = worker.shutdown_handle();
    /// // … the program's own signal handling calls `stop.shutdown()` …
    /// # stop.shutdown();
    /// worker.run()?;
    /// # Ok::<(), pool_redis::Error>(())
    /// ```
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// How long the worker goes on without being able to serve — Redis unreachable, the
    /// password refused, the task stream unreadable — before it gives up: it logs why and
    /// [`run`](Self::run) returns [`Error::Unavailable`], so the process exits non-zero and a
    /// supervisor restarts it (default 60 s). At start too, Redis is retried (with backoff, a
    /// warning per try) for this long. Every lost connection, retry, reconnection and refused
    /// password is a `tracing` event naming the server and the user, never the password.
    pub fn max_outage(mut self, limit: Duration) -> Self {
        self.max_outage = limit;
        self
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.shutdown))
    }

    /// Serves the queue until a [`ShutdownHandle`] asks it to stop. Fails at once if the local
    /// pool cannot start or Redis cannot be reached at start; later disconnections are retried.
    /// If the local pool breaks (its processes keep dying outside any task, so its restart
    /// guard trips), the worker stops taking jobs, leaves the ones it holds unanswered for other
    /// workers to reclaim, and returns `Error::Task(pool_core::Error::PoolBroken)`.
    pub fn run(self) -> Result<(), Error> {
        if self.processes == 0 {
            return Err(Error::Config("a worker needs at least 1 process".into()));
        }
        if self.claim_idle < 3 * self.heartbeat {
            return Err(Error::Config(format!(
                "claim_idle ({:?}) must be at least three heartbeats ({:?})",
                self.claim_idle, self.heartbeat
            )));
        }
        // The pool first, while this process has one thread (for the Fork start method).
        let pool = self.pool.clone().processes(self.processes).build()?;
        let signals = self.handle_signals.then(crate::signals::Drain::install);
        let mut link = Link::new(self.client.clone(), READ_BLOCK + Duration::from_secs(5))
            .role("worker reader")
            .give_up_after(self.max_outage);
        tracing::info!(
            redis = %link.server(),
            queue = %self.keys.queue,
            processes = self.processes,
            "pool-redis worker starting"
        );
        if let Err(err) = link.run(&self.shutdown, |conn| redis::cmd("PING").query::<()>(conn)) {
            tracing::error!(
                redis = %link.server(),
                error = %err,
                "pool-redis worker: cannot use Redis; not starting"
            );
            return Err(Error::Unavailable {
                server: link.server().to_owned(),
                down: link.failing_for().unwrap_or_default(),
                last: err.to_string(),
            });
        }
        status::ensure_group(&mut link, &self.keys)?;
        let name = format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            &crate::client::random_id()[..8]
        );
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            pool,
            keys: self.keys.clone(),
            name,
            held: Mutex::new(HashMap::new()),
            taken: std::sync::atomic::AtomicU64::new(0),
            handed_back: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
            pieceworks: Mutex::new(HashMap::new()),
            report_after: self.heartbeat,
            estimates: Estimates::default(),
            progress_ttl_ms: self.result_ttl.as_millis().max(1) as u64,
            released: Condvar::new(),
            done: Mutex::new(Some(done_tx)),
            stop_writing: AtomicBool::new(false),
            broken: Mutex::new(None),
            draining: AtomicBool::new(false),
            answered: std::sync::atomic::AtomicU64::new(0),
            failed: std::sync::atomic::AtomicU64::new(0),
        });
        // The keeper and the control reader run until every job held is answered.
        let threads_stop = Arc::new(AtomicBool::new(false));
        let capacity = self.prefetch.unwrap_or(2 * self.processes).max(1);
        let writer = {
            let shared = Arc::clone(&shared);
            let link =
                Link::new(self.client.clone(), Duration::from_secs(10)).role("worker writer");
            let ttl = self.result_ttl;
            spawn("pool-redis-answer", move || {
                shared.write_answers(link, done_rx, ttl)
            })?
        };
        let keeper = {
            let shared = Arc::clone(&shared);
            // Each command gives up after a heartbeat of failure, so that the keeper sees a
            // stop during an outage.
            let link = Link::new(self.client.clone(), Duration::from_secs(10))
                .role("worker keeper")
                .give_up_after(self.heartbeat);
            let settings = KeeperSettings {
                heartbeat: self.heartbeat,
                claim_idle: self.claim_idle,
                max_deliveries: self.max_deliveries,
                processes: self.processes,
            };
            let stop = Arc::clone(&threads_stop);
            spawn("pool-redis-keeper", move || {
                shared.keep(link, settings, &stop)
            })?
        };
        let control = {
            let shared = Arc::clone(&shared);
            let link = Link::new(self.client.clone(), READ_BLOCK + Duration::from_secs(5))
                .role("worker control reader");
            let stop = Arc::clone(&threads_stop);
            spawn("pool-redis-control", move || {
                shared.read_control(link, &stop)
            })?
        };
        let outage = shared.read_jobs(link, capacity, &self.shutdown, self.max_outage);
        // Stopped by a signal, a handle, a broken pool or an outage: take nothing more (the
        // keeper stops reclaiming).
        shared.draining.store(true, Ordering::SeqCst);
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(err) = outage {
            // Nothing can be answered: what this worker holds stays pending in Redis, for
            // other workers to take over once Redis is back. Stop everything now.
            tracing::error!(
                worker = %shared.name,
                error = %err,
                "pool-redis worker: cannot serve; stopping (a supervisor should restart it)"
            );
            shared.stop_writing.store(true, Ordering::SeqCst);
            threads_stop.store(true, Ordering::SeqCst);
            lock(&shared.done).take();
            shared.pool.terminate();
            let _ = writer.join();
            let _ = keeper.join();
            let _ = control.join();
            drop(signals);
            return Err(err);
        }
        if lock(&shared.broken).is_none() {
            // Draining: what the local processes are not running goes back to the queue now,
            // for other workers; the rest is finished and answered.
            let why = if crate::signals::received() {
                "a signal"
            } else {
                "its shutdown handle"
            };
            let back = shared.hand_back(self.processes);
            tracing::info!(
                worker = %shared.name,
                handed_back = back,
                "pool-redis worker draining (asked by {why}): finishing its running jobs"
            );
        }
        // Stopping: answer what we hold, then let the writer drain and the keeper say goodbye.
        {
            let mut held = lock(&shared.held);
            while !held.is_empty() {
                held = shared
                    .released
                    .wait(held)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        threads_stop.store(true, Ordering::SeqCst);
        lock(&shared.done).take();
        let _ = writer.join();
        let _ = keeper.join();
        let _ = control.join();
        if let Some(reason) = lock(&shared.broken).take() {
            // Its jobs stay pending in Redis; other workers reclaim them after `claim_idle`.
            shared.pool.terminate();
            return Err(pool_core::Error::PoolBroken(reason).into());
        }
        shared.pool.close();
        shared.pool.join()?;
        tracing::info!(worker = %shared.name, "pool-redis worker drained and stopped");
        drop(signals);
        Ok(())
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("url", &self.url)
            .field("queue", &self.keys.queue)
            .field("processes", &self.processes)
            .field("claim_idle", &self.claim_idle)
            .field("heartbeat", &self.heartbeat)
            .field("max_deliveries", &self.max_deliveries)
            .finish_non_exhaustive()
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Config(format!("cannot start a thread: {e}")))
}

fn hostname() -> String {
    nix_hostname().unwrap_or_else(|| "host".to_owned())
}

fn nix_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the live local buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!name.is_empty()).then_some(name)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct KeeperSettings {
    heartbeat: Duration,
    claim_idle: Duration,
    max_deliveries: u64,
    processes: usize,
}

/// An answered job, on its way to Redis.
/// What a job's items gave: all values, or (when one failed) each item's own outcome.
enum Outcome {
    All(Vec<Vec<u8>>),
    /// All values, as the local pool gave them (one buffer; no allocation per item).
    Values(pool_core::EncodedOutcomes),
    Each(Vec<Result<Vec<u8>, WireError>>),
}

struct Answer {
    entry: String,
    /// Where the answer goes: the caller's id and its job id (absent for an entry too
    /// malformed to answer, which is only removed).
    reply: Option<(String, u64)>,
    outcome: Result<Outcome, WireError>,
    /// The local pool is broken: leave the entry unanswered and unacknowledged, for another
    /// worker to reclaim, and stop this worker.
    abandon: Option<String>,
    /// Progress of this entry may be in the progress hash: delete it with the answer.
    progress: bool,
    /// Some of its items were cancelled in the local pool (by the caller, or by a drain that
    /// hands the entry back).
    cancelled: bool,
    /// A dead letter to write with it (a malformed entry, a job given up); a failed answer
    /// makes one of its own (see `dead_letter`).
    dead: Option<Dead>,
}

impl Answer {
    /// The dead letter this answer leaves, if any: the one it carries, or, for a job answered
    /// with a failure (not a cancel), kind `failed` with the first error.
    fn dead_letter(&self) -> Option<Dead> {
        if let Some(dead) = &self.dead {
            return Some(dead.clone());
        }
        if self.cancelled {
            return None;
        }
        let (err, failed, of) = match &self.outcome {
            Err(WireError::Cancelled) | Ok(Outcome::All(_) | Outcome::Values(_)) => return None,
            Err(err) => (err, 1, 1),
            Ok(Outcome::Each(each)) => {
                let mut errors = each.iter().filter_map(|o| o.as_ref().err());
                let first = errors.next()?;
                (first, 1 + errors.count(), each.len())
            }
        };
        let attempts = match err {
            WireError::WorkerDied { attempts, .. } | WireError::Timeout { attempts, .. } => {
                u64::from(*attempts)
            }
            _ => 1,
        };
        let reason = err.clone().into_error().to_string();
        Some(Dead {
            kind: DeadKind::Failed,
            reason: if of > 1 {
                format!("{reason} ({failed} of {of} items failed)")
            } else {
                reason
            },
            attempts,
        })
    }
}

/// What is wrong with a job entry that cannot run.
fn malformed_reason(
    map: &HashMap<String, Value>,
    reply: &Option<(String, u64)>,
    task: &Option<&str>,
    args: Option<&Result<Vec<&[u8]>, String>>,
) -> String {
    let mut wrong = Vec::new();
    if field_string(map, "reply").is_none() {
        wrong.push("no reply client".to_owned());
    }
    if reply.is_none() && field_string(map, "id").is_some() {
        wrong.push("a non-numeric id".to_owned());
    } else if field_string(map, "id").is_none() {
        wrong.push("no id".to_owned());
    }
    if task.is_none() {
        wrong.push("no task name".to_owned());
    }
    match args {
        None => wrong.push("no args".to_owned()),
        Some(Err(e)) => wrong.push(format!("args are not a MessagePack list of bin ({e})")),
        Some(Ok(_)) => {}
    }
    let mut fields: Vec<&str> = map.keys().map(String::as_str).collect();
    fields.sort_unstable();
    format!("{} (fields: {})", wrong.join(", "), fields.join(", "))
}

/// An entry this worker has taken and not answered yet.
struct Held {
    /// The order in which this worker took it.
    seq: u64,
    /// The caller's client id and job id.
    reply: Option<(String, u64)>,
}

/// How long an item of each task takes on this worker (from submission to the local pool to its
/// answer, so queueing counts: an overestimate), a moving average.
#[derive(Default, Clone)]
struct Estimates(Arc<Mutex<HashMap<String, u64>>>);

impl Estimates {
    fn per_item_ns(&self, task: &str) -> Option<u64> {
        lock(&self.0).get(task).copied()
    }

    /// Times a local job of `items` items of `task`, from now until [`Learner::done`].
    fn learner(&self, task: &str, items: usize) -> Learner {
        Learner {
            estimates: self.clone(),
            task: task.to_owned(),
            items: items.max(1) as u64,
            started: Instant::now(),
        }
    }
}

struct Learner {
    estimates: Estimates,
    task: String,
    items: u64,
    started: Instant,
}

impl Learner {
    fn done(self) {
        let ns = self.started.elapsed().as_nanos() as u64 / self.items;
        let mut all = lock(&self.estimates.0);
        let e = all.entry(self.task).or_insert(ns);
        *e = (*e * 3 + ns) / 4;
    }
}

/// How many local jobs a job of several items is run as, at most.
const PIECES: usize = 8;

/// A job of several items, run as several local jobs ("pieces").
///
/// A worker *machine* that dies takes its local pool with it, and its jobs are redelivered after
/// `claim_idle`. So that the items it finished are not run again, each piece records its items'
/// outcomes here as it ends, and the keeper writes what is done to the queue's progress hash
/// (`HSET pool:{Q}:progress ENTRY …`) once the job has run for a heartbeat, and again at each
/// heartbeat while more is done. The worker that takes the job over reads it (`HGET`) and runs
/// only the items missing. The answer deletes the field in its transaction; what a dead worker
/// did after its last report runs again.
struct Piecework {
    entry: String,
    reply: (String, u64),
    started: Instant,
    sender: Sender<Answer>,
    state: Mutex<PieceState>,
}

struct PieceState {
    /// Each item's outcome, once known.
    outcomes: wire::Progress,
    /// Items done (with an outcome).
    done: usize,
    /// Items done when the keeper last reported.
    reported: usize,
    /// Pieces still running.
    left: usize,
    /// The first error that failed a whole piece (an unknown task, a cancel).
    whole: Option<WireError>,
    /// Every piece that ended failed whole: the job's answer is that error.
    all_whole: bool,
    /// The local pool broke.
    abandon: Option<String>,
    /// Some progress may be in the progress hash.
    progress: bool,
    /// Some piece or item was cancelled.
    cancelled: bool,
}

impl Piecework {
    fn piece_ended(&self, state: &mut PieceState) {
        state.left -= 1;
        if state.left == 0 {
            self.finish(state);
        }
    }

    /// Answers the job: every piece has ended.
    fn finish(&self, state: &mut PieceState) {
        let outcome = match (&state.whole, state.all_whole) {
            (Some(err), true) => Err(err.clone()),
            _ => {
                let each: Vec<Result<Vec<u8>, WireError>> = std::mem::take(&mut state.outcomes)
                    .into_iter()
                    .map(|o| o.unwrap_or_else(|| Err(WireError::Other("no outcome".into()))))
                    .collect();
                Ok(if each.iter().all(Result::is_ok) {
                    Outcome::All(each.into_iter().flatten().collect())
                } else {
                    Outcome::Each(each)
                })
            }
        };
        let _ = self.sender.send(Answer {
            entry: self.entry.clone(),
            reply: Some(self.reply.clone()),
            outcome,
            abandon: state.abandon.clone(),
            progress: state.progress,
            cancelled: state.cancelled,
            dead: None,
        });
    }
}

type RunningJob = pool_core::AsyncResult<pool_core::EncodedOutcomes>;

struct Shared {
    pool: Pool,
    keys: Keys,
    name: String,
    /// The entries this worker has taken and not answered yet.
    held: Mutex<HashMap<String, Held>>,
    /// Numbers the entries in the order this worker took them.
    taken: std::sync::atomic::AtomicU64,
    /// Entries handed back while draining: their local jobs were cancelled, and an answer
    /// `Cancelled` for one of them puts the job back in the queue instead.
    handed_back: Mutex<HashSet<String>>,
    /// The local results of the jobs running here, by the caller's client and job id, for a
    /// cancel from the control stream.
    running: Mutex<HashMap<(String, u64), Vec<RunningJob>>>,
    /// The jobs of several items running here, by task entry id, for the keeper to report what
    /// they have done.
    pieceworks: Mutex<HashMap<String, Arc<Piecework>>>,
    /// How long a job of several items runs before the keeper reports its progress.
    report_after: Duration,
    /// How long an item of each task takes here.
    estimates: Estimates,
    /// How long reported progress is kept (the result TTL).
    progress_ttl_ms: u64,
    /// Signalled when an entry leaves `held`.
    released: Condvar,
    done: Mutex<Option<Sender<Answer>>>,
    stop_writing: AtomicBool,
    /// Set when the local pool broke (workers dying faster than the restart guard allows).
    broken: Mutex<Option<String>>,
    /// The worker stopped taking jobs (a signal, its handle, a broken pool).
    draining: AtomicBool,
    /// Jobs answered, and of those, answered with a failure (for the heartbeat's report).
    answered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Takes jobs until `stop`, a drain signal or a broken pool; returns the error if it could
    /// not read for `max_outage` (Redis unreachable, credentials refused, the stream unreadable).
    fn read_jobs(
        &self,
        mut link: Link,
        capacity: usize,
        stop: &AtomicBool,
        max_outage: Duration,
    ) -> Option<Error> {
        // Since when reads fail on a live server (a wrong type, a refused password), and when
        // that was last logged.
        let mut refused: Option<(Instant, Instant)> = None;
        let mut pause = READ_BLOCK;
        while !stop.load(Ordering::SeqCst)
            && !crate::signals::received()
            && lock(&self.broken).is_none()
        {
            let free = {
                let held = lock(&self.held);
                let free = capacity.saturating_sub(held.len());
                // Read in batches: while jobs are running, wait until half the room is free,
                // rather than paying a round trip for each job that finishes.
                if free == 0 || (!held.is_empty() && free < capacity.div_ceil(2)) {
                    let _ = self
                        .released
                        .wait_timeout(held, Duration::from_millis(100))
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                free
            };
            let options = StreamReadOptions::default()
                .group(GROUP, &self.name)
                .count(free)
                .block(READ_BLOCK.as_millis() as usize);
            let read: Result<StreamReadReply, _> = link.run(stop, |conn| {
                wire::xread(conn, &options, &self.keys.tasks, ">")
            });
            match read {
                Ok(reply) => {
                    refused = None;
                    pause = READ_BLOCK;
                    for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                        self.start(entry, None);
                    }
                }
                Err(err) if crate::conn::has_code(&err, "NOGROUP") => {
                    // The stream was deleted, or Redis restarted without persistence.
                    let _ = status::ensure_group(&mut link, &self.keys);
                }
                Err(err) => {
                    let now = Instant::now();
                    let transient = crate::conn::transient(&err);
                    let (since, logged) = refused.get_or_insert((now, now - LOG_EVERY));
                    if !transient && now - *logged >= LOG_EVERY {
                        // The connection's own events cover outages and passwords.
                        *logged = now;
                        tracing::error!(
                            worker = %self.name,
                            queue = %self.keys.queue,
                            error = %err,
                            down_ms = since.elapsed().as_millis() as u64,
                            "pool-redis worker: cannot read the queue"
                        );
                    }
                    let down = link.failing_for().unwrap_or_default().max(since.elapsed());
                    if down >= max_outage {
                        return Some(Error::Unavailable {
                            server: link.server().to_owned(),
                            down,
                            last: err.to_string(),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        None
    }

    /// Hands one entry to the local pool (or answers it at once if it cannot run). `prior` is
    /// what an earlier worker reported of it (a redelivered job): those items do not run again.
    fn start(self: &Shared, entry: StreamId, prior: Option<wire::Progress>) {
        let id = entry.id;
        let reply = match (
            field_string(&entry.map, "reply"),
            field_u64(&entry.map, "id"),
        ) {
            (Some(client), Some(job)) => Some((client, job)),
            _ => None,
        };
        // Borrowed from the entry, which lives until the job is handed to the local pool.
        let task = field_str(&entry.map, "task");
        let args = field_slice(&entry.map, "args").map(wire::decode_slices);
        {
            let mut held = lock(&self.held);
            if held.contains_key(&id) {
                return; // already running here (reclaimed while we hold it)
            }
            let seq = self.taken.fetch_add(1, Ordering::Relaxed);
            held.insert(
                id.clone(),
                Held {
                    seq,
                    reply: reply.clone(),
                },
            );
        }
        let (task, items) = match (&reply, task, args) {
            (Some(_), Some(task), Some(Ok(items))) => (task, items),
            (_, task, args) => {
                let reason = malformed_reason(&entry.map, &reply, &task, args.as_ref());
                tracing::warn!(
                    worker = %self.name,
                    entry = %id,
                    reason = %reason,
                    "pool-redis: a malformed job entry goes to the dead letters"
                );
                self.answer(Answer {
                    entry: id,
                    reply,
                    abandon: None,
                    outcome: Err(WireError::Other(format!("malformed job entry: {reason}"))),
                    progress: false,
                    cancelled: false,
                    dead: Some(Dead {
                        kind: DeadKind::Malformed,
                        reason,
                        attempts: 1,
                    }),
                });
                return;
            }
        };
        if let Some(at) = field_u64(&entry.map, "expires_ms") {
            let now = now_ms();
            if now > at {
                self.answer(Answer {
                    entry: id,
                    reply,
                    abandon: None,
                    outcome: Err(WireError::Expired {
                        task: task.to_owned(),
                        late_ms: now - at,
                    }),
                    progress: prior.is_some(),
                    // Not a failure (no dead letter): the caller chose to expire it.
                    cancelled: true,
                    dead: None,
                });
                return;
            }
        }
        let Some(sender) = lock(&self.done).clone() else {
            return;
        };
        // A job of several items runs in pieces unless it is known to take less than half a
        // heartbeat (its progress would never be reported: a chunk of tiny tasks).
        let n = items.len();
        let short = || {
            self.estimates.per_item_ns(task).is_some_and(|ns| {
                ns.saturating_mul(n as u64) < self.report_after.as_nanos() as u64 / 2
            })
        };
        if n > 1 && (prior.is_some() || !short()) {
            if let Some((client, job)) = reply {
                self.start_pieces(id, (client, job), task, &items, prior, sender);
                return;
            }
        }
        let (ok_sender, ok_id, ok_reply) = (sender.clone(), id.clone(), reply.clone());
        let key = reply.clone();
        // Only jobs of several items need the estimate (and a job of one costs no more).
        let learn = (n > 1).then(|| self.estimates.learner(task, n));
        let running = self
            .pool
            .apply_encoded_each(task, &items)
            .on_success(move |values| {
                if let Some(learn) = learn {
                    learn.done();
                }
                // Each item's own outcome travels back, so that one failed item (a panic, a
                // process dying under it) costs that item only.
                let cancelled = values
                    .errors()
                    .any(|(_, e)| matches!(e, pool_core::Error::Cancelled));
                let outcome = if values.all_ok() {
                    Outcome::Values(values)
                } else {
                    Outcome::Each(
                        values
                            .iter()
                            .map(|v| v.map(<[u8]>::to_vec).map_err(WireError::from_pool))
                            .collect(),
                    )
                };
                let _ = ok_sender.send(Answer {
                    entry: ok_id,
                    reply: ok_reply,
                    outcome: Ok(outcome),
                    abandon: None,
                    progress: false,
                    cancelled,
                    dead: None,
                });
            })
            .on_error(move |err| {
                let abandon = match &err {
                    pool_core::Error::PoolBroken(reason) => Some(reason.clone()),
                    _ => None,
                };
                let _ = sender.send(Answer {
                    entry: id,
                    reply,
                    outcome: Err(WireError::from_pool(&err)),
                    abandon,
                    progress: false,
                    cancelled: matches!(err, pool_core::Error::Cancelled),
                    dead: None,
                });
            });
        if let Some(key) = key {
            let mut all = lock(&self.running);
            if !running.ready() {
                all.insert(key, vec![running]);
            }
        }
    }

    /// Runs a job of several items as up to [`PIECES`] local jobs, each answering its items as
    /// it ends, so that the keeper can report what is done while the rest runs (see
    /// [`Piecework`]). Items `prior` already holds do not run again.
    fn start_pieces(
        &self,
        entry: String,
        reply: (String, u64),
        task: &str,
        items: &[&[u8]],
        prior: Option<wire::Progress>,
        sender: Sender<Answer>,
    ) {
        let resumed = prior.is_some();
        let outcomes = prior.unwrap_or_else(|| vec![None; items.len()]);
        let missing: Vec<usize> = (0..items.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        let size = missing.len().div_ceil(PIECES).max(1);
        let pieces: Vec<Vec<usize>> = missing.chunks(size).map(<[usize]>::to_vec).collect();
        let work = Arc::new(Piecework {
            entry: entry.clone(),
            reply: reply.clone(),
            started: Instant::now(),
            sender,
            state: Mutex::new(PieceState {
                done: items.len() - missing.len(),
                reported: if resumed {
                    items.len() - missing.len()
                } else {
                    0
                },
                outcomes,
                left: pieces.len(),
                whole: None,
                all_whole: !resumed,
                abandon: None,
                progress: resumed,
                cancelled: false,
            }),
        });
        if pieces.is_empty() {
            // The earlier worker did it all and died before answering.
            work.finish(&mut lock(&work.state));
            return;
        }
        lock(&self.pieceworks).insert(entry, Arc::clone(&work));
        let mut parts = Vec::with_capacity(pieces.len());
        for indices in pieces {
            let args: Vec<&[u8]> = indices.iter().map(|&i| items[i]).collect();
            let (ok_work, ok_indices) = (Arc::clone(&work), indices.clone());
            let err_work = Arc::clone(&work);
            let learn = self.estimates.learner(task, indices.len());
            let running = self
                .pool
                .apply_encoded_each(task, &args)
                .on_success(move |values| {
                    learn.done();
                    let mut state = lock(&ok_work.state);
                    state.all_whole = false;
                    state.done += values.len();
                    state.cancelled |= values
                        .errors()
                        .any(|(_, e)| matches!(e, pool_core::Error::Cancelled));
                    for (i, v) in ok_indices.into_iter().zip(&values) {
                        state.outcomes[i] =
                            Some(v.map(<[u8]>::to_vec).map_err(WireError::from_pool));
                    }
                    ok_work.piece_ended(&mut state);
                })
                .on_error(move |err| {
                    let mut state = lock(&err_work.state);
                    let wire = WireError::from_pool(&err);
                    if let pool_core::Error::PoolBroken(reason) = &err {
                        state.abandon.get_or_insert_with(|| reason.clone());
                    }
                    state.cancelled |= matches!(err, pool_core::Error::Cancelled);
                    state.done += indices.len();
                    for i in indices {
                        state.outcomes[i] = Some(Err(wire.clone()));
                    }
                    state.whole.get_or_insert(wire);
                    err_work.piece_ended(&mut state);
                });
            parts.push(running);
        }
        lock(&self.running).insert(reply, parts);
    }

    /// Reports what the long jobs of several items running here have done, so that a job whose
    /// worker dies is not run again whole (see [`Piecework`]).
    fn report_progress(&self, link: &mut Link) {
        let reports: Vec<(String, Vec<u8>)> = {
            let works: Vec<Arc<Piecework>> = {
                let mut all = lock(&self.pieceworks);
                all.retain(|_, w| lock(&w.state).left > 0);
                all.values().cloned().collect()
            };
            works
                .iter()
                .filter(|w| w.started.elapsed() >= self.report_after)
                .filter_map(|w| {
                    let mut state = lock(&w.state);
                    if state.left == 0 || state.done == state.reported {
                        return None;
                    }
                    state.reported = state.done;
                    state.progress = true;
                    Some((w.entry.clone(), wire::encode_progress(&state.outcomes)))
                })
                .collect()
        };
        if reports.is_empty() {
            return;
        }
        let never = AtomicBool::new(false);
        let _ = link.run(&never, |conn| {
            let mut pipe = redis::pipe();
            for (entry, bytes) in &reports {
                pipe.cmd("HSET")
                    .arg(&self.keys.progress)
                    .arg(entry)
                    .arg(bytes.as_slice())
                    .ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(&self.keys.progress)
                .arg(self.progress_ttl_ms)
                .ignore();
            pipe.query::<()>(conn)
        });
    }

    /// What an earlier worker reported of `entry`, if anything matches its `items` items.
    fn prior_progress(&self, link: &mut Link, entry: &str, items: usize) -> Option<wire::Progress> {
        let never = AtomicBool::new(false);
        let bytes: Option<Vec<u8>> = link
            .run(&never, |conn| {
                redis::cmd("HGET")
                    .arg(&self.keys.progress)
                    .arg(entry)
                    .query(conn)
            })
            .ok()?;
        let progress = wire::decode_progress(&bytes?).ok()?;
        (progress.len() == items).then_some(progress)
    }

    /// Reads the control stream: stops the jobs a client cancelled that run here (they are
    /// answered `Cancelled` like any other outcome, which acknowledges their entries). Also
    /// forgets jobs that finished.
    fn read_control(&self, mut link: Link, stop: &AtomicBool) {
        let mut last = "$".to_string();
        let options = StreamReadOptions::default()
            .count(256)
            .block(READ_BLOCK.as_millis() as usize);
        while !stop.load(Ordering::SeqCst) {
            let read: Result<StreamReadReply, _> = link.run(stop, |conn| {
                wire::xread(conn, &options, &self.keys.control, &last)
            });
            lock(&self.running).retain(|_, r| r.iter().any(|j| !j.ready()));
            let Ok(reply) = read else {
                std::thread::sleep(READ_BLOCK);
                continue;
            };
            for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                last.clone_from(&entry.id);
                let (Some(client), Some(ids)) = (
                    field_string(&entry.map, "client"),
                    field_string(&entry.map, "ids"),
                ) else {
                    continue;
                };
                let running = lock(&self.running);
                if ids == "*" {
                    // Everything this client submitted (an operator's `cancel_client`).
                    for (_, jobs) in running.iter().filter(|((c, _), _)| *c == client) {
                        for job in jobs {
                            job.cancel();
                        }
                    }
                    continue;
                }
                for id in ids.split(',').filter_map(|i| i.parse::<u64>().ok()) {
                    for job in running.get(&(client.clone(), id)).into_iter().flatten() {
                        job.cancel();
                    }
                }
            }
        }
    }

    fn answer(&self, answer: Answer) {
        if let Some(sender) = lock(&self.done).as_ref() {
            let _ = sender.send(answer);
        }
    }

    fn write_answers(&self, mut link: Link, done: Receiver<Answer>, ttl: Duration) {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        while let Ok(first) = done.recv() {
            let mut all = vec![first];
            while all.len() < WRITE_BATCH {
                match done.try_recv() {
                    Ok(a) => all.push(a),
                    Err(_) => break,
                }
            }
            let (abandoned, batch): (Vec<Answer>, Vec<Answer>) =
                all.into_iter().partition(|a| a.abandon.is_some());
            if let Some(reason) = abandoned.iter().find_map(|a| a.abandon.clone()) {
                tracing::error!(
                    worker = %self.name,
                    reason = %reason,
                    "pool-redis worker: the local pool is broken; leaving its jobs for other \
                     workers and stopping"
                );
                lock(&self.broken).get_or_insert(reason);
            }
            if batch.is_empty() {
                self.release(&abandoned);
                continue;
            }
            // Entries handed back by a drain whose local jobs were cancelled go back in the
            // queue as they came, as new entries other workers read at once; failed, given-up
            // and malformed jobs leave dead letters. Both need the entry's fields, read again
            // from the stream (rare: the common answer costs nothing here).
            let requeue: HashSet<&str> = {
                let handed_back = lock(&self.handed_back);
                batch
                    .iter()
                    .filter(|a| a.cancelled && handed_back.contains(&a.entry))
                    .map(|a| a.entry.as_str())
                    .collect()
            };
            let dead: Vec<(&str, Dead)> = batch
                .iter()
                .filter_map(|a| Some((a.entry.as_str(), a.dead_letter()?)))
                .collect();
            let fields: HashMap<&str, Vec<(String, Vec<u8>)>> =
                if requeue.is_empty() && dead.is_empty() {
                    HashMap::new()
                } else {
                    let ids: Vec<&str> = requeue
                        .iter()
                        .copied()
                        .chain(dead.iter().map(|(id, _)| *id))
                        .collect();
                    self.entry_fields(&mut link, &ids)
                };
            // A handed-back entry that is gone (its caller cancelled it) is answered.
            let requeue: HashSet<&str> = requeue
                .into_iter()
                .filter(|id| fields.contains_key(id))
                .collect();
            // Retried until it lands: an answer is never dropped while this worker lives.
            loop {
                let written = link.run(&self.stop_writing, |conn| {
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    let mut clients: Vec<&str> = Vec::new();
                    for a in &batch {
                        if requeue.contains(a.entry.as_str()) {
                            let cmd = pipe.cmd("XADD").arg(&self.keys.tasks).arg("*");
                            for (k, v) in &fields[a.entry.as_str()] {
                                cmd.arg(k).arg(v.as_slice());
                            }
                            cmd.ignore();
                            continue;
                        }
                        if let Some((client, job)) = &a.reply {
                            let key = self.keys.results(client);
                            let cmd = pipe.cmd("XADD").arg(&key).arg("*").arg("id").arg(*job);
                            match &a.outcome {
                                Ok(Outcome::All(values)) => cmd
                                    .arg("ok")
                                    .arg(wire::encode_items(values.iter().map(Vec::as_slice))),
                                Ok(Outcome::Values(values)) => cmd.arg("ok").arg(
                                    // Every item succeeded (see where `Values` is made).
                                    wire::encode_items(
                                        values.iter().map(Result::unwrap_or_default),
                                    ),
                                ),
                                Ok(Outcome::Each(each)) => {
                                    cmd.arg("each").arg(wire::encode_each(each))
                                }
                                Err(err) => cmd
                                    .arg("err")
                                    .arg(rmp_serde::to_vec(err).unwrap_or_default()),
                            }
                            .ignore();
                            if !clients.contains(&client.as_str()) {
                                clients.push(client);
                            }
                        }
                    }
                    for client in clients {
                        pipe.cmd("PEXPIRE")
                            .arg(self.keys.results(client))
                            .arg(ttl_ms)
                            .ignore();
                    }
                    for (entry, letter) in &dead {
                        let none = Vec::new();
                        let job = fields.get(entry).unwrap_or(&none);
                        letter.add_to(&mut pipe, &self.keys.dead, entry, job, &self.name);
                    }
                    let entries: Vec<&str> = batch.iter().map(|a| a.entry.as_str()).collect();
                    let reported: Vec<&str> = batch
                        .iter()
                        .filter(|a| a.progress)
                        .map(|a| a.entry.as_str())
                        .collect();
                    if !reported.is_empty() {
                        pipe.cmd("HDEL")
                            .arg(&self.keys.progress)
                            .arg(&reported)
                            .ignore();
                    }
                    pipe.cmd("XACK")
                        .arg(&self.keys.tasks)
                        .arg(GROUP)
                        .arg(&entries)
                        .ignore();
                    pipe.cmd("XDEL")
                        .arg(&self.keys.tasks)
                        .arg(&entries)
                        .ignore();
                    pipe.query::<()>(conn)
                });
                match written {
                    Ok(()) => break,
                    // Stopping for an outage: the jobs stay pending, for other workers.
                    Err(_) if self.stop_writing.load(Ordering::SeqCst) => break,
                    Err(err) => {
                        tracing::warn!(
                            worker = %self.name,
                            error = %err,
                            "pool-redis worker: could not write answers; retrying"
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            let failed = dead
                .iter()
                .filter(|(_, d)| d.kind == DeadKind::Failed)
                .count() as u64;
            self.answered
                .fetch_add(batch.len() as u64 - requeue.len() as u64, Ordering::Relaxed);
            self.failed.fetch_add(failed, Ordering::Relaxed);
            self.release(&batch);
            self.release(&abandoned);
        }
    }

    /// The fields of the task-stream entries `ids` that are still there (one round trip).
    fn entry_fields<'a>(
        &self,
        link: &mut Link,
        ids: &[&'a str],
    ) -> HashMap<&'a str, Vec<(String, Vec<u8>)>> {
        let never = AtomicBool::new(false);
        let replies: Vec<redis::streams::StreamRangeReply> = link
            .run(&never, |conn| {
                let mut pipe = redis::pipe();
                for id in ids {
                    pipe.cmd("XRANGE").arg(&self.keys.tasks).arg(*id).arg(*id);
                }
                pipe.query(conn)
            })
            .unwrap_or_default();
        ids.iter()
            .zip(replies)
            .filter_map(|(id, r)| {
                let entry = r.ids.into_iter().next()?;
                Some((*id, crate::dead::entry_fields(&entry.map)))
            })
            .collect()
    }

    /// Hands back the entries this worker holds beyond the `keep` it took first (those its
    /// local processes are most likely running): their local jobs are cancelled, and the
    /// writer puts each back in the queue as a new entry instead of answering `Cancelled` (a
    /// job that finished meanwhile is answered as usual). Returns how many it handed back.
    fn hand_back(&self, keep: usize) -> usize {
        type Entry = (u64, String, Option<(String, u64)>);
        let mut entries: Vec<Entry> = lock(&self.held)
            .iter()
            .map(|(id, h)| (h.seq, id.clone(), h.reply.clone()))
            .collect();
        entries.sort();
        let back: Vec<_> = entries.into_iter().skip(keep).collect();
        lock(&self.handed_back).extend(back.iter().map(|(_, id, _)| id.clone()));
        let running = lock(&self.running);
        for (_, _, reply) in &back {
            for job in reply.iter().flat_map(|r| running.get(r)).flatten() {
                job.cancel();
            }
        }
        back.len()
    }

    /// Forgets entries this worker no longer holds (answered, or abandoned).
    fn release(&self, answers: &[Answer]) {
        let mut held = lock(&self.held);
        let mut handed_back = lock(&self.handed_back);
        for a in answers {
            held.remove(&a.entry);
            handed_back.remove(&a.entry);
        }
        drop((held, handed_back));
        // Answered jobs need no cancel any more: their local results go now, not at the control
        // reader's next sweep (up to half a second of results held for nothing).
        let mut running = lock(&self.running);
        for a in answers {
            if let Some(reply) = &a.reply {
                running.remove(reply);
            }
        }
        drop(running);
        self.released.notify_all();
    }

    fn keep(&self, mut link: Link, s: KeeperSettings, stop: &AtomicBool) {
        let info = self.keys.worker(&self.name);
        let mut next = Instant::now();
        let mut next_sweep = Instant::now() + s.claim_idle;
        let started_ms = now_ms();
        // Jobs answered at the last heartbeat and when, for the rate.
        let mut last = (0u64, Instant::now());
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            next = now + s.heartbeat;
            let answered = self.answered.load(Ordering::Relaxed);
            let per_minute = {
                let secs = last.1.elapsed().as_secs_f64().max(1e-3);
                ((answered - last.0) as f64 * 60.0 / secs).round() as u64
            };
            last = (answered, Instant::now());
            let held = lock(&self.held).len();
            let never = AtomicBool::new(false);
            let _ = link.run(&never, |conn| {
                let ms = now_ms();
                redis::pipe()
                    .cmd("ZADD")
                    .arg(&self.keys.heartbeats)
                    .arg(ms)
                    .arg(&self.name)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&self.keys.heartbeats)
                    .arg("-inf")
                    .arg(ms.saturating_sub(60_000))
                    .ignore()
                    .cmd("HSET")
                    .arg(&info)
                    .arg("host")
                    .arg(hostname())
                    .arg("pid")
                    .arg(std::process::id())
                    .arg("processes")
                    .arg(s.processes)
                    .arg("heartbeat_ms")
                    .arg(s.heartbeat.as_millis() as u64)
                    .arg("started_ms")
                    .arg(started_ms)
                    .arg("done")
                    .arg(answered)
                    .arg("failed")
                    .arg(self.failed.load(Ordering::Relaxed))
                    .arg("per_minute")
                    .arg(per_minute)
                    .arg("held")
                    .arg(held)
                    .arg("draining")
                    .arg(u8::from(self.draining.load(Ordering::Relaxed)))
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&info)
                    .arg(60_000)
                    .ignore()
                    .query::<()>(conn)
            });
            self.refresh_held(&mut link);
            self.report_progress(&mut link);
            #[cfg(feature = "metrics")]
            if let Ok(q) = status::read(&mut link, &self.keys) {
                pool_core::meter::queue_depth("redis", q.waiting);
                pool_core::meter::workers_alive(
                    "redis",
                    q.workers.iter().filter(|w| w.alive).count() as u64,
                );
            }
            if !self.draining.load(Ordering::SeqCst) {
                self.reclaim(&mut link, &s);
                if now >= next_sweep {
                    // Workers that died uncleanly leave their consumer in the group; once it
                    // holds nothing (its jobs were taken over) and sends no heartbeat, it goes.
                    next_sweep = now + s.claim_idle.max(Duration::from_secs(1));
                    if let Ok(gone) =
                        crate::admin::remove_stale_consumers(&mut link, &self.keys, s.claim_idle)
                    {
                        for name in gone {
                            tracing::info!(
                                worker = %self.name,
                                consumer = %name,
                                "pool-redis: removed a dead worker's consumer from the group"
                            );
                        }
                    }
                }
            }
        }
        // Goodbye: no heartbeat any more, and no consumer left in the group if it holds nothing.
        let never = AtomicBool::new(false);
        let _ = link.run(&never, |conn| {
            redis::pipe()
                .cmd("ZREM")
                .arg(&self.keys.heartbeats)
                .arg(&self.name)
                .ignore()
                .cmd("DEL")
                .arg(&info)
                .ignore()
                .query::<()>(conn)
        });
        let mine: Result<Vec<Value>, _> = link.run(&never, |conn| {
            redis::cmd("XPENDING")
                .arg(&self.keys.tasks)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&self.name)
                .query(conn)
        });
        if matches!(mine, Ok(ref v) if v.is_empty()) {
            let _ = link.run(&never, |conn| {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.keys.tasks)
                    .arg(GROUP)
                    .arg(&self.name)
                    .query::<()>(conn)
            });
        }
    }

    /// Resets the idle time of every entry this worker holds, so no one reclaims them.
    fn refresh_held(&self, link: &mut Link) {
        let held: Vec<String> = lock(&self.held).keys().cloned().collect();
        let never = AtomicBool::new(false);
        for ids in held.chunks(256) {
            let _ = link.run(&never, |conn| {
                redis::cmd("XCLAIM")
                    .arg(&self.keys.tasks)
                    .arg(GROUP)
                    .arg(&self.name)
                    .arg(0)
                    .arg(ids)
                    .arg("JUSTID")
                    .query::<Value>(conn)
            });
        }
    }

    /// Takes over entries left idle by silent workers; gives up on those delivered too often.
    fn reclaim(&self, link: &mut Link, s: &KeeperSettings) {
        let never = AtomicBool::new(false);
        let min_idle = s.claim_idle.as_millis() as u64;
        let claimed: Result<StreamAutoClaimReply, _> = link.run(&never, |conn| {
            redis::cmd("XAUTOCLAIM")
                .arg(&self.keys.tasks)
                .arg(GROUP)
                .arg(&self.name)
                .arg(min_idle)
                .arg("0-0")
                .arg("COUNT")
                .arg(64)
                .query(conn)
        });
        let Ok(claimed) = claimed else {
            return;
        };
        for entry in claimed.claimed {
            if lock(&self.held).contains_key(&entry.id) {
                continue;
            }
            let deliveries = self.deliveries(link, &entry.id).unwrap_or(1);
            if deliveries > s.max_deliveries {
                let task = field_string(&entry.map, "task").unwrap_or_default();
                let reply = match (
                    field_string(&entry.map, "reply"),
                    field_u64(&entry.map, "id"),
                ) {
                    (Some(client), Some(job)) => Some((client, job)),
                    _ => None,
                };
                let seq = self.taken.fetch_add(1, Ordering::Relaxed);
                lock(&self.held).insert(
                    entry.id.clone(),
                    Held {
                        seq,
                        reply: reply.clone(),
                    },
                );
                let gave_up = WireError::GaveUp {
                    task,
                    deliveries: deliveries - 1,
                };
                let reason = gave_up.clone().into_error().to_string();
                tracing::warn!(
                    worker = %self.name,
                    entry = %entry.id,
                    "pool-redis: {reason}; the job goes to the dead letters"
                );
                self.answer(Answer {
                    entry: entry.id,
                    reply,
                    abandon: None,
                    outcome: Err(gave_up),
                    progress: true,
                    cancelled: false,
                    dead: Some(Dead {
                        kind: DeadKind::GaveUp,
                        reason,
                        attempts: deliveries - 1,
                    }),
                });
            } else {
                let items = field_slice(&entry.map, "args")
                    .and_then(|a| wire::decode_slices(a).ok())
                    .map_or(0, |i| i.len());
                let prior = (items > 1)
                    .then(|| self.prior_progress(link, &entry.id, items))
                    .flatten();
                self.start(entry, prior);
            }
        }
    }

    /// How many times `entry` has been delivered (this delivery included).
    fn deliveries(&self, link: &mut Link, entry: &str) -> Option<u64> {
        let never = AtomicBool::new(false);
        let rows: Vec<Value> = link
            .run(&never, |conn| {
                redis::cmd("XPENDING")
                    .arg(&self.keys.tasks)
                    .arg(GROUP)
                    .arg(entry)
                    .arg(entry)
                    .arg(1)
                    .query(conn)
            })
            .ok()?;
        let Some(Value::Array(row)) = rows.first() else {
            return None;
        };
        match row.get(3) {
            Some(Value::Int(n)) => Some(*n as u64),
            _ => None,
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
