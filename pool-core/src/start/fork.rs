//! The one place this crate forks, and what a forked child inherits and must put right first.
//!
//! # Who owns what
//!
//! - Two tables list what only the process that made them may use: descriptors (pidfds, pools'
//!   bells, the fork server's socket) and workers' shared regions. A child forked by this crate
//!   drops everything listed but what it keeps ([`release_inherited`]) before anything reads the
//!   tables, and clears those entries, so the tables are true in every process.
//! - Registration in the tables and every fork of this crate happen under one lock
//!   ([`FORK_LOCK`]), so each child's view of the tables is whole.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::unistd::ForkResult;

use crate::transport::region::Region;

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
pub(crate) struct RegionSlot(Option<usize>);

impl RegionSlot {
    /// Call with the fork lock held.
    pub(crate) fn register((addr, len): (usize, usize)) -> Self {
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

/// Forks this process: the one call of `fork` in this crate (workers, the fork server and its
/// workers, [`Process`](crate::Process)). `prepare` runs with the fork lock held, just before
/// the fork (to list the child's region, say), so the child inherits the tables whole and no
/// other thread of this crate is half-way through changing them.
///
/// # Safety
///
/// The child of a multi-threaded program may rely only on state no other thread was changing
/// at the fork: until it calls `exec` or [`exit_now`], it must not take a lock another thread
/// may have held (glibc makes `malloc` safe), and it must end with [`exit_now`], never by
/// returning into the parent's code, so that no destructor or `atexit` handler runs twice. It
/// calls [`release_inherited`] before anything reads the tables.
pub(crate) unsafe fn fork<T>(prepare: impl FnOnce() -> T) -> io::Result<(T, ForkResult)> {
    let lock = FORK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let prepared = prepare();
    // SAFETY: the caller upholds this function's contract for the child.
    let forked = unsafe { nix::unistd::fork() };
    // In the child this releases its copy of the lock, which this thread took: sound, and the
    // child may take it again.
    drop(lock);
    Ok((prepared, forked.map_err(io::Error::from)?))
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
pub(crate) fn list_own(region: &Region, bell: RawFd) {
    // Both stay listed for the worker's life: it never returns.
    std::mem::forget(RegionSlot::register(region.span()));
    let _ = PARENT_FDS.iter().any(|s| {
        s.compare_exchange(-1, bell, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    });
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
