//! SIGTERM and SIGINT for a [`Worker`](crate::Worker): the first asks it to drain, the second
//! ends the process at once.
//!
//! # Who owns what
//!
//! - The handlers are the process's: installed when the first running worker asks
//!   ([`Drain::install`]), and the program's own dispositions are put back when the last one
//!   returns. Workers of one process share them, and a signal drains them all.
//! - The handler touches one atomic counter and, on a second signal, calls `_exit` — both
//!   async-signal-safe. It runs on any thread; no lock, no allocation.
//! - A forked child inherits the handlers; pool-core's workers put SIGTERM back to its default
//!   and ignore SIGINT before anything else (see `pool_core`'s start methods), so a local
//!   process still dies of SIGTERM when its pool stops it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Signals received since the handlers were installed.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// The signals a worker drains on.
const SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// How many running workers asked for the handlers, and the dispositions they replaced.
static INSTALLED: Mutex<(usize, Vec<(libc::c_int, libc::sigaction)>)> = Mutex::new((0, Vec::new()));

extern "C" fn on_signal(sig: libc::c_int) {
    if RECEIVED.fetch_add(1, Ordering::SeqCst) >= 1 {
        // A second signal: now. The jobs this worker holds stay pending in Redis, and other
        // workers take them over after `claim_idle`.
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Whether a drain signal arrived since the handlers were installed.
pub(crate) fn received() -> bool {
    RECEIVED.load(Ordering::SeqCst) > 0
}

/// The handlers, held by a running worker; dropping the last puts back the program's own.
#[derive(Debug)]
pub(crate) struct Drain(());

impl Drain {
    pub(crate) fn install() -> Drain {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if installed.0 == 0 {
            RECEIVED.store(0, Ordering::SeqCst);
            for sig in SIGNALS {
                // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask) that is then
                // filled in; `on_signal` is async-signal-safe (see above); `old` is written by
                // the kernel.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    let mut old: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(sig, &action, &mut old) == 0 {
                        installed.1.push((sig, old));
                    }
                }
            }
        }
        installed.0 += 1;
        Drain(())
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        installed.0 -= 1;
        if installed.0 == 0 {
            for (sig, old) in installed.1.drain(..) {
                // SAFETY: `old` is the disposition the kernel returned for `sig`.
                unsafe {
                    libc::sigaction(sig, &old, std::ptr::null_mut());
                }
            }
        }
    }
}
