//! [`WorkerProcess`]: a live worker as the parent sees it, and reaping it.
//!
//! Only the thread that started a worker waits for it (the pool's collector), by pid — never
//! `waitpid(-1)`, which would steal the statuses of the program's other children — so every
//! worker is reaped exactly once. A worker forked by the fork server is that server's child,
//! and only its own server reaps it, when the pool asks (see `forkserver`).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::fork::{ParentFd, RegionSlot};
use crate::transport::region::Region;
use crate::ExitCause;

/// Who reaps a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reaper {
    /// This process: it is our child.
    Parent,
    /// The fork server of this generation, through this function (see `forkserver`).
    Server {
        generation: u64,
        reap: fn(Pid, &OwnedFd, u64) -> ExitCause,
    },
}

/// A live worker process as the parent sees it.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pub(crate) pid: Pid,
    /// Who reaps it.
    pub(crate) reaper: Reaper,
    // Field order matters: slots unregister before what they name is closed or unmapped.
    pub(crate) pidfd: ParentFd,
    // Held for its `Drop`, which unregisters the region before it is unmapped.
    pub(crate) _slot: RegionSlot,
    pub(crate) region: Region,
}

impl WorkerProcess {
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Readable once the process has exited.
    pub(crate) fn pidfd(&self) -> &OwnedFd {
        self.pidfd.fd()
    }

    /// Consumes the handle: reaps the process (killing it after `grace`) and unmaps its region.
    /// Waits on the pidfd, so it returns the moment the process has exited.
    pub(crate) fn reap(self, grace: Duration) -> ExitCause {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        if !grace.is_zero() {
            let ms = grace.as_millis().clamp(1, i32::MAX as u128) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.pidfd.fd().as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, timeout);
        }
        // Exited by now, or about to be killed by `reap` after a last short grace.
        let cause = match self.reaper {
            Reaper::Server { generation, reap } => reap(self.pid, self.pidfd.fd(), generation),
            Reaper::Parent => self::reap(self.pid, Duration::from_millis(1)),
        };
        drop(self);
        cause
    }
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
