//! Starting worker processes (fork), and reaping them.
//!
//! # Who owns what
//!
//! - Each worker is forked by its driver thread in the parent, and only that thread ever waits
//!   for it, so every worker is reaped exactly once and no `waitpid(-1)` steals the statuses of
//!   the program's other children.
//! - The parent keeps the parent end of the worker's socket pair; the worker keeps the other.
//!   After the fork the child closes every parent end it inherited (its own and those of all
//!   other workers of all pools in this program), so that when the parent dies, or closes a
//!   worker's end, the worker sees end-of-file, and no worker keeps another one's socket alive.
//! - The worker asks the kernel to SIGKILL it when the thread that forked it exits
//!   (`PR_SET_PDEATHSIG`). That thread is the driver, which lives until its worker is reaped, so
//!   this fires exactly when the parent process dies — also under SIGKILL, when no code of the
//!   parent runs.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::transport::{self, Channel};
use crate::{panic_capture, worker, ExitCause};

/// The parent ends of all workers' sockets in this process, so that a newly forked child can
/// close the ones it inherited. Plain atomics: the child reads them after `fork`, where taking a
/// lock that another parent thread held would deadlock.
const PARENT_END_SLOTS: usize = 4096;
static PARENT_ENDS: [AtomicI32; PARENT_END_SLOTS] =
    [const { AtomicI32::new(-1) }; PARENT_END_SLOTS];

/// Held while a worker's child end is open in the parent (see [`fork_worker`]).
static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A registered parent end; unregisters on drop. Must be dropped before the socket is closed,
/// which the field order of [`WorkerProcess`] guarantees.
#[derive(Debug)]
struct ParentEndGuard {
    slot: Option<usize>,
}

impl ParentEndGuard {
    fn register(fd: RawFd) -> Self {
        for (i, slot) in PARENT_ENDS.iter().enumerate() {
            if slot
                .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return ParentEndGuard { slot: Some(i) };
            }
        }
        // More than 4096 live workers: their children may keep a copy of this end open. Closing
        // still works because the parent sends an explicit shutdown frame and reaps by pid.
        ParentEndGuard { slot: None }
    }
}

impl Drop for ParentEndGuard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            PARENT_ENDS[i].store(-1, Ordering::SeqCst);
        }
    }
}

/// A live worker process as the parent sees it.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pid: Pid,
    // Field order matters: the guard unregisters the descriptor before the channel closes it.
    guard: ParentEndGuard,
    pub(crate) channel: Channel,
}

impl WorkerProcess {
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }
}

/// Forks a worker. Returns in the parent only; the child runs the worker loop and exits.
///
/// The calling thread must stay alive until the worker is reaped (see the module docs).
pub(crate) fn fork_worker() -> io::Result<WorkerProcess> {
    // While a child end exists in the parent, no other worker may be forked, or it would inherit
    // that end and keep it open: hold the fork lock from the pair's creation until the child end
    // is closed here. (The parent ends that workers inherit are closed by the workers, see
    // `close_inherited_parent_ends`; the pidfd watch makes death detection independent of both.)
    let fork_lock = FORK_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (mut parent_end, child_end) = transport::pair()?;
    let guard = ParentEndGuard::register(parent_end.raw_fd());
    let parent_pid = nix::unistd::getpid();
    // SAFETY: after `fork` in a multi-threaded program the child may only rely on state that no
    // other thread could have been changing at the fork. `child_after_fork` reads atomics,
    // makes raw syscalls, and then runs the worker loop, which uses only this thread, the
    // inherited (read-only) task table, the socket, and malloc, which glibc makes safe across
    // fork. It never returns: it ends the process with `_exit`, so no destructor or `atexit`
    // handler of the parent runs twice.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Child => child_after_fork(parent_pid, child_end, parent_end.raw_fd()),
        ForkResult::Parent { child } => {
            drop(child_end);
            drop(fork_lock);
            // The child is ours and unreaped, so its pid cannot be reused before this call.
            let watched =
                transport::pidfd_open(child.as_raw()).and_then(|pidfd| parent_end.watch(pidfd));
            if let Err(err) = watched {
                let _ = signal::kill(child, Signal::SIGKILL);
                drop((guard, parent_end));
                reap(child, Duration::ZERO);
                return Err(err);
            }
            Ok(WorkerProcess {
                pid: child,
                guard,
                channel: parent_end,
            })
        }
    }
}

fn child_after_fork(parent_pid: Pid, channel: Channel, own_parent_end: RawFd) -> ! {
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
    close_inherited_parent_ends(own_parent_end);
    panic_capture::enter_worker();
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(channel)))
        .unwrap_or(70);
    exit_now(code)
}

fn close_inherited_parent_ends(own: RawFd) {
    // SAFETY: closing descriptors this child inherited but does not use; nothing in the child
    // refers to them (the parent's objects that own them never run again here).
    unsafe { libc::close(own) };
    for slot in PARENT_ENDS.iter() {
        let fd = slot.load(Ordering::SeqCst);
        if fd >= 0 && fd != own {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Ends the worker process without running the parent's destructors or `atexit` handlers.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Waits for `pid` to end, for at most `grace`; then kills it with SIGKILL and waits for good.
/// Only the thread that forked `pid` calls this, once.
pub(crate) fn reap(pid: Pid, grace: Duration) -> ExitCause {
    let deadline = Instant::now() + grace;
    let mut pause = Duration::from_micros(50);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return cause_of(status),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ExitCause::Unknown,
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    let _ = signal::kill(pid, Signal::SIGKILL);
    loop {
        match waitpid(pid, None) {
            Ok(status) => return cause_of(status),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ExitCause::Unknown,
        }
    }
}

fn cause_of(status: WaitStatus) -> ExitCause {
    match status {
        WaitStatus::Exited(_, code) => ExitCause::Exited(code),
        WaitStatus::Signaled(_, sig, _) => ExitCause::Signal(sig as i32),
        _ => ExitCause::Unknown,
    }
}

impl WorkerProcess {
    /// Consumes the handle: closes the parent end and reaps the process.
    pub(crate) fn reap(self, grace: Duration) -> ExitCause {
        let WorkerProcess {
            pid,
            guard,
            channel,
        } = self;
        drop(guard);
        drop(channel);
        reap(pid, grace)
    }
}
