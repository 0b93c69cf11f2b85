//! [`Process`]: one child process running one task (Python's `multiprocessing.Process`).
//!
//! # Who owns what
//!
//! The child is forked from the calling thread and is its caller's child: only its
//! [`ProcessHandle`] waits for it, by pid (never `waitpid(-1)`, which would steal the statuses
//! of the program's other children). A handle dropped while the child runs hands it to a small
//! thread that reaps it when it ends, so no zombie is left. A daemon child asks the kernel to
//! SIGKILL it when the thread that started it exits (`PR_SET_PDEATHSIG`), which includes the
//! death of the whole program.

use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::{Error, Task};

/// A value that runs as a process of its own: the equivalent of subclassing Python's
/// `Process` and overriding `run`. The child gets the value (as it was at
/// [`Process::start`]) and calls [`run`](Runnable::run) on it.
///
/// # Examples
///
/// ```
/// use pool_core::{Process, Runnable};
///
/// struct Greeter {
///     times: u32,
/// }
///
/// impl Runnable for Greeter {
///     fn run(&mut self) {
///         for _ in 0..self.times {
///             println!("hello from pid {}", std::process::id());
///         }
///     }
/// }
///
/// let p = Process::from_runnable(Greeter { times: 2 }).start()?;
/// p.join();
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), pool_core::Error>(())
/// ```
pub trait Runnable {
    /// The child's work. A panic makes the exit code 1.
    fn run(&mut self);
}

/// A process to start: a task and its arguments (or a [`Runnable`]), a name, and whether it
/// is a daemon.
///
/// # Examples
///
/// ```
/// use pool_core::{task, Process, Queue};
///
/// #[task]
/// fn produce(q: Queue<u64>) {
///     q.put(10 + 20 + 30).unwrap();
/// }
///
/// let q = Queue::new()?;
/// let p = Process::new(produce, q.clone()).name("producer").start()?;
/// assert_eq!(q.get().unwrap(), 60);
/// p.join();
/// assert_eq!(p.exitcode(), Some(0));
/// assert_eq!(p.name(), "producer");
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct Process {
    target: Box<dyn FnOnce()>,
    name: Option<String>,
    daemon: bool,
}

impl Process {
    /// A process that will run `task(args)`. Its return value is dropped (as in Python); pass
    /// a [`Queue`](crate::Queue) or a [`Pipe`](crate::Pipe) end to send results back.
    pub fn new<T: Task>(_task: T, args: T::Args) -> Process {
        Process {
            target: Box::new(move || drop(T::call(args))),
            name: None,
            daemon: false,
        }
    }

    /// A process that will call `value.run()`.
    pub fn from_runnable<R: Runnable + 'static>(mut value: R) -> Process {
        Process {
            target: Box::new(move || value.run()),
            name: None,
            daemon: false,
        }
    }

    /// Its name (default `Process-N`, N counting from 1 in this program).
    pub fn name(mut self, name: impl Into<String>) -> Process {
        self.name = Some(name.into());
        self
    }

    /// A daemon process is killed when the thread that started it (in practice, the program)
    /// exits; others outlive their parent unless joined. Default: false.
    pub fn daemon(mut self, daemon: bool) -> Process {
        self.daemon = daemon;
        self
    }

    /// Forks the child and returns its handle.
    pub fn start(self) -> Result<ProcessHandle, Error> {
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let name = self.name.unwrap_or_else(|| format!("Process-{n}"));
        let daemon = self.daemon;
        let parent = nix::unistd::getpid();
        // Whatever the program wrote must not be written twice (once more by the child).
        let _ = std::io::stdout().flush();
        let target = self.target;
        let report =
            crate::sys::SharedMapping::new(std::mem::size_of::<Report>()).map_err(Error::shared)?;
        // SAFETY: the child first releases the inherited tables, then runs only the target and
        // ends with `_exit`, so no destructor or `atexit` handler of the parent runs twice. As
        // with any fork of a multi-threaded program, the target must not need a lock another
        // thread of the parent held at this moment (see the crate docs on start methods).
        let ((), forked) = unsafe { crate::start::fork::fork(|| ()) }.map_err(Error::shared)?;
        match forked {
            ForkResult::Child => child(target, daemon, parent, &report),
            ForkResult::Parent { child } => {
                // The child waits for `go` before it runs anything, so it is alive (and its pid
                // names it) when we open its pidfd — even in a program that ignores SIGCHLD,
                // where the kernel reaps a child the moment it exits.
                let pidfd = match crate::sys::pidfd_open(child.as_raw()) {
                    Ok(pidfd) => pidfd,
                    Err(err) => {
                        let _ = signal::kill(child, Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        return Err(Error::shared(err));
                    }
                };
                // The child holds the pipe ends this process holds (as a forked child holds its
                // parent's descriptors): registered before it runs, so a `close` here right
                // after `start` leaves the child's end open.
                super::pipe::local::adopt_child(child.as_raw() as u32);
                let report_words = report_of(&report);
                report_words.go.store(1, Ordering::SeqCst);
                crate::sys::futex_wake(&report_words.go);
                Ok(ProcessHandle {
                    pid: child,
                    name,
                    daemon,
                    pidfd,
                    report,
                    owner: crate::owner::Owner::here(),
                    status: Mutex::new(None),
                })
            }
        }
    }
}

