//! What every worker does before its loop, and the loop's entry for workers that did not
//! inherit their region by `fork` from the pool's process (spawned, or forked by the fork
//! server).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::fork::{exit_now, list_own};
use crate::transport::region::Region;
use crate::{panic_capture, worker};

/// Lets this worker map at most `cap` more bytes than it holds now (RLIMIT_AS): an allocation
/// past it fails, and Rust aborts the worker, instead of the task taking the machine down.
pub(crate) fn cap_address_space(cap: u64) {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system setting.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let limit = (pages * page).saturating_add(cap);
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads one rlimit struct from a live local.
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) };
}

/// In a worker that did not inherit its region by `fork` from the pool's process (spawned, or
/// forked by the fork server): applies the memory cap, tells the pool it has attached, serves
/// jobs until told to stop, and exits. The panic hook must be installed already.
pub(crate) fn serve_attached(region: Region, bell: RawFd, memory_cap: Option<u64>) -> ! {
    list_own(&region, bell);
    if let Some(cap) = memory_cap {
        cap_address_space(cap);
    }
    panic_capture::enter_worker();
    region.header().attached.store(1, Ordering::SeqCst);
    let code =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(&region, bell)))
            .unwrap_or(70);
    exit_now(code)
}
