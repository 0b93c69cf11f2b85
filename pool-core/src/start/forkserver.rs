//! The fork server: a small single-threaded process, forked by `pool_core::init()` while the
//! program is still single-threaded, that forks workers on the pools' behalf
//! ([`StartMethod::ForkServer`](crate::StartMethod::ForkServer)).
//!
//! A program that runs threads (tokio, rayon, a logger) then never forks itself: each worker is
//! a fork of the server, which has one thread and holds no lock, so a worker cannot inherit a
//! lock that some other thread held at the fork.
//!
//! # Who owns what
//!
//! - The program and the server talk over a `SOCK_SEQPACKET` socket pair made before the
//!   server's fork. It has no address: no other process can connect to it. The server still
//!   checks the peer's credentials (same user) before it serves.
//! - A pool asks for a worker by sending the worker's region (a memfd) and the pool's bell (an
//!   eventfd) as `SCM_RIGHTS`. The server forks, closes its copies, and answers with the pid.
//! - The worker is the server's child, so only the server can reap it. It does so only when a
//!   pool asks (`reap`), after the pool has seen the worker exit through its pidfd. Until then
//!   the worker stays a zombie, so its pid names it and nothing else: the pool may signal it by
//!   pid, exactly as it does a worker it forked itself.
//! - The server dies with the program (`PR_SET_PDEATHSIG`, tied to the thread that called
//!   `init()`, the main thread) and when the socket reaches end-of-file; each worker dies with
//!   the server. So SIGKILL of the program takes the server and then every worker down with it.
//! - Requests and answers are strictly paired, under one lock in the program, so any pool in any
//!   thread may use the server.
//!
//! # When the server dies
//!
//! Someone may kill it (an operator, the OOM killer). Its workers die with it and their pools
//! replace them — through a new server: the first request that finds the server gone starts
//! another and asks again. The new server is *not* a fork of the program, which by then may
//! run threads whose locks a fork would inherit; it is the program's binary run again (as
//! Python's forkserver is a fresh interpreter), whose `main` calls `pool_core::init()` first
//! and becomes the server there, single-threaded, seeing the program as it was at the top of
//! `main` — exactly what the first server saw. It holds the other end of a new socket pair
//! (inherited across `exec`) and exits at that socket's end-of-file, that is when the program
//! dies. Each server has a generation; a worker remembers its server's, and only its own
//! server is ever asked to reap it (a pid from a dead server's time may name a new server's
//! child by now). The dead server is reaped as it is replaced.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, Once, OnceLock, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::attach::serve_attached;
use super::fork::{self, exit_now, release_inherited, ParentFd, RegionSlot};
use super::process::{Reaper, WorkerProcess};
use crate::transport::region::Region;
use crate::{panic_capture, registry, sys, ExitCause};

/// The running server, as the program sees it. Set once, by `init()`.
static SERVER: OnceLock<Server> = OnceLock::new();

#[derive(Debug)]
struct Server {
    /// The program's end of the socket pair to the current server, with that server's pid and
    /// generation. Registered as parent-only, so workers the program forks itself close it.
    channel: Mutex<Channel>,
    /// The process that started the server. A process forked from it (a worker, a
    /// `Process`) inherits this static but must not use the channel: requests from two
    /// processes would interleave.
    owner: u32,
}

#[derive(Debug)]
struct Channel {
    fd: ParentFd,
    pid: Pid,
    generation: u64,
}

/// Set in a restarted server's environment: `fd:program_pid`, its end of the socket pair.
const SERVER_ENV: &str = "POOL_CORE_FORK_SERVER";

/// The server, if this process is the one that started it.
fn server() -> Option<&'static Server> {
    SERVER.get().filter(|s| s.owner == std::process::id())
}

const FORK: u8 = b'F';
const REAP: u8 = b'R';

/// Whether `init()` started a fork server in this process.
pub(crate) fn running() -> bool {
    server().is_some()
}