fn child(
    target: Box<dyn FnOnce()>,
    daemon: bool,
    parent: Pid,
    report: &crate::sys::SharedMapping,
) -> ! {
    // First: the pools' tables of inherited regions and descriptors (see
    // `start::fork::release_inherited`). A `Process` uses none of its parent's pools (their handles
    // refuse to work here), so it keeps none of their resources.
    crate::start::fork::release_inherited(None, None);
    let report = report_of(report);
    while report.go.load(Ordering::SeqCst) == 0 {
        crate::sys::futex_wait(&report.go, 0);
    }
    if daemon
        && (nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
            || nix::unistd::getppid() != parent)
    {
        crate::start::exit_now(1);
    }
    // A panic is reported by the panic hook (on standard error, like Python's traceback).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(target));
    let code = match outcome {
        Ok(()) => 0,
        Err(payload) => {
            // The payload's destructor may panic too; that must not change the exit code.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
            1
        }
    };
    let _ = std::io::stdout().flush();
    report.code.store(code, Ordering::SeqCst);
    report.reported.store(1, Ordering::SeqCst);
    crate::start::exit_now(code)
}

/// What parent and child share about the child's start and end, in a small shared mapping.
#[repr(C)]
struct Report {
    /// Set (and woken) by the parent once it holds the child's pidfd; the child waits for it.
    go: AtomicU32,
    /// Set by the child once `code` holds its exit code: the one record of it when the program
    /// ignores SIGCHLD (the kernel then reaps the child itself) on a kernel that cannot tell a
    /// pidfd's exit status (before Linux 6.15).
    reported: AtomicU32,
    code: AtomicI32,
}

