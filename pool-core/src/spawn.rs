//! Starting worker processes (fork), and reaping them.
//!
//! # Who owns what
//!
//! - Each worker is forked by the pool's collector thread, and only that thread ever waits for
//!   it, so every worker is reaped exactly once and no `waitpid(-1)` steals the statuses of the
//!   program's other children.
//! - The parent maps the worker's shared region just before forking it. Every other worker —
//!   of this pool or any other in the program — unmaps it right after its own fork, and closes
//!   the parent's descriptors (pidfds, other pools' bells) that it inherited, so a worker can
//!   reach only its own region and its own pool's bell. Registration in the tables below and
//!   the fork itself happen under one lock, so each child's view of the tables is complete.
//! - The worker asks the kernel to SIGKILL it when the thread that forked it exits
//!   (`PR_SET_PDEATHSIG`). That thread is the collector, which lives until all its workers are
//!   reaped, so this fires exactly when the parent process dies — also under SIGKILL, when no
//!   code of the parent runs.
//! - The parent learns of a worker's death from the worker's pidfd, never from the shared
//!   memory, which a dying worker may leave in any state.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::region::Region;
use crate::{forkserver, panic_capture, sys, worker, ExitCause};

/// Held from the creation of a worker's resources until its fork is done, and by anything that
/// must not be half-done in a forked child (the shared-segment registry).
static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with the fork lock held: no process is forked by this crate meanwhile, so no child
/// inherits the state `f` changes half-changed.
pub(crate) fn with_fork_lock<T>(f: impl FnOnce() -> T) -> T {
    let _lock = FORK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    f()
}

const SLOTS: usize = 4096;

/// Descriptors that only the parent may hold (pidfds, pools' bells): a new worker closes all of
/// them but its own pool's bell. Plain atomics: the child reads them after `fork`, where taking a
/// lock that another thread of the parent held would deadlock.
static PARENT_FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// Workers' regions (start address; length is fixed per entry in `REGION_LENS`): a new worker
/// unmaps all of them but its own.
static REGION_ADDRS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static REGION_LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// A registered parent-only descriptor; unregisters on drop (before the descriptor closes).
#[derive(Debug)]
pub(crate) struct ParentFd {
    slot: Option<usize>,
    fd: OwnedFd,
}

impl ParentFd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        let _lock = FORK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let raw = fd.as_raw_fd();
        let slot = PARENT_FDS.iter().position(|s| {
            s.compare_exchange(-1, raw, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        });
        // Past 4,096 live descriptors a worker may keep a copy: harmless, as the parent never
        // relies on a worker closing these.
        ParentFd { slot, fd }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for ParentFd {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            PARENT_FDS[i].store(-1, Ordering::SeqCst);
        }
    }
}

/// A registered region; unregisters on drop (before the region is unmapped).
#[derive(Debug)]
struct RegionSlot(Option<usize>);

impl RegionSlot {
    /// Call with the fork lock held.
    fn register((addr, len): (usize, usize)) -> Self {
        let slot = REGION_ADDRS.iter().position(|s| {
            s.compare_exchange(0, addr, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        });
        if let Some(i) = slot {
            REGION_LENS[i].store(len, Ordering::SeqCst);
        }
        RegionSlot(slot)
    }
}

impl Drop for RegionSlot {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            REGION_LENS[i].store(0, Ordering::SeqCst);
            REGION_ADDRS[i].store(0, Ordering::SeqCst);
        }
    }
}

/// A live worker process as the parent sees it.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pid: Pid,
    /// The generation of the fork server that is the worker's parent, if one is (rather than
    /// this process).
    by_server: Option<u64>,
    // Field order matters: slots unregister before what they name is closed or unmapped.
    pidfd: ParentFd,
    // Held for its `Drop`, which unregisters the region before it is unmapped.
    _slot: RegionSlot,
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
        let cause = if let Some(generation) = self.by_server {
            reap_by_server(self.pid, self.pidfd.fd(), generation)
        } else {
            reap(self.pid, Duration::from_millis(1))
        };
        drop(self);
        cause
    }
}

