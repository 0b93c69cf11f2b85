//! Turning a task's panic into a message and a location, without printing it in the worker.
//!
//! `catch_unwind` hands back the panic's payload (its message) but not where it happened; only a
//! panic hook sees the location. The pool installs, once, a hook that wraps whatever hook the
//! program had: in the parent (and any process that is not a worker) it calls the previous hook
//! unchanged; in a worker it records the location for [`take`] and prints nothing, since the
//! panic is reported to the caller as `Error::Panicked` instead.
//!
//! The hook is installed in the parent before any worker is forked, so a worker never takes the
//! hook lock for writing (which another thread of the parent might have held at the fork).

use std::any::Any;
use std::cell::RefCell;
use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

/// Set in a worker process right after the fork, never in the parent.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the hook (once per process).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_WORKER.load(Ordering::Relaxed) {
                let location = info.location().map(|l| l.to_string());
                LOCATION.with(|cell| *cell.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// Marks this process as a worker: from now on panics are recorded, not printed.
pub(crate) fn enter_worker() {
    IN_WORKER.store(true, Ordering::Relaxed);
}

/// The message of a caught panic and the location the hook recorded for it.
pub(crate) fn take(payload: Box<dyn Any + Send>) -> (String, Option<String>) {
    let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    };
    // A payload's destructor may itself panic; that must not take the worker down.
    let _ = panic::catch_unwind(panic::AssertUnwindSafe(move || drop(payload)));
    let location = LOCATION.with(|cell| cell.borrow_mut().take());
    (message, location)
}
