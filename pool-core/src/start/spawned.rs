//! The spawn start method: a worker is this program's binary run again, attached to its region
//! and bell, which it inherits across `exec`.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::attach::serve_attached;
use super::fork::{exit_now, with_fork_lock, ParentFd, RegionSlot};
use super::process::{reap, Reaper, WorkerProcess};
use crate::transport::region::Region;
use crate::{panic_capture, sys};

/// The environment variable that marks a spawned worker: `memfd:bell:parent_pid:cap`.
pub(crate) const WORKER_ENV: &str = "POOL_CORE_SPAWNED_WORKER";

/// How long a spawned worker has to reach `pool_core::init()` and attach to its region.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a worker by running this program's binary again (the spawn start method): it shares
/// nothing with the parent but its region (a memfd) and the pool's bell, which it inherits
/// across `exec`. Its `main` must call `pool_core::init()` first; that call attaches it and
/// runs the worker loop. Returns once the worker has attached.
///
/// The calling thread must stay alive until the worker is reaped (its parent-death signal is
/// tied to it, as for forked workers).
pub(crate) fn spawn_worker(bell: RawFd, memory_cap: Option<u64>) -> io::Result<WorkerProcess> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let (region, memfd) = Region::in_memfd()?;
    let slot = with_fork_lock(|| RegionSlot::register(region.span()));
    // Registered, so that workers forked meanwhile by other pools close it.
    let memfd = ParentFd::new(memfd);
    let (mfd, parent) = (memfd.raw(), nix::unistd::getpid().as_raw());
    let cap = memory_cap.map_or(String::new(), |c| c.to_string());
    let mut command = std::process::Command::new(exe);
    command
        .env(WORKER_ENV, format!("{mfd}:{bell}:{parent}:{cap}"))
        .stdin(std::process::Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: fcntl, prctl, getppid and signal are plain system
    // calls on integers it captured by value.
    unsafe {
        command.pre_exec(move || {
            for fd in [mfd, bell] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other(
                    "the parent died before the worker started",
                ));
            }
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    // `Child` neither kills nor reaps on drop; the collector reaps by pid, like forked workers.
    drop(child);
    drop(memfd); // the worker has its own copy now
    let pidfd = match sys::pidfd_open(pid.as_raw()) {
        Ok(fd) => ParentFd::new(fd),
        Err(err) => {
            let _ = signal::kill(pid, Signal::SIGKILL);
            reap(pid, Duration::ZERO);
            return Err(err);
        }
    };
    let worker = WorkerProcess {
        pid,
        reaper: Reaper::Parent,
        pidfd,
        _slot: slot,
        region,
    };
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if worker.region.header().attached.load(Ordering::SeqCst) != 0 {
            return Ok(worker);
        }
        let exited = {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            let mut fds = [PollFd::new(worker.pidfd().as_fd(), PollFlags::POLLIN)];
            matches!(poll(&mut fds, PollTimeout::from(1u8)), Ok(n) if n > 0)
        };
        if exited || Instant::now() >= deadline {
            let cause = worker.reap(Duration::ZERO);
            return Err(io::Error::other(format!(
                "a spawned worker did not attach ({cause}): the program's `main` must call \
                 `pool_core::init()` (or carry `#[pool_core::main]`) before anything else"
            )));
        }
    }
}

/// In a process started by [`spawn_worker`]: attaches to the region and serves jobs until told
/// to stop, then exits. Called by `pool_core::init()`; never returns.
pub(crate) fn run_spawned_worker(spec: &str) -> ! {
    let fields: Vec<&str> = spec.split(':').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let (Some(memfd), Some(bell), Some(parent)) = (number(0), number(1), number(2)) else {
        exit_now(2);
    };
    if nix::unistd::getppid().as_raw() as i64 != parent {
        exit_now(1);
    }
    // The worker's own children should not think they are workers.
    std::env::remove_var(WORKER_ENV);
    let Ok(region) = Region::attach(memfd as i32) else {
        exit_now(2);
    };
    // SAFETY: the memfd stays mapped; its descriptor is no longer needed.
    unsafe { libc::close(memfd as i32) };
    let cap = fields.get(3).and_then(|f| f.parse::<u64>().ok());
    if crate::registry::check().is_err() {
        exit_now(2);
    }
    panic_capture::install();
    serve_attached(region, bell as RawFd, cap)
}
