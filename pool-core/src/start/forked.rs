//! The fork start method: a worker forked from the pool's own process, by its collector thread.
//!
//! The worker asks the kernel to SIGKILL it when the thread that forked it exits
//! (`PR_SET_PDEATHSIG`). That thread is the collector, which lives until all its workers are
//! reaped, so this fires exactly when the parent process dies — also under SIGKILL, when no
//! code of the parent runs.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{ForkResult, Pid};

use super::attach::cap_address_space;
use super::fork::{exit_now, fork, release_inherited, ParentFd, RegionSlot};
use super::process::{reap, Reaper, WorkerProcess};
use crate::transport::region::Region;
use crate::{panic_capture, sys, worker};

/// Forks a worker that serves jobs from a new region and rings `bell` (its pool's eventfd) when
/// the parent sleeps. Returns in the parent only.
///
/// The calling thread must stay alive until the worker is reaped (see the module docs).
pub(crate) fn fork_worker(bell: RawFd, memory_cap: Option<u64>) -> io::Result<WorkerProcess> {
    let region = Region::new()?;
    let parent_pid = nix::unistd::getpid();
    // SAFETY: after `fork` in a multi-threaded program the child may only rely on state that no
    // other thread could have been changing at the fork. `child_after_fork` reads atomics,
    // makes raw syscalls, and then runs the worker loop, which uses only this thread, its own
    // region, the inherited (read-only) task table, and malloc, which glibc makes safe across
    // fork. It never returns: it ends the process with `_exit`, so no destructor or `atexit`
    // handler of the parent runs twice.
    let (slot, forked) = unsafe { fork(|| RegionSlot::register(region.span())) }?;
    match forked {
        ForkResult::Child => child_after_fork(parent_pid, &region, bell, memory_cap),
        ForkResult::Parent { child } => {
            // The child is ours and unreaped, so its pid cannot be reused before this call.
            match sys::pidfd_open(child.as_raw()) {
                Ok(pidfd) => Ok(WorkerProcess {
                    pid: child,
                    reaper: Reaper::Parent,
                    pidfd: ParentFd::new(pidfd),
                    _slot: slot,
                    region,
                }),
                Err(err) => {
                    let _ = signal::kill(child, Signal::SIGKILL);
                    reap(child, Duration::ZERO);
                    Err(err)
                }
            }
        }
    }
}

fn child_after_fork(parent_pid: Pid, region: &Region, bell: RawFd, memory_cap: Option<u64>) -> ! {
    // Die with the parent. If it died before this line, getppid no longer names it.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != parent_pid
    {
        exit_now(1);
    }
    // Ctrl-C reaches the whole foreground process group; the parent decides what to do with its
    // workers, so they ignore it. SIGTERM gets its default action back in case the program had
    // a handler for it whose thread does not exist here.
    // SAFETY: setting a disposition to SIG_IGN / SIG_DFL installs no handler code.
    unsafe {
        let _ = signal::signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal::signal(Signal::SIGTERM, SigHandler::SigDfl);
    }
    release_inherited(Some(region.span().0), Some(bell));
    crate::mp::pipe::local::forget_inherited();
    if let Some(cap) = memory_cap {
        cap_address_space(cap);
    }
    panic_capture::enter_worker();
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(region, bell)))
        .unwrap_or(70);
    exit_now(code)
}
