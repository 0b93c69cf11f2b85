//! The two building blocks every primitive uses, placed inside a shared segment:
//!
//! - [`RawMutex`]: a process-shared, *robust* `pthread_mutex_t`. When its owner dies (SIGKILL
//!   included) the kernel marks it, and the next locker gets it with an owner-died flag
//!   instead of waiting for ever.
//! - futex waits on `AtomicU32` sequence words, for sleeping until something changes (no
//!   busy-waiting).

use std::cell::UnsafeCell;
use std::time::{Duration, Instant};

/// A robust, process-shared mutex inside shared memory.
#[repr(C)]
pub(crate) struct RawMutex {
    m: UnsafeCell<libc::pthread_mutex_t>,
}

/// How a lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Normally.
    Clean,
    /// Its previous owner died holding it; the protected data may be half-updated.
    OwnerDied,
}

impl RawMutex {
    /// Initializes the mutex at `this`, which must be zeroed shared memory that nothing uses
    /// yet.
    ///
    /// # Safety
    ///
    /// `this` must point to writable memory for a `RawMutex`, suitably aligned, not in use.
    pub(crate) unsafe fn init(this: *mut RawMutex) {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: the attribute object is initialized by pthread_mutexattr_init before it is
        // used, and destroyed after; the mutex memory is valid and unused (caller's contract).
        unsafe {
            libc::pthread_mutexattr_init(attr.as_mut_ptr());
            libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST);
            libc::pthread_mutex_init((*this).m.get(), attr.as_ptr());
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        }
    }

    /// Locks, sleeping in the kernel while another thread or process holds it.
    pub(crate) fn lock(&self) -> Taken {
        // SAFETY: the mutex was initialized by `init` in the shared segment, which outlives
        // `self`.
        let rc = unsafe { libc::pthread_mutex_lock(self.m.get()) };
        self.after_lock(rc)
            .expect("a robust mutex lock without timeout succeeds")
    }

    /// Locks within `timeout`; `None` if it could not.
    pub(crate) fn lock_timeout(&self, timeout: Duration) -> Option<Taken> {
        let deadline = realtime_after(timeout);
        // SAFETY: as in `lock`; the deadline is a live local timespec.
        let rc = unsafe { libc::pthread_mutex_timedlock(self.m.get(), &deadline) };
        if rc == libc::ETIMEDOUT {
            return None;
        }
        self.after_lock(rc)
    }

    /// Locks if free now.
    pub(crate) fn try_lock(&self) -> Option<Taken> {
        // SAFETY: as in `lock`.
        let rc = unsafe { libc::pthread_mutex_trylock(self.m.get()) };
        if rc == libc::EBUSY {
            return None;
        }
        self.after_lock(rc)
    }

    fn after_lock(&self, rc: i32) -> Option<Taken> {
        match rc {
            0 => Some(Taken::Clean),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex (EOWNERDEAD returns it locked); marking it
                // consistent lets it be used again after we unlock.
                unsafe { libc::pthread_mutex_consistent(self.m.get()) };
                Some(Taken::OwnerDied)
            }
            // ENOTRECOVERABLE cannot happen: every owner-died lock is made consistent above.
            _ => None,
        }
    }

    /// Unlocks. Only the thread that locked may call it.
    pub(crate) fn unlock(&self) {
        // SAFETY: the caller holds the lock (guards call this once, from their own thread).
        unsafe { libc::pthread_mutex_unlock(self.m.get()) };
    }
}

fn realtime_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let total = now.tv_nsec as u128 + d.as_nanos();
    libc::timespec {
        tv_sec: now
            .tv_sec
            .saturating_add((total / 1_000_000_000).min(i64::MAX as u128) as libc::time_t),
        tv_nsec: (total % 1_000_000_000) as libc::c_long,
    }
}

/// What is left of `deadline`; `Some(ZERO)` once passed, `None` for no deadline.
pub(crate) fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}