/// Forks a worker that serves jobs from a new region and rings `bell` (its pool's eventfd) when
/// the parent sleeps. Returns in the parent only.
///
/// The calling thread must stay alive until the worker is reaped (see the module docs).
pub(crate) fn fork_worker(bell: RawFd, memory_cap: Option<u64>) -> io::Result<WorkerProcess> {
    let region = Region::new()?;
    let lock = FORK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let slot = RegionSlot::register(region.span());
    let parent_pid = nix::unistd::getpid();
    // SAFETY: after `fork` in a multi-threaded program the child may only rely on state that no
    // other thread could have been changing at the fork. `child_after_fork` reads atomics,
    // makes raw syscalls, and then runs the worker loop, which uses only this thread, its own
    // region, the inherited (read-only) task table, and malloc, which glibc makes safe across
    // fork. It never returns: it ends the process with `_exit`, so no destructor or `atexit`
    // handler of the parent runs twice.
    let forked = unsafe { nix::unistd::fork() };
    match forked.map_err(io::Error::from)? {
        ForkResult::Child => {
            // This thread took the lock before the fork, so releasing the child's copy is
            // sound; the worker may take it again (to open a shared segment, say).
            drop(lock);
            child_after_fork(parent_pid, &region, bell, memory_cap)
        }
        ForkResult::Parent { child } => {
            drop(lock);
            // The child is ours and unreaped, so its pid cannot be reused before this call.
            match sys::pidfd_open(child.as_raw()) {
                Ok(pidfd) => Ok(WorkerProcess {
                    pid: child,
                    by_server: None,
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

/// Makes the inherited tables true in a child that this crate just forked: closes every
/// listed descriptor but `own_bell` and unmaps every listed region but `own_region`, and
/// **clears their entries**.
///
/// # Invariant
///
/// `PARENT_FDS` and `REGION_ADDRS`/`REGION_LENS` list exactly the descriptors open and the
/// regions mapped in *this* process that a child it forks must drop. A forked child inherits the
/// tables with its parent's entries; once it has closed or unmapped what they name, an entry
/// left behind would be stale: the number or address range is free for reuse, and a grandchild
/// (a worker of a pool the child builds) would close or unmap whatever reused it — a nested
/// pool's own region, once (a segfault). So every fork site of this crate calls this in the child
/// before anything else reads the tables, and what it keeps stays listed, so that the child's
/// own children drop it in turn. Runs between `fork` and the worker loop: plain atomics and
/// system calls only.
pub(crate) fn release_inherited(own_region: Option<usize>, own_bell: Option<RawFd>) {
    for slot in PARENT_FDS.iter() {
        let fd = slot.load(Ordering::SeqCst);
        if fd >= 0 && Some(fd) != own_bell {
            // SAFETY: closes a descriptor this child inherited and never uses; the parent's
            // objects that own it never run again here.
            unsafe { libc::close(fd) };
            slot.store(-1, Ordering::SeqCst);
        }
    }
    for (addr, len) in REGION_ADDRS.iter().zip(REGION_LENS.iter()) {
        let (a, l) = (addr.load(Ordering::SeqCst), len.load(Ordering::SeqCst));
        if a != 0 && Some(a) != own_region {
            if l != 0 {
                // SAFETY: unmaps another worker's region, which nothing in this child uses.
                unsafe { libc::munmap(a as *mut libc::c_void, l) };
            }
            len.store(0, Ordering::SeqCst);
            addr.store(0, Ordering::SeqCst);
        }
    }
}

/// In a worker that did not inherit its region's entry (spawned, or forked by the fork server):
/// lists its own region and bell, so that the workers of a pool it builds drop them.
fn list_own(region: &Region, bell: RawFd) {
    // Both stay listed for the worker's life: it never returns.
    std::mem::forget(RegionSlot::register(region.span()));
    let _ = PARENT_FDS.iter().any(|s| {
        s.compare_exchange(-1, bell, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    });
}

/// Lets this worker map at most `cap` more bytes than it holds now (RLIMIT_AS): an allocation
/// past it fails, and Rust aborts the worker, instead of the task taking the machine down.
fn cap_address_space(cap: u64) {
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

/// Has the fork server fork a worker (the fork-server start method): a fork of the small
/// process `pool_core::init()` started, not of this one, attached to a new region (a memfd)
/// and to the pool's bell.
pub(crate) fn forkserver_worker(bell: RawFd, memory_cap: Option<u64>) -> io::Result<WorkerProcess> {
    let (region, memfd) = Region::in_memfd()?;
    let slot = {
        let _lock = FORK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        RegionSlot::register(region.span())
    };
    // Registered, so that workers this process forks meanwhile close it.
    let memfd = ParentFd::new(memfd);
    let (pid, generation) = forkserver::fork_worker(memfd.raw(), bell, memory_cap)?;
    drop(memfd); // the worker has its own copy now
                 // The server reaps the worker only when asked (below), so `pid` names it until then.
    let pidfd = match sys::pidfd_open(pid.as_raw()) {
        Ok(fd) => ParentFd::new(fd),
        Err(err) => {
            let _ = signal::kill(pid, Signal::SIGKILL);
            forkserver::reap(pid, generation);
            return Err(err);
        }
    };
    Ok(WorkerProcess {
        pid,
        by_server: Some(generation),
        pidfd,
        _slot: slot,
        region,
    })
}

/// Kills the fork server's worker `pid` if it still runs, waits on its pidfd until it has
/// exited, and has the server reap it. The pid stays valid throughout: only that request lets
/// the server reap it.
fn reap_by_server(pid: Pid, pidfd: &OwnedFd, generation: u64) -> ExitCause {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let exited = |timeout: PollTimeout| {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(n) => return n > 0,
                Err(_) => return true, // cannot tell: let the server's waitpid decide
            }
        }
    };
    if !exited(PollTimeout::from(1u8)) {
        let _ = signal::kill(pid, Signal::SIGKILL);
        exited(PollTimeout::NONE);
    }
    forkserver::reap(pid, generation)
}

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
    let slot = {
        let _lock = FORK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        RegionSlot::register(region.span())
    };
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
        by_server: None,
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

/// Ends the worker process without running the parent's destructors or `atexit` handlers.
///
/// It does not flush `std::io::stdout()`: in a forked worker, the stdout lock may still be held
/// by a parent thread that was printing at the moment of the fork, and taking it would hang the
/// exit. `println!` output is already written (stdout flushes at each newline); only text a
/// task printed without a newline is lost.
pub(crate) fn exit_now(code: i32) -> ! {
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
