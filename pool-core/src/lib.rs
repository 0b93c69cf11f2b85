//! Process pools for Rust, in the spirit of Python's `multiprocessing.Pool` — typed, and without
//! its hangs.
//!
//! A [`Pool`] forks worker processes (one per CPU by default) that run functions marked
//! [`#[task]`](task). Arguments and results travel as MessagePack, checked at compile time: a
//! task is called with exactly its parameter types, so there are no pickling errors at run
//! time. Each task runs in its own process, isolated from the caller: a task that panics,
//! aborts, segfaults or is killed turns into an [`Error`] on that task, the worker is replaced,
//! and the pool goes on.
//!
//! # Quick start
//!
//! ```
//! use pool_core::{task, Pool};
//!
//! #[task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[task]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! fn main() -> Result<(), pool_core::Error> {
//!     let pool = Pool::new()?; // one worker per CPU, forked now
//!     assert_eq!(pool.apply(square, 7)?, 49); // one parameter: the bare value
//!     assert_eq!(pool.apply(add, (2, 3))?, 5); // several parameters: a tuple
//!     let r = pool.apply_async(square, 9); // returns at once
//!     assert_eq!(r.get()?, 81);
//!     let v: Vec<u64> = pool.map(square, 0..10_000)?; // ordered
//!     assert_eq!(v[3], 9);
//!     for x in pool.imap(square, 0..100) {
//!         x?; // lazy and ordered
//!     }
//!     assert_eq!(square(3), 9); // a task is still an ordinary function
//!     pool.close(); // no new work; queued work still finishes
//!     pool.join()?; // waits for the workers to exit
//!     Ok(())
//! }
//! ```
//!
//! # The calls, next to Python's
//!
//! | Python `multiprocessing.Pool` | `pool_core::Pool` |
//! |---|---|
//! | `Pool()`, `Pool(4)` | [`Pool::new()`], `Pool::builder().processes(4).build()` |
//! | `apply(f, (a, b))` | [`pool.apply(f, (a, b))`](Pool::apply) |
//! | `apply_async(f, args, callback=…, error_callback=…)` | [`pool.apply_async(f, args)`](Pool::apply_async)`.on_success(…).on_error(…)` |
//! | `map(f, xs, chunksize)` | [`pool.map(f, xs)`](Pool::map), [`map_chunked`](Pool::map_chunked) |
//! | `map_async(f, xs)` | [`pool.map_async(f, xs)`](Pool::map_async) |
//! | `imap`, `imap_unordered` | [`pool.imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered) (and `_chunked`) |
//! | `AsyncResult.get(timeout)`, `wait`, `ready`, `successful` | [`AsyncResult`] |
//! | (no per-call cancel) | [`AsyncResult::cancel`], [`Imap::cancel`], [`cancelled()`] in the task |
//! | `close()`, `join()`, `terminate()` | [`close`](Pool::close), [`join`](Pool::join), [`terminate`](Pool::terminate) |
//!
//! # Choosing a chunk size
//!
//! `map` sends items in chunks, one message per chunk; the default is Python's,
//! `ceil(n / (4 × processes))`, which keeps per-item costs low and still spreads work over the
//! workers, except that a chunk of the blocking `map` also ends once it holds 128 KiB of encoded
//! arguments (frames that small stay in the caches of the cores that copy them, and large items
//! travel one frame each, which measured faster than frames of tens of MiB). Use [`Pool::map_chunked`] to set an exact size — smaller when items take very
//! uneven time — and `imap_chunked` with a larger size than the default 1 when items are tiny.
//!
//! # Failures
//!
//! | What happens in the task | What the caller gets | The pool |
//! |---|---|---|
//! | it panics | [`Error::Panicked`] with the message and location | the worker lives on |
//! | its process dies (SIGKILL, `abort`, segfault, `process::exit`) | [`Error::WorkerDied`] with pid and signal or exit code, for that item only (the other items of its chunk run again elsewhere; [`Pool::map_results`] keeps them); after [`PoolBuilder::retries`] more attempts if set | a new worker replaces it |
//! | its name is unknown to the worker | [`Error::UnknownTask`] | unaffected |
//! | its arguments do not decode | [`Error::ArgsDecode`] | unaffected |
//! | its result does not encode | [`Error::ResultEncode`] | unaffected |
//! | the pool is terminated or dropped first | [`Error::Terminated`] | — |
//! | it runs past its time limit | [`Error::Timeout`] | its worker is killed and replaced |
//! | its caller cancels it ([`AsyncResult::cancel`], [`Imap::cancel`], dropping an `Imap`) | [`Error::Cancelled`] at once; a job not begun never begins, and [`cancelled()`] turns true in a running one | a task that returns within the cancel grace keeps its worker; one that does not is stopped and its worker replaced |
//! | it runs past its soft time limit ([`PoolBuilder::soft_timeout`]) | its value if it returns within the cancel grace, else [`Error::Timeout`] | as for a cancel |
//! | an outside signal kills its worker (at any phase: starting, initializing, idle, running) | [`Error::WorkerDied`] for the task it ran, if any | a new worker replaces it; the restart guard does not count it |
//! | initializers (or workers on their own) keep failing | [`Error::PoolBroken`] for work no live worker can take | backs off, then starts workers again; [`PoolStats::degraded`] says why meanwhile |
//! | it closes its worker's descriptors | its answer | the worker exits after answering and is replaced |
//! | it builds a pool of its own | that pool's results (pools nest under every start method) | — |
//! | a `map`'s input breaks its exact `size_hint` | [`Error::BadIterator`] | unaffected |
//! | an `imap`'s input panics at item k | the results of items 0..k, then the panic resumes from `next` | unaffected |
//! | the pool, a result or an `Imap` is used in a process forked from the pool's | [`Error::WrongProcess`] at once | the parent's pool is untouched |
//!
//! With `map`, a failure of any item fails the whole call, as in Python; with `imap`, each item
//! gets its own `Result`. When a worker dies, all items of the chunk it was running get the
//! error.
//!
//! A panic is caught with `catch_unwind`, so it is reported only when the program is built with
//! `panic = "unwind"` (the default); with `panic = "abort"` a panicking task kills its worker and
//! is reported as [`Error::WorkerDied`] with SIGABRT.
//!
//! # Limits
//!
//! - [`PoolBuilder::task_timeout`] and [`Pool::apply_timeout`]: a task past its time limit has
//!   its worker killed and replaced, and resolves to [`Error::Timeout`].
//! - [`PoolBuilder::max_tasks_per_child`] and [`PoolBuilder::max_memory_per_child`]: a worker
//!   is replaced after so many jobs, or once its resident memory after a job is too large;
//!   [`PoolBuilder::memory_cap`] bounds what a task can allocate at all.
//! - [`PoolBuilder::initializer`]: a task each new worker runs first. A restart guard stops the
//!   pool from fork-looping when initializers (or workers on their own) keep failing, with
//!   [`Error::PoolBroken`].
//!
//! # Async code, progress, logs and counters
//!
//! - An [`AsyncResult`] is a `Future`: `pool.apply_async(f, x).await` works under tokio or any
//!   executor, with no runtime dependency in this crate (the collector thread wakes the task).
//! - With feature `stream`, an [`Imap`] is also a `futures_core::Stream`.
//! - With feature `progress`, [`Pool::map_with_progress`] draws a progress bar with rate and ETA
//!   (indicatif) on standard error.
//! - With feature `tracing`, the pool emits `tracing` events (target `pool_core`): workers
//!   started, died (with pid and signal or exit code) and replaced, workers that could not be
//!   started, and failed tasks with their first error. Without the feature these calls compile to
//!   nothing. The library never prints.
//! - [`Pool::stats`] returns a [`PoolStats`]: tasks submitted, completed and failed, workers
//!   alive and replaced, queue depth, busy time per worker.
//!
//! # Processes and fork
//!
//! How workers start is the pool's [`StartMethod`]. With `Fork` they are forked from the
//! process that builds the pool, so they inherit its task table and memory (copy-on-write). As
//! with Python's `fork` start method, forking a program that already runs other threads is safe
//! for this crate's own code (the worker touches only its own shared region, the inherited task
//! table and `malloc`), but a task that takes a lock another thread of the parent held at the
//! moment of the fork (a logger's, say) can deadlock in the worker. Call [`init()`] first in
//! `main` (or put [`#[pool_core::main]`](main) on it): pools then default to `ForkServer`, and
//! their workers are forked from a small single-threaded server instead. `Spawn` runs the
//! program's binary again.
//!
//! Workers die with the parent: they ask the kernel for SIGKILL when the parent goes
//! (`PR_SET_PDEATHSIG`). Every worker is reaped by the pool; none is left as a zombie. Workers
//! ignore SIGINT, so Ctrl-C stops the parent, which takes its workers down with it.
//!
//! # Big data, shared instead of copied
//!
//! A large read-only dataset goes to the workers as a [`SharedSlice`] (plain-old-data items)
//! or, with the `rkyv` feature, a `Shared<T>` (any archivable value, read in place): built
//! once, frozen, passed to tasks as handles of about 40 bytes, mapped once per worker under
//! every start method. Which way to give workers data, and what each costs (2 workers summing
//! 1,000 windows of 1 MiB of a 1 GiB dataset, warm):
//!
//! | way | start methods | warm scan | |
//! |---|---|---|---|
//! | [`SharedSlice`] / `Shared` handles | all | 25–27 GB/s (rayon on a `Vec`: 23–31) | read-only |
//! | a global built before a `Fork` pool | `Fork` | 26–28 GB/s | the data must exist before the pool; fork copies its page tables |
//! | [`Array`] | all | 6–6.5 GB/s | mutable; every read takes its lock |
//! | a `Vec<u64>` task argument | all, and `pool-redis` | 1.1–1.2 GB/s | encoded and copied per task |
//!
//! # Beyond the pool
//!
//! The rest of Python's `multiprocessing` is in [`mp`] (and re-exported here): [`Process`],
//! [`Queue`], [`JoinableQueue`], [`Pipe`], [`Value`], [`Array`], [`Lock`], [`RLock`],
//! [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`] and
//! [`SharedMemory`]. Their handles can be passed to a `Process` or to a pool task as
//! arguments, and they survive the death of any process that uses them.
//!
//! ```
//! use pool_core::{task, Pool, Queue};
//!
//! #[task]
//! fn report(q: Queue<u32>, x: u32) {
//!     q.put(x * 10).unwrap();
//! }
//!
//! let q = Queue::new()?;
//! let pool = Pool::builder().processes(2).build()?;
//! pool.map(report, (1..=3).map(|x| (q.clone(), x)))?;
//! let mut got: Vec<u32> = (0..3).map(|_| q.get().unwrap()).collect();
//! got.sort();
//! assert_eq!(got, [10, 20, 30]);
//! # Ok::<(), pool_core::Error>(())
//! ```

