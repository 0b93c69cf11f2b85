//! Which process a pool handle belongs to.
//!
//! A pool's handle ([`Pool`](crate::Pool)), its results and its iterators are plain memory, so a
//! process forked from the one that built the pool (a [`Process`](crate::Process), a worker of
//! another pool, a user's own `fork`) inherits copies of them — but not the pool's collector
//! thread, which feeds the workers and delivers every result. A copy used there would wait
//! forever for an answer, and a copy dropped there would kill the parent's workers. So every
//! handle records its [`Owner`], and every entry point checks it first, before it takes any
//! lock (a lock another thread of the parent held at the fork stays locked in the child).
//!
//! The check must cost nothing on the hot path (`apply_async` runs millions of times a
//! second), so it compares a *fork generation* — a counter that a `pthread_atfork` handler
//! bumps in every child — instead of asking the kernel for the process id.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Once;

use crate::Error;

/// Bumped in every child forked through the C library's `fork` (this crate's fork sites, `nix`,
/// `libc::fork`) once [`install`] has run.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// This process's id, kept with the generation so that errors can name it without a system
/// call on the hot path.
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// Registers the fork handler, once per program. Called before any handle records its owner,
/// so every fork after a handle exists bumps the generation.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        PID.store(std::process::id(), Ordering::Relaxed);
        // SAFETY: registers a handler that only touches two atomics and makes one
        // async-signal-safe system call (getpid); it stays valid for the program's life.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// The process a handle was made in. (Public only for `pool-redis`, through `__private`.)
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    generation: u64,
    pid: u32,
}

impl Owner {
    /// This process.
    #[inline]
    pub fn here() -> Owner {
        install();
        Owner {
            generation: GENERATION.load(Ordering::Relaxed),
            pid: PID.load(Ordering::Relaxed),
        }
    }

    /// Whether this is the process the handle was made in.
    #[inline]
    pub fn is_here(&self) -> bool {
        GENERATION.load(Ordering::Relaxed) == self.generation
    }

    /// `Ok` in the owning process, [`Error::WrongProcess`] anywhere else.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        if self.is_here() {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// The [`Error::WrongProcess`] for a use in this process.
    #[cold]
    pub fn error(&self) -> Error {
        Error::WrongProcess {
            owner: self.pid,
            pid: PID.load(Ordering::Relaxed),
        }
    }
}
