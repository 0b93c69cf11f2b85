//! [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and [`Barrier`] across
//! processes, on futexes in shared memory.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handle::{self, kind, wire_handle};
use super::lock::{wrap, Lock, LockGuard, LockResult};
use super::raw::{left, RawMutex};
use super::segment::Segment;
use crate::sys::{futex_wait_timeout, futex_wake, futex_wake_one};
use crate::Error;

#[repr(C)]
struct SemState {
    value: AtomicU32,
    /// 0: unbounded.
    max: AtomicU32,
}

/// A counting semaphore shared by processes (Python's `multiprocessing.Semaphore`).
///
/// Permits held by a process that dies are not given back (as in Python): prefer a [`Lock`]
/// where a holder may die.
///
/// # Examples
///
/// ```
/// use pool_core::Semaphore;
///
/// let s = Semaphore::new(2)?;
/// s.acquire();
/// assert!(s.try_acquire());
/// assert!(!s.try_acquire()); // both permits taken
/// s.release();
/// assert_eq!(s.value(), 1);
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    seg: Arc<Segment>,
}

wire_handle!(Semaphore, kind::SEMAPHORE);

impl Semaphore {
    /// A semaphore with `value` permits.
    pub fn new(value: u32) -> Result<Semaphore, Error> {
        Self::with_max(value, 0)
    }

    fn with_max(value: u32, max: u32) -> Result<Semaphore, Error> {
        let seg = handle::create(std::mem::size_of::<SemState>(), kind::SEMAPHORE)?;
        let s = Semaphore { seg };
        s.state().value.store(value, Ordering::SeqCst);
        s.state().max.store(max, Ordering::SeqCst);
        Ok(s)
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        Semaphore { seg }
    }

    fn state(&self) -> &SemState {
        // SAFETY: the payload holds a SemState (atomics, valid for any bytes).
        unsafe { &*self.seg.payload().cast::<SemState>() }
    }

    fn acquire_until(&self, deadline: Option<Instant>, wait: bool) -> bool {
        let v = &self.state().value;
        loop {
            let n = v.load(Ordering::SeqCst);
            if n > 0 {
                if v.compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !wait || deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            futex_wait_timeout(v, 0, left(deadline));
        }
    }

    /// Takes a permit, sleeping until one is free.
    pub fn acquire(&self) {
        self.acquire_until(None, true);
    }

    /// Takes a permit if one frees up within `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.acquire_until(Some(Instant::now() + timeout), true)
    }

    /// Takes a permit if one is free now.
    pub fn try_acquire(&self) -> bool {
        self.acquire_until(None, false)
    }

    /// Gives a permit back. For a [`BoundedSemaphore`], an error past the initial value.
    fn release_checked(&self) -> Result<(), Error> {
        let s = self.state();
        let max = s.max.load(Ordering::Relaxed);
        loop {
            let n = s.value.load(Ordering::SeqCst);
            if max != 0 && n >= max {
                return Err(Error::Config(
                    "BoundedSemaphore released more times than it was acquired".into(),
                ));
            }
            if s.value
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                futex_wake_one(&s.value);
                return Ok(());
            }
        }
    }

    /// Gives a permit back.
    pub fn release(&self) {
        let _ = self.release_checked();
    }

    /// The permits free now.
    pub fn value(&self) -> u32 {
        self.state().value.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .finish()
    }
}

/// A [`Semaphore`] that refuses to be released above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`).
///
/// # Examples
///
/// ```
/// use pool_core::BoundedSemaphore;
///
/// let s = BoundedSemaphore::new(1)?;
/// s.acquire();
/// s.release()?;
/// assert!(s.release().is_err()); // more releases than acquires
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    inner: Semaphore,
}

impl BoundedSemaphore {
    /// A semaphore with `value` permits, never more.
    pub fn new(value: u32) -> Result<BoundedSemaphore, Error> {
        Ok(BoundedSemaphore {
            inner: Semaphore::with_max(value, value.max(1))?,
        })
    }

    /// Takes a permit, sleeping until one is free.
    pub fn acquire(&self) {
        self.inner.acquire()
    }

    /// Takes a permit if one frees up within `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.inner.acquire_timeout(timeout)
    }

    /// Takes a permit if one is free now.
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Gives a permit back; an error if that would exceed the initial value.
    pub fn release(&self) -> Result<(), Error> {
        self.inner.release_checked()
    }

    /// The permits free now.
    pub fn value(&self) -> u32 {
        self.inner.value()
    }
}

impl serde::Serialize for BoundedSemaphore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BoundedSemaphore {
            inner: Semaphore::deserialize(d)?,
        })
    }
}

/// A flag that processes can wait for (Python's `multiprocessing.Event`).
///
/// # Examples
///
/// ```
/// use pool_core::Event;
/// use std::time::Duration;
///
/// let e = Event::new()?;
/// assert!(!e.wait_timeout(Duration::from_millis(1)));
/// e.set();
/// e.wait(); // returns at once
/// assert!(e.is_set());
/// e.clear();
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Event {
    seg: Arc<Segment>,
}

wire_handle!(Event, kind::EVENT);

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, Error> {
        Ok(Event {
            seg: handle::create(4, kind::EVENT)?,
        })
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        Event { seg }
    }

    fn flag(&self) -> &AtomicU32 {
        // SAFETY: the payload holds one AtomicU32 (valid for any bytes).
        unsafe { &*self.seg.payload().cast::<AtomicU32>() }
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.flag().store(1, Ordering::SeqCst);
        futex_wake(self.flag());
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::SeqCst) != 0
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        while !self.is_set() {
            futex_wait_timeout(self.flag(), 0, None);
        }
    }

    /// Waits at most `timeout`; whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_set() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            futex_wait_timeout(self.flag(), 0, Some(left));
        }
        true
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