#![deny(missing_docs)]
#![warn(rustdoc::broken_intra_doc_links)]

mod apply;
mod builder;
mod cancel;
mod driver;
mod engine;
mod error;
mod executor;
mod imap;
mod job;
mod map;
/// The metrics both engines report (feature `metrics`; empty without it). Not a stable API:
/// `pool-redis` reports through it.
#[doc(hidden)]
pub mod meter;
pub mod mp;
mod owner;
mod panic_capture;
mod pool;
mod registry;
mod result;
mod shared;
mod start;
mod stats;
mod sys;
mod task;
mod trace;
mod transport;
mod worker;

pub use builder::PoolBuilder;
pub use cancel::cancelled;
pub use error::{Error, ExitCause};
pub use executor::Executor;
pub use imap::Imap;
pub use mp::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, Connection, Event, GetError,
    JoinableQueue, Lock, LockGuard, LockResult, OwnerDied, Pipe, Process, ProcessHandle, PutError,
    Queue, RLock, RLockGuard, Runnable, Semaphore, SharedMemory, Value, ValueGuard,
};
pub use pool::Pool;
pub use result::{AsyncResult, EncodedOutcomes, EncodedOutcomesIter};
/// The archive format of [`Shared`] (feature `rkyv`), re-exported so that
/// `#[derive(rkyv::Archive, rkyv::Serialize)]` with `#[rkyv(crate = pool_core::rkyv)]` needs no
/// dependency of your own.
#[cfg(feature = "rkyv")]
pub use rkyv;
#[cfg(feature = "rkyv")]
pub use shared::Shared;
pub use shared::{windows_of, SharedSlice};
pub use start::StartMethod;
pub use stats::PoolStats;
pub use task::Task;