/// Starts the server, once per process. On failure the program carries on without one (pools
/// then default to `Fork`).
pub(crate) fn start() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Workers inherit the task table and the panic hook from the server: set both up now.
        if registry::check().is_err() {
            return; // every pool will report the duplicate name
        }
        panic_capture::install();
        let Ok((ours, theirs)) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) else {
            return;
        };
        let program = nix::unistd::getpid();
        // SAFETY: `init()` runs first in `main`, while the program has one thread, so the
        // child inherits no lock held by another thread. Even if it did not, `serve` only makes
        // system calls and forks; it never returns, and ends with `_exit`, so no destructor or
        // `atexit` handler of the program runs in it.
        let forked = unsafe { fork::fork(|| ()) };
        match forked.map(|((), f)| f) {
            Ok(ForkResult::Child) => {
                // The server keeps nothing of pools the program may have built before `init()`.
                release_inherited(None, None);
                drop(ours);
                serve(theirs, program, true)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(theirs);
                let _ = SERVER.set(Server {
                    channel: Mutex::new(Channel {
                        fd: ParentFd::new(ours),
                        pid: child,
                        generation: 0,
                    }),
                    owner: std::process::id(),
                });
            }
            Err(_) => {}
        }
    });
}

/// Asks the server for a worker that serves `region` (in `memfd`) and rings `bell`. Returns the
/// worker's pid and its server's generation; the worker is the server's child and stays
/// unreaped until [`reap`]. A dead server is replaced (see the module docs) and asked again.
pub(crate) fn fork_worker(
    memfd: RawFd,
    bell: RawFd,
    memory_cap: Option<u64>,
) -> io::Result<(Pid, u64)> {
    let server = server().ok_or_else(|| {
        io::Error::other(
            "StartMethod::ForkServer needs `pool_core::init()` (or `#[pool_core::main]`) first \
             in `main`",
        )
    })?;
    let mut request = [0u8; 9];
    request[0] = FORK;
    request[1..9].copy_from_slice(&memory_cap.unwrap_or(u64::MAX).to_le_bytes());
    let (answer, generation) = match server.ask(&request, &[memfd, bell], None) {
        Err(Gone(generation)) => {
            server.restart(generation)?;
            server
                .ask(&request, &[memfd, bell], None)
                .map_err(|Gone(_)| gone(Errno::EPIPE))?
        }
        Ok(answered) => answered,
    };
    match answer {
        [0, pid, _] if pid > 0 => Ok((Pid::from_raw(pid), generation)),
        [1, errno, _] => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other("the fork server gave a malformed answer")),
    }
}

/// Has the server of generation `generation` reap its worker `pid`, which must have exited (its
/// pidfd is readable), and returns how it ended. A worker of an earlier server is not asked
/// about: that server is gone, and so is its status.
pub(crate) fn reap(pid: Pid, generation: u64) -> ExitCause {
    let Some(server) = server() else {
        return ExitCause::Unknown;
    };
    let mut request = [0u8; 9];
    request[0] = REAP;
    request[1..5].copy_from_slice(&pid.as_raw().to_le_bytes());
    match server.ask(&request, &[], Some(generation)) {
        Ok(([0, code, _], _)) => ExitCause::Exited(code),
        Ok(([1, signal, _], _)) => ExitCause::Signal(signal),
        _ => ExitCause::Unknown,
    }
}

/// The server of this generation did not answer: it is gone.
struct Gone(u64);