/// A condition variable shared by processes (Python's `multiprocessing.Condition`), paired
/// with a [`Lock`].
///
/// # Examples
///
/// ```
/// use pool_core::{Condition, Value};
/// use std::time::Duration;
///
/// let ready = Value::new(0u32)?;
/// let cond = Condition::new()?;
/// let guard = cond.acquire().unwrap();
/// // Nobody sets `ready` here, so the wait times out and gives the lock back.
/// let (guard, timed_out) = cond.wait_timeout(guard, Duration::from_millis(5)).unwrap();
/// assert!(timed_out && ready.get() == 0);
/// drop(guard);
/// cond.notify_all();
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Condition {
    lock: Lock,
    seg: Arc<Segment>,
}

impl Condition {
    /// A condition with a lock of its own.
    pub fn new() -> Result<Condition, Error> {
        Self::with_lock(Lock::new()?)
    }

    /// A condition over `lock`.
    pub fn with_lock(lock: Lock) -> Result<Condition, Error> {
        Ok(Condition {
            lock,
            seg: handle::create(4, kind::CONDITION)?,
        })
    }

    fn seq(&self) -> &AtomicU32 {
        // SAFETY: the payload holds one AtomicU32.
        unsafe { &*self.seg.payload().cast::<AtomicU32>() }
    }

    /// Takes the condition's lock.
    pub fn acquire(&self) -> LockResult<LockGuard<'_>> {
        self.lock.acquire()
    }

    /// Releases the lock held by `guard`, sleeps until notified, and takes the lock again.
    /// Spurious wake-ups happen: wait in a loop that checks the condition.
    pub fn wait<'a>(&'a self, guard: LockGuard<'a>) -> LockResult<LockGuard<'a>> {
        let seq = self.seq().load(Ordering::SeqCst);
        drop(guard);
        futex_wait_timeout(self.seq(), seq, None);
        self.lock.acquire()
    }

    /// [`wait`](Self::wait) for at most `timeout`; the flag says whether it timed out.
    pub fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> LockResult<(LockGuard<'a>, bool)> {
        let seq = self.seq().load(Ordering::SeqCst);
        let start = Instant::now();
        drop(guard);
        futex_wait_timeout(self.seq(), seq, Some(timeout));
        let timed_out = self.seq().load(Ordering::SeqCst) == seq && start.elapsed() >= timeout;
        match self.lock.acquire() {
            Ok(g) => Ok((g, timed_out)),
            Err(died) => wrap(super::raw::Taken::OwnerDied, (died.into_guard(), timed_out)),
        }
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.seq().fetch_add(1, Ordering::SeqCst);
        futex_wake_one(self.seq());
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.seq());
    }
}

impl serde::Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.lock)?;
        t.serialize_element(&self.seg.reference())?;
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (lock, r): (Lock, super::segment::SegmentRef) = serde::Deserialize::deserialize(d)?;
        if r.kind() != kind::CONDITION {
            return Err(serde::de::Error::custom("not a Condition"));
        }
        let seg = super::segment::open_ref(&r).map_err(serde::de::Error::custom)?;
        Ok(Condition { lock, seg })
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

#[repr(C)]
struct BarrierState {
    mutex: RawMutex,
    parties: AtomicU32,
    arrived: AtomicU32,
    generation: AtomicU32,
}

/// Makes `n` processes (or threads) wait for each other (Python's
/// `multiprocessing.Barrier`).
///
/// # Examples
///
/// ```
/// use pool_core::Barrier;
///
/// let b = Barrier::new(1)?;
/// assert_eq!(b.wait(), 0); // the last to arrive gets 0
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Barrier {
    seg: Arc<Segment>,
}

wire_handle!(Barrier, kind::BARRIER);

impl Barrier {
    /// A barrier for `parties` participants (at least 1).
    pub fn new(parties: u32) -> Result<Barrier, Error> {
        let seg = handle::create(std::mem::size_of::<BarrierState>(), kind::BARRIER)?;
        // SAFETY: fresh zeroed shared memory, page-aligned, used by nothing yet.
        unsafe { RawMutex::init(seg.payload().cast()) };
        let b = Barrier { seg };
        b.state().parties.store(parties.max(1), Ordering::SeqCst);
        Ok(b)
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        Barrier { seg }
    }

    fn state(&self) -> &BarrierState {
        // SAFETY: the payload holds a BarrierState initialized by `new`.
        unsafe { &*self.seg.payload().cast::<BarrierState>() }
    }

    /// Waits until all parties have called `wait`. Returns this caller's arrival index counted
    /// down: `parties - 1` for the first, 0 for the last (as Python's `Barrier.wait`).
    pub fn wait(&self) -> u32 {
        let s = self.state();
        let _ = s.mutex.lock();
        let generation = s.generation.load(Ordering::SeqCst);
        let arrived = s.arrived.load(Ordering::SeqCst) + 1;
        let parties = s.parties.load(Ordering::SeqCst);
        if arrived >= parties {
            s.arrived.store(0, Ordering::SeqCst);
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.mutex.unlock();
            futex_wake(&s.generation);
            return 0;
        }
        s.arrived.store(arrived, Ordering::SeqCst);
        s.mutex.unlock();
        while s.generation.load(Ordering::SeqCst) == generation {
            futex_wait_timeout(&s.generation, generation, None);
        }
        parties - arrived
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.state().parties.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .finish()
    }
}