fn report_of(map: &crate::sys::SharedMapping) -> &Report {
    // SAFETY: the mapping is at least `size_of::<Report>()` bytes, page-aligned, zeroed when
    // new (a valid `Report`: atomics only), shared between the two processes, and accessed
    // only through these atomics; it lives as long as the returned reference.
    unsafe { &*map.as_ptr().cast::<Report>() }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

/// A started [`Process`].
pub struct ProcessHandle {
    pid: Pid,
    name: String,
    daemon: bool,
    pidfd: OwnedFd,
    /// The child's own record of its exit code (see `Process::start`).
    report: crate::sys::SharedMapping,
    /// The child's parent: the one process that may wait for it. A copy of the handle in any
    /// other process watches the child's pidfd instead.
    owner: crate::owner::Owner,
    /// `Some` once the child has ended: its exit code, when it can be known (see
    /// [`exitcode`](Self::exitcode)).
    status: Mutex<Option<Option<i32>>>,
}

impl ProcessHandle {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a daemon.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// `None` while it runs; once it has ended, its exit code if that can be known.
    fn reap(&self, block: bool) -> Option<Option<i32>> {
        if !self.owner.is_here() {
            return self.observe(block);
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            let flags = (!block).then_some(WaitPidFlag::WNOHANG);
            loop {
                match waitpid(self.pid, flags) {
                    Ok(WaitStatus::Exited(_, code)) => *status = Some(Some(code)),
                    Ok(WaitStatus::Signaled(_, sig, _)) => *status = Some(Some(-(sig as i32))),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(_) => continue,
                    // Not waitable: it has ended and was reaped elsewhere — by the kernel when
                    // the program ignores SIGCHLD, or by a `waitpid(-1)` in the program.
                    Err(_) => *status = Some(self.code_after_reaped()),
                }
                break;
            }
        }
        *status
    }

    /// In a process other than the child's parent (one forked from it, which inherited this
    /// handle): only the parent may wait for the child, so this one watches its pidfd, which
    /// turns readable when the child ends, and takes no lock (one held at the fork stays held).
    fn observe(&self, block: bool) -> Option<Option<i32>> {
        let timeout = if block {
            nix::poll::PollTimeout::NONE
        } else {
            nix::poll::PollTimeout::ZERO
        };
        loop {
            let mut fds = [nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(n) if n > 0 => return Some(self.code_after_reaped()),
                _ => return None,
            }
        }
    }

    /// The exit code of a child that someone else reaped: from its pidfd (Linux 6.15 and
    /// later keep it there), else from what the child wrote before exiting, else unknown.
    fn code_after_reaped(&self) -> Option<i32> {
        if let Some(status) = crate::sys::pidfd_exit_status(&self.pidfd) {
            return Some(if libc::WIFSIGNALED(status) {
                -libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            });
        }
        let report = report_of(&self.report);
        (report.reported.load(Ordering::SeqCst) != 0).then(|| report.code.load(Ordering::SeqCst))
    }

    /// Whether it is still running.
    pub fn is_alive(&self) -> bool {
        self.reap(false).is_none()
    }

    /// Waits for it to end.
    pub fn join(&self) {
        self.reap(true);
    }

    /// Waits at most `timeout` for it to end; whether it has.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        if self.reap(false).is_some() {
            return true;
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
        );
        self.reap(false).is_some()
    }

    /// Asks it to stop (SIGTERM).
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Kills it (SIGKILL).
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn signal(&self, sig: Signal) {
        if !self.owner.is_here() {
            // Not our child: its pid may be reused once its parent reaps it; its pidfd never
            // names another process.
            // SAFETY: pidfd_send_signal takes a descriptor we own, a signal number, a null
            // siginfo and no flags; it touches no memory of ours.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    sig as i32,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
            return;
        }
        // Under the status lock: an unreaped child's pid cannot name another process.
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            let _ = signal::kill(self.pid, sig);
        }
    }

    /// `None` while it runs; then its exit code: `Some(0)` on success, `Some(1)` after a
    /// panic, the code it passed to `exit`, or `Some(-N)` when killed by signal N (as in
    /// Python).
    ///
    /// In a program that ignores SIGCHLD the kernel reaps children itself, so `waitpid` cannot
    /// report them; the code is then read from the child's pidfd (Linux 6.15 and later), and on
    /// older kernels from the child's own record, which covers a normal end (`Some(0)`) and a
    /// panic (`Some(1)`). A child that a signal or `exit` ended on such a kernel reports
    /// `None` even after it ended (as CPython's `exitcode` does there); [`is_alive`](Self::is_alive)
    /// and [`join`](Self::join) still tell that it has ended.
    pub fn exitcode(&self) -> Option<i32> {
        self.reap(false).flatten()
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        if !self.owner.is_here() {
            return; // only the parent reaps
        }
        if self.reap(false).is_none() {
            // Still running: reap it when it ends, so it does not stay a zombie.
            let pid = self.pid;
            let _ = std::thread::Builder::new()
                .name("pool-core-reaper".into())
                .spawn(move || while let Err(nix::errno::Errno::EINTR) = waitpid(pid, None) {});
        }
    }
}

impl fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid.as_raw())
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}