impl Server {
    /// Sends one request and reads its answer (three little-endian `i32`s) and the generation
    /// of the server that gave it; with `only`, only if that server is of that generation.
    fn ask(
        &self,
        request: &[u8],
        fds: &[RawFd],
        only: Option<u64>,
    ) -> Result<([i32; 3], u64), Gone> {
        let channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = channel.generation;
        if only.is_some_and(|g| g != generation) {
            return Err(Gone(generation));
        }
        let raw = channel.fd.raw();
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
        let sent = retry(|| {
            socket::sendmsg::<()>(
                raw,
                &[IoSlice::new(request)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
        });
        if sent.is_err() {
            return Err(Gone(generation));
        }
        let mut answer = [0u8; 12];
        match retry(|| socket::recv(raw, &mut answer, MsgFlags::empty())) {
            Ok(n) if n == answer.len() => {}
            _ => return Err(Gone(generation)),
        }
        let word =
            |i: usize| i32::from_le_bytes(answer[i * 4..i * 4 + 4].try_into().unwrap_or_default());
        Ok(([word(0), word(1), word(2)], generation))
    }

    /// Replaces the server of generation `dead` (unless another thread did already): runs the
    /// program's binary again as the new server (see the module docs).
    fn restart(&self, dead: u64) -> io::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        if channel.generation != dead {
            return Ok(()); // replaced meanwhile
        }
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let fd = theirs.as_raw_fd();
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .env(SERVER_ENV, format!("{fd}:{}", std::process::id()))
            .env_remove(super::spawned::WORKER_ENV)
            .stdin(std::process::Stdio::null());
        // SAFETY: runs between fork and exec, where only async-signal-safe calls are allowed:
        // fcntl and signal are plain system calls on an integer captured by value.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(theirs);
        // The dead server is our child: reap it (it may still be dying: then it is reaped at
        // the next restart or stays a zombie until the program ends).
        let _ = nix::sys::wait::waitpid(channel.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        let pid = Pid::from_raw(child.id() as i32);
        drop(child); // neither kills nor reaps: reaped when it is replaced, as above
        *channel = Channel {
            fd: ParentFd::new(ours),
            pid,
            generation: dead + 1,
        };
        Ok(())
    }
}

/// In a process started by `Server::restart`: becomes the fork server. Called by
/// `pool_core::init()` when the environment says so; never returns.
pub(crate) fn serve_restarted() {
    let Ok(spec) = std::env::var(SERVER_ENV) else {
        return;
    };
    let mut fields = spec.split(':').map(|f| f.parse::<i32>().ok());
    let (Some(Some(fd)), Some(Some(program))) = (fields.next(), fields.next()) else {
        exit_now(2);
    };
    // The server's own children (workers) must not think they are servers.
    std::env::remove_var(SERVER_ENV);
    if registry::check().is_err() {
        exit_now(2);
    }
    panic_capture::install();
    // SAFETY: the descriptor was inherited across exec for this process alone; nothing else
    // in it owns or uses it.
    let channel = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec again: the workers it forks must not hold the server's end.
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    serve(channel, Pid::from_raw(program), false)
}

fn gone(errno: Errno) -> io::Error {
    io::Error::other(format!("the fork server is gone ({errno})"))
}

fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// The server's main loop; never returns.
///
/// The first server dies with the thread that called `init()` (the main thread, so with the
/// program: `PR_SET_PDEATHSIG`). A restarted one was started by whatever thread found the
/// server gone — perhaps a pool's collector, which ends with its pool — so it must not die
/// with that thread (`with_parent_thread` false): it ends at its socket's end-of-file, which
/// comes when the program dies (every process the program forks closes its end first).
fn serve(channel: OwnedFd, program: Pid, with_parent_thread: bool) -> ! {
    if with_parent_thread && nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        exit_now(1);
    }
    if nix::unistd::getppid() != program {
        exit_now(1);
    }
    // The socket pair has no address, so only the program holds the other end; check it anyway.
    match socket::getsockopt(&channel, socket::sockopt::PeerCredentials) {
        Ok(peer) if peer.uid() == nix::unistd::getuid().as_raw() => {}
        _ => exit_now(1),
    }
    // Ctrl-C reaches the whole process group; the program decides what happens to its workers.
    // Workers stay zombies until a pool asks for them, so SIGCHLD must not reap them.
    // SAFETY: setting a disposition to SIG_IGN / SIG_DFL installs no handler code.
    unsafe {
        let _ = signal::signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal::signal(Signal::SIGCHLD, SigHandler::SigDfl);
        let _ = signal::signal(Signal::SIGTERM, SigHandler::SigDfl);
    }
    let raw = channel.as_raw_fd();
    loop {
        let mut request = [0u8; 16];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut fds: Vec<OwnedFd> = Vec::new();
        let received = retry(|| {
            let mut iov = [IoSliceMut::new(&mut request)];
            let msg =
                socket::recvmsg::<()>(raw, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(list) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process;
                    // nothing else owns them.
                    fds.extend(
                        list.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            Ok(msg.bytes)
        });
        let n = match received {
            Ok(n) if n > 0 => n,
            // End-of-file: the program is gone (or closed its end). So is the reason to serve.
            _ => exit_now(0),
        };
        let answer = match (request[0], &fds[..]) {
            (FORK, [memfd, bell]) if n == 9 => {
                let cap = u64::from_le_bytes(request[1..9].try_into().unwrap_or_default());
                let cap = (cap != u64::MAX).then_some(cap);
                fork_one(raw, memfd, bell, cap)
            }
            (REAP, []) if n == 9 => {
                let pid = i32::from_le_bytes(request[1..5].try_into().unwrap_or_default());
                reap_one(Pid::from_raw(pid))
            }
            _ => exit_now(2), // not the program talking: stop
        };
        drop(fds); // the worker has its copies
        let mut bytes = [0u8; 12];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(answer) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        if retry(|| socket::send(raw, &bytes, MsgFlags::MSG_NOSIGNAL)).is_err() {
            exit_now(0);
        }
    }
}

/// In the server: forks one worker. Answers `[0, pid, 0]` or `[1, errno, 0]`.
fn fork_one(channel: RawFd, memfd: &OwnedFd, bell: &OwnedFd, cap: Option<u64>) -> [i32; 3] {
    let server = nix::unistd::getpid();
    // SAFETY: the server has one thread, so the child inherits no lock held elsewhere. The
    // child never returns: it serves jobs and ends with `_exit`.
    match unsafe { fork::fork(|| ()) }.map(|((), f)| f) {
        Ok(ForkResult::Child) => {
            // SAFETY: the server's end of the socket; the worker must not hold it (only the
            // server reads it) and nothing in the worker uses it.
            unsafe { libc::close(channel) };
            if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
                || nix::unistd::getppid() != server
            {
                exit_now(1);
            }
            let Ok(region) = Region::attach(memfd.as_raw_fd()) else {
                exit_now(2);
            };
            // SAFETY: the region stays mapped without its descriptor, which nothing else in
            // this process owns or uses after this.
            unsafe { libc::close(memfd.as_raw_fd()) };
            serve_attached(region, bell.as_raw_fd(), cap)
        }
        Ok(ForkResult::Parent { child }) => [0, child.as_raw(), 0],
        Err(err) => [1, err.raw_os_error().unwrap_or(libc::EIO), 0],
    }
}

/// In the server: reaps its child `pid`. Answers `[0, code, 0]`, `[1, signal, 0]`, or
/// `[2, 0, 0]` when unknown.
fn reap_one(pid: Pid) -> [i32; 3] {
    if pid.as_raw() <= 0 {
        return [2, 0, 0];
    }
    match retry(|| waitpid(pid, None)) {
        Ok(WaitStatus::Exited(_, code)) => [0, code, 0],
        Ok(WaitStatus::Signaled(_, sig, _)) => [1, sig as i32, 0],
        _ => [2, 0, 0],
    }
}

/// Has the fork server fork a worker (the fork-server start method): a fork of the small
/// process `pool_core::init()` started, not of this one, attached to a new region (a memfd)
/// and to the pool's bell.
pub(crate) fn start_worker(bell: RawFd, memory_cap: Option<u64>) -> io::Result<WorkerProcess> {
    let (region, memfd) = Region::in_memfd()?;
    let slot = fork::with_fork_lock(|| RegionSlot::register(region.span()));
    // Registered, so that workers this process forks meanwhile close it.
    let memfd = ParentFd::new(memfd);
    let (pid, generation) = fork_worker(memfd.raw(), bell, memory_cap)?;
    drop(memfd); // the worker has its own copy now
                 // The server reaps the worker only when asked (below), so `pid` names it until then.
    let pidfd = match sys::pidfd_open(pid.as_raw()) {
        Ok(fd) => ParentFd::new(fd),
        Err(err) => {
            let _ = signal::kill(pid, Signal::SIGKILL);
            reap(pid, generation);
            return Err(err);
        }
    };
    Ok(WorkerProcess {
        pid,
        reaper: Reaper::Server {
            generation,
            reap: reap_by_server,
        },
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
    reap(pid, generation)
}