/// Plain-old-data element types for [`SharedSlice`]: derive [`Pod`] and [`Zeroable`] with
/// `#[bytemuck(crate = "pool_core::bytemuck")]`, no dependency of your own needed.
pub use bytemuck;
pub use bytemuck::{Pod, Zeroable};

/// Call first in `main` (or put [`#[pool_core::main]`](main) on `main`): serves as a pool worker
/// when this process was started as one, and otherwise starts the fork server.
///
/// - In a worker started by [`StartMethod::Spawn`] (the program's binary run again), this is
///   where the worker attaches to its pool and serves tasks, then exits, never running the rest
///   of `main`.
/// - In any other process it forks, once, a small single-threaded fork server and returns. Pools
///   then default to [`StartMethod::ForkServer`]: their workers are forked from that server
///   rather than from the program, which by then may run threads (tokio, rayon, a logger) whose
///   locks a forked worker would inherit. Call it before starting any thread: what the
///   server's workers see of the program is what existed when `init()` ran.
///
/// The server costs one process (its memory shared copy-on-write) and exits with the program.
///
/// # Examples
///
/// ```
/// fn main() {
///     pool_core::init(); // a spawned worker never returns from here
///     // … the program …
/// }
/// ```
#[allow(clippy::needless_doctest_main)] // where the call goes is the point of the example
pub fn init() {
    if let Ok(spec) = std::env::var(start::spawned::WORKER_ENV) {
        start::spawned::run_spawned_worker(&spec);
    }
    // A fork server started again after the first one died (never returns there).
    start::forkserver::serve_restarted();
    start::forkserver::start();
}

