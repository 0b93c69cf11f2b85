//! Starting worker processes, by every start method, and reaping them.
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
//!
//! The layout, so that nothing here imports in a circle: [`fork`] (the one `fork` call and the
//! inherited tables) and [`process`] (a worker as the parent sees it) at the bottom; [`attach`]
//! (what a worker does before its loop) on them; the three start methods — [`forked`],
//! [`spawned`], [`forkserver`] — on those; and this module, which picks one.

pub(crate) mod attach;
pub(crate) mod fork;
pub(crate) mod forked;
pub(crate) mod forkserver;
mod method;
pub(crate) mod process;
pub(crate) mod spawned;

use std::io;
use std::os::fd::RawFd;

pub(crate) use fork::{exit_now, with_fork_lock, ParentFd};
pub(crate) use process::WorkerProcess;

pub use method::StartMethod;

/// Starts a worker by `method` that serves a new region and rings `bell` (its pool's eventfd)
/// when the parent sleeps, with its address space capped at `memory_cap` more than it starts
/// with. The calling thread must stay alive until the worker is reaped (its parent-death
/// signal is tied to that thread).
pub(crate) fn start_worker(
    method: StartMethod,
    bell: RawFd,
    memory_cap: Option<u64>,
) -> io::Result<WorkerProcess> {
    match method {
        StartMethod::Fork => forked::fork_worker(bell, memory_cap),
        StartMethod::Spawn => spawned::spawn_worker(bell, memory_cap),
        StartMethod::ForkServer => forkserver::start_worker(bell, memory_cap),
    }
}
