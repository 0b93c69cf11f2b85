//! [`Lock`] and [`RLock`]: mutual exclusion across processes that survives the death of the
//! owner.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::handle::{self, kind, wire_handle};
use super::raw::{RawMutex, Taken};
use super::segment::Segment;
use crate::Error;

/// A lock was taken, but its previous owner died holding it (a process killed mid-update): the
/// data it protects may be half-updated. The guard is inside; the lock itself is fine again.
///
/// # Examples
///
/// ```
/// use pool_core::{Lock, OwnerDied};
///
/// let lock = Lock::new()?;
/// let guard = lock.acquire().unwrap_or_else(OwnerDied::into_guard);
/// drop(guard);
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    /// The guard: the lock is held, and usable again once released.
    pub fn into_guard(self) -> G {
        self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerDied { .. }")
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner of the lock died holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// The result of taking a lock: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

pub(crate) fn wrap<G>(taken: Taken, guard: G) -> LockResult<G> {
    match taken {
        Taken::Clean => Ok(guard),
        Taken::OwnerDied => Err(OwnerDied { guard }),
    }
}

/// A lock shared by processes (Python's `multiprocessing.Lock`): a handle that can be cloned,
/// inherited across `fork`, and passed to a [`Process`](crate::Process) or a pool task as an
/// argument. Blocked processes sleep in the kernel.
///
/// If the process holding it dies, even by SIGKILL, the next [`acquire`](Lock::acquire) gets it
/// with [`OwnerDied`] instead of waiting for ever.
///
/// # Examples
///
/// ```
/// use pool_core::Lock;
///
/// let lock = Lock::new()?;
/// {
///     let _held = lock.acquire().unwrap();
///     assert!(lock.try_acquire().is_none()); // held
/// }
/// assert!(lock.try_acquire().is_some());
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Lock {
    seg: Arc<Segment>,
}

wire_handle!(Lock, kind::LOCK);

/// Holds a [`Lock`] until dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    /// A robust mutex must be released by the thread that took it: guards stay on it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Lock {
    /// A new unlocked lock.
    pub fn new() -> Result<Lock, Error> {
        let seg = handle::create(std::mem::size_of::<RawMutex>(), kind::LOCK)?;
        // SAFETY: the payload is fresh zeroed shared memory, page-aligned, used by nothing yet.
        unsafe { RawMutex::init(seg.payload().cast()) };
        Ok(Lock { seg })
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        Lock { seg }
    }

    pub(crate) fn raw(&self) -> &RawMutex {
        // SAFETY: the payload holds a RawMutex initialized by `new` (checked by the segment's
        // kind), and lives as long as the segment.
        unsafe { &*self.seg.payload().cast::<RawMutex>() }
    }

    /// Takes the lock, sleeping while another thread or process holds it.
    pub fn acquire(&self) -> LockResult<LockGuard<'_>> {
        let taken = self.raw().lock();
        wrap(
            taken,
            LockGuard {
                lock: self,
                _not_send: std::marker::PhantomData,
            },
        )
    }

    /// Takes the lock if it is free within `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<LockResult<LockGuard<'_>>> {
        let taken = self.raw().lock_timeout(timeout)?;
        Some(wrap(
            taken,
            LockGuard {
                lock: self,
                _not_send: std::marker::PhantomData,
            },
        ))
    }

    /// Takes the lock if it is free now.
    pub fn try_acquire(&self) -> Option<LockResult<LockGuard<'_>>> {
        let taken = self.raw().try_lock()?;
        Some(wrap(
            taken,
            LockGuard {
                lock: self,
                _not_send: std::marker::PhantomData,
            },
        ))
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.raw().unlock();
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

/// A re-entrant lock shared by processes (Python's `multiprocessing.RLock`): the thread that
/// holds it may take it again; it is free once every guard is dropped.
///
/// # Examples
///
/// ```
/// use pool_core::RLock;
///
/// let lock = RLock::new()?;
/// let outer = lock.acquire().unwrap();
/// let inner = lock.acquire().unwrap(); // same thread: no deadlock
/// drop(inner);
/// drop(outer);
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    seg: Arc<Segment>,
}

wire_handle!(RLock, kind::RLOCK);

#[repr(C)]
struct RLockState {
    mutex: RawMutex,
    /// The thread (kernel tid, unique on the machine) holding it; written by the holder.
    owner: AtomicU32,
    depth: AtomicU64,
}

/// Holds an [`RLock`] (one level) until dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: std::marker::PhantomData<*const ()>,
}

fn gettid() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

impl RLock {
    /// A new unlocked re-entrant lock.
    pub fn new() -> Result<RLock, Error> {
        let seg = handle::create(std::mem::size_of::<RLockState>(), kind::RLOCK)?;
        // SAFETY: fresh zeroed shared memory, page-aligned, used by nothing yet.
        unsafe { RawMutex::init(seg.payload().cast()) };
        Ok(RLock { seg })
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        RLock { seg }
    }

    fn state(&self) -> &RLockState {
        // SAFETY: the payload holds an RLockState initialized by `new`.
        unsafe { &*self.seg.payload().cast::<RLockState>() }
    }

    /// Takes the lock (again, if this thread holds it).
    pub fn acquire(&self) -> LockResult<RLockGuard<'_>> {
        let s = self.state();
        let me = gettid();
        if s.owner.load(Ordering::Acquire) == me {
            s.depth.fetch_add(1, Ordering::Relaxed);
            return Ok(RLockGuard {
                lock: self,
                _not_send: std::marker::PhantomData,
            });
        }
        let taken = s.mutex.lock();
        s.owner.store(me, Ordering::Release);
        s.depth.store(1, Ordering::Relaxed);
        wrap(
            taken,
            RLockGuard {
                lock: self,
                _not_send: std::marker::PhantomData,
            },
        )
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let s = self.lock.state();
        if s.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            s.owner.store(0, Ordering::Release);
            s.mutex.unlock();
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock").finish_non_exhaustive()
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}