/// Puts [`init()`] first in `main`.
///
/// ```
/// #[pool_core::main]
/// fn main() {
///     // pool_core::init() has run: in a spawned worker, this body never runs.
/// }
/// ```
pub use pool_macros::main;

/// Makes a function a task that pool workers can run by name.
///
/// The function stays callable as before (`square(3)`), and becomes a value that names the task
/// for the pool (`pool.apply(square, 3)`): the attribute turns it into a unit struct of the same
/// name that implements [`Task`] and dereferences to the function. It is registered (through
/// `inventory`) under its module path and name, or under `#[task(name = "…")]`.
///
/// ```
/// use pool_core::{task, Pool, Task};
///
/// /// Adds two numbers.
/// #[task]
/// pub fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// #[task(name = "geometry.area")]
/// fn area(w: f64, h: f64) -> f64 {
///     w * h
/// }
///
/// #[task]
/// fn hello() -> String {
///     "hello".to_string()
/// }
///
/// assert_eq!(add(2, 3), 5); // still a function
/// assert_eq!(area::NAME, "geometry.area");
/// let pool = Pool::builder().processes(1).build()?;
/// assert_eq!(pool.apply(add, (2, 3))?, 5);
/// assert_eq!(pool.apply(area, (2.0, 4.0))?, 8.0);
/// assert_eq!(pool.apply(hello, ())?, "hello");
/// # Ok::<(), pool_core::Error>(())
/// ```
///
/// # What a task may be
///
/// A plain function: not `async`, not generic, not a method, not `unsafe` or `extern`. Its
/// parameters and return type must be owned types that implement serde's `Serialize` and
/// `Deserialize` (`String`, not `&str`; `Vec<T>`, not `&[T]`). Anything else is a compile
/// error that points at the offending token and says what to write instead. A task may return a
/// `Result` of its own, which reaches the caller inside the pool's `Result`.
///
/// Two tasks with the same name make [`Pool::new`] fail with [`Error::DuplicateTask`], naming
/// both functions.
pub use pool_macros::task;

pub mod wire;

#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;

/// What the code generated by `#[task]` refers to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::cancel::{register as on_cancel, Listener as CancelListener};
    pub use crate::engine::{Engine, JobFrame, JobSink};
    pub use crate::owner::Owner;
    pub use crate::task::{Task, TaskEntry};
    pub use inventory;
    pub use rmp_serde;
    pub use serde;
}
