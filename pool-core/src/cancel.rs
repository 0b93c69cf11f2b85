//! Stopping work: a caller's cancel reaching the pools that run the work, and, inside a worker,
//! the stop request a task can see ([`cancelled`]) and the stop signal for one that does not
//! look.
//!
//! # How a cancel travels (local pool)
//!
//! 1. [`AsyncResult::cancel`](crate::AsyncResult::cancel) (or cancelling or dropping an
//!    [`Imap`](crate::Imap)) marks the result's sink cancelled and resolves it to
//!    [`Error::Cancelled`](crate::Error::Cancelled) at once; then [`requested`] bumps a
//!    process-wide epoch and wakes every live pool's collector.
//! 2. A collector that sees a new epoch looks at its jobs. A queued job whose sink is cancelled
//!    is answered without being sent. A job sent to a worker but not begun gets a skip slot in
//!    that worker's region (`Header::skip`): the worker answers it without running it. For a
//!    running job the collector sets the worker's `stop` word, so [`cancelled`] turns true in
//!    the task.
//! 3. If the job is still running after the pool's cancel grace, the collector sends the
//!    worker [`STOP_SIGNAL`]. The worker's handler exits at once ([`EXIT_STOPPED`]) — but only
//!    if `stop` still names the job it runs, so a worker that has moved on to the next job
//!    is never hit by a late signal. A second later SIGKILL follows, if the job is still the
//!    one running (a task may block or replace the handler). The collector replaces the worker
//!    like any other; the restart guard does not count the exit.
//!
//! A soft time limit takes the same path from step 2, with `Error::Timeout` as the outcome.
//!
//! Skip slots and `stop` name a job by its sequence number at the worker (`seq`: how many jobs
//! the worker had begun before it), stored as `seq + 1` so that 0 names nothing and an old
//! value never matches a later job. The worker counts a job as begun (`jobs_started`) before it
//! reads its skip slot, and the collector writes the slot before it reads `jobs_started` again
//! (both sequentially consistent): either the worker sees the slot, or the collector sees that
//! the job began and stops it as a running one.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, Weak};

/// What is told of cancels: a pool's collector, woken to look at its jobs, or another engine
/// (`pool-redis`'s client, which takes cancelled jobs back from its queue). Called on the
/// thread that cancelled: it must only wake something, never block.
#[doc(hidden)]
pub trait Listener: Send + Sync {
    /// Something in this process was cancelled.
    fn cancel_requested(&self);
}

static EPOCH: AtomicU64 = AtomicU64::new(0);
static LISTENERS: Mutex<Vec<Weak<dyn Listener>>> = Mutex::new(Vec::new());

/// Registers a listener for as long as it lives.
#[doc(hidden)]
pub fn register(listener: Weak<dyn Listener>) {
    let mut all = LISTENERS.lock().unwrap_or_else(PoisonError::into_inner);
    all.retain(|l| l.strong_count() > 0);
    all.push(listener);
}

/// Something in this process was cancelled: bumps the epoch and wakes every listener.
pub(crate) fn requested() {
    EPOCH.fetch_add(1, Ordering::SeqCst);
    let live: Vec<_> = LISTENERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for listener in live {
        listener.cancel_requested();
    }
}

/// How many cancels this process has seen (a collector compares it with what it saw last).
#[inline]
pub(crate) fn epoch() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

// --- inside a worker ------------------------------------------------------------------------

/// The signal the collector sends a worker whose stopped job outlived the grace.
pub(crate) const STOP_SIGNAL: libc::c_int = libc::SIGUSR2;
/// A worker's exit code when its stop handler ended it. Not a failure of the pool (the restart
/// guard ignores it).
pub(crate) const EXIT_STOPPED: i32 = 76;

/// This worker's `stop` word (in its region, which it never unmaps); null outside workers.
static STOP_WORD: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// `seq + 1` of the job this worker runs; 0 between jobs.
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// Called once as a worker starts serving: where its stop word is, and the stop handler.
pub(crate) fn enter_worker(stop: &'static AtomicU64) {
    STOP_WORD.store(stop as *const AtomicU64 as *mut AtomicU64, Ordering::SeqCst);
    // SAFETY: installs a handler that only loads two atomics and may call `_exit`, both
    // async-signal-safe; the sigaction struct is fully initialized (zeroed, then filled).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(STOP_SIGNAL, &action, std::ptr::null_mut());
    }
}

/// The worker begins job `seq`.
#[inline]
pub(crate) fn begin(seq: u64) {
    // Relaxed: only this thread and its own signal handler read it.
    CURRENT.store(seq + 1, Ordering::Relaxed);
}

/// The worker has finished its job.
#[inline]
pub(crate) fn end() {
    CURRENT.store(0, Ordering::Relaxed);
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    if cancelled() {
        // SAFETY: `_exit` is async-signal-safe; the worker's job is abandoned on purpose.
        unsafe { libc::_exit(EXIT_STOPPED) };
    }
}

/// Whether the task running in this worker has been asked to stop: its call was cancelled
/// ([`AsyncResult::cancel`](crate::AsyncResult::cancel), an [`Imap`](crate::Imap) cancelled or
/// dropped) or it passed the pool's soft time limit
/// ([`PoolBuilder::soft_timeout`](crate::PoolBuilder::soft_timeout)).
///
/// A long task can look now and then, clean up and return early; its return value is then
/// thrown away for a cancel, and delivered for a soft time limit. A task that does not return
/// within the pool's [`cancel_grace`](crate::PoolBuilder::cancel_grace) is stopped anyway (its
/// worker exits and is replaced). Outside a worker (in the caller, in a `Process`) it is
/// always `false`. One atomic load: cheap enough for a hot loop.
///
/// # Examples
///
/// ```
/// use pool_core::{task, Error, Pool};
/// use std::time::Duration;
///
/// #[task]
/// fn count_until_cancelled() -> u64 {
///     let mut n = 0;
///     while !pool_core::cancelled() {
///         n += 1;
///         std::thread::sleep(Duration::from_millis(1));
///     }
///     n // cleaned up and returned; the caller already has `Cancelled`
/// }
///
/// #[task]
/// fn ping() -> u8 {
///     1
/// }
///
/// let pool = Pool::builder().processes(1).build()?;
/// let r = pool.apply_async(count_until_cancelled, ());
/// std::thread::sleep(Duration::from_millis(50));
/// assert!(r.cancel());
/// assert!(matches!(r.get(), Err(Error::Cancelled)));
/// assert_eq!(pool.apply(ping, ())?, 1); // the same worker, once the task returned
/// # Ok::<(), pool_core::Error>(())
/// ```
#[inline]
pub fn cancelled() -> bool {
    let word = STOP_WORD.load(Ordering::Relaxed);
    if word.is_null() {
        return false;
    }
    let current = CURRENT.load(Ordering::Relaxed);
    // SAFETY: a non-null STOP_WORD points into this worker's region, mapped for the life of
    // the process.
    current != 0 && unsafe { &*word }.load(Ordering::Relaxed) == current
}
