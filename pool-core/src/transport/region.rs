//! The shared-memory region of one worker: a ring for jobs (parent → worker), a ring for
//! results (worker → parent), and a few counters.
//!
//! Each worker has its own region, mapped by the parent just before it forks that worker, and
//! unmapped in every other worker (see `start::fork`). So a worker that dies at any instruction, or
//! scribbles over its memory, can only damage its own region, which the parent discards with it.

use std::io;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::sys::{self, SharedMapping};
use crate::transport::spsc_ring::{Padded, RingCtl, SpscRing};

/// Bytes of each ring. Frames larger than this stream through in pieces.
const RING_CAPACITY: usize = 4 << 20;
/// Where the rings' data starts; the header fits before it.
const DATA_OFFSET: usize = 4096;
/// The size of a region.
const LEN: usize = DATA_OFFSET + 2 * RING_CAPACITY;

/// The region's control block, at its start.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Header {
    job: RingCtl,
    result: RingCtl,
    /// Jobs the worker has read in full and begun; written only by the worker.
    pub(crate) jobs_started: Padded<AtomicU64>,
    /// Nanoseconds the worker has spent running jobs; written only by the worker.
    pub(crate) busy_ns: AtomicU64,
    /// When the worker began its current job (`sys::monotonic_ns`); written only by the worker,
    /// before it counts the job in `jobs_started`.
    pub(crate) job_started_ns: AtomicU64,
    /// The worker's resident memory in bytes, sampled after jobs (at most every 10 ms);
    /// written only by the worker.
    pub(crate) rss_bytes: AtomicU64,
    /// Raised by the parent before it sleeps; the worker rings the pool's bell when it sees it.
    parent_waiting: Padded<AtomicU32>,
    /// Set by a spawned worker once it has attached: the sign that its binary called
    /// `pool_core::init()`.
    pub(crate) attached: AtomicU32,
    /// `seq + 1` of the job the parent asks to stop (cancelled, or past its soft time limit),
    /// where `seq` counts the jobs this worker has begun (its `jobs_started` before the job);
    /// 0: none. Written only by the parent; the worker's `pool_core::cancelled()` and its stop
    /// signal handler read it (see `cancel`).
    pub(crate) stop: Padded<AtomicU64>,
    /// The index of the item of the running job that the worker is running (all before it are
    /// done); written only by the worker, as it takes each item. Read by the parent when the
    /// worker dies, to fail that item alone (see `driver::split`).
    pub(crate) item: Padded<AtomicU64>,
    /// Jobs sent but not begun that must not run: slot `seq % SKIP_SLOTS` holds `seq + 1`.
    /// Written only by the parent; the worker reads its slot as it begins each job.
    pub(crate) skip: [AtomicU64; SKIP_SLOTS],
}

/// How many cancelled-but-not-begun jobs a worker can be told to skip at once; with more in
/// flight at one worker, a later one may run anyway (its result is then thrown away).
pub(crate) const SKIP_SLOTS: usize = 32;

const _: () = assert!(std::mem::size_of::<Header>() <= DATA_OFFSET);

/// One worker's region.
#[derive(Debug)]
pub(crate) struct Region {
    // Field order: the rings point into the mapping, which is dropped last.
    job: SpscRing,
    result: SpscRing,
    map: SharedMapping,
}

impl Region {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self::over(SharedMapping::new(LEN)?))
    }

    /// A region in a new memfd, for a worker that is spawned rather than forked.
    pub(crate) fn in_memfd() -> io::Result<(Self, std::os::fd::OwnedFd)> {
        use std::os::fd::AsRawFd;
        let fd = sys::memfd(LEN)?;
        let region = Self::over(SharedMapping::from_fd(fd.as_raw_fd(), LEN)?);
        Ok((region, fd))
    }

    /// The region in the memfd `fd`, in the spawned worker.
    pub(crate) fn attach(fd: i32) -> io::Result<Self> {
        Ok(Self::over(SharedMapping::from_fd(fd, LEN)?))
    }

    fn over(map: SharedMapping) -> Self {
        let base = map.as_ptr();
        let header = base.cast::<Header>();
        // SAFETY: the mapping is `LEN` bytes, zero-filled when new (a valid `Header`: atomics
        // and integers) or a live region another process set up the same way, and
        // page-aligned, which satisfies the header's alignment. The rings point to their
        // control blocks in the header and to disjoint data areas after it, all inside the
        // mapping, which lives as long as the rings (field order above).
        unsafe {
            let job = SpscRing::new(
                std::ptr::addr_of!((*header).job),
                base.add(DATA_OFFSET),
                RING_CAPACITY,
            );
            let result = SpscRing::new(
                std::ptr::addr_of!((*header).result),
                base.add(DATA_OFFSET + RING_CAPACITY),
                RING_CAPACITY,
            );
            Region { job, result, map }
        }
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the header is initialized (zeroed) and lives as long as `self.map`.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Parent → worker.
    pub(crate) fn jobs(&self) -> &SpscRing {
        &self.job
    }

    /// Worker → parent.
    pub(crate) fn results(&self) -> &SpscRing {
        &self.result
    }

    /// The mapping's address and length, for the fork-time cleanup in other workers.
    pub(crate) fn span(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }

    // --- the parent's sleep protocol ---------------------------------------------------------

    /// Parent, before sleeping: asks the worker to ring the bell on its next progress.
    pub(crate) fn parent_will_sleep(&self) {
        self.header().parent_waiting.0.store(1, Ordering::SeqCst);
    }

    /// Worker, after writing results or freeing job space: rings `bell` if the parent sleeps.
    pub(crate) fn poke_parent(&self, bell: &Bell) {
        fence(Ordering::SeqCst);
        let flag = &self.header().parent_waiting.0;
        if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::SeqCst) != 0 {
            bell.ring();
        }
    }
}

/// The worker's end of the pool's bell (an eventfd), held by descriptor number.
///
/// A task runs in the worker's process and may close any descriptor — the bell too — and then
/// open something else that gets the same number. Ringing must then neither write into the
/// task's file nor fail unnoticed (the parent would sleep with a result waiting for it). So
/// a ring first checks that the number still names an eventfd-like object of the device and
/// inode the bell had (one `fstat`, only on this slow path: the parent sleeps), and a lost bell
/// makes the worker exit once its job is answered ([`EXIT_BELL_LOST`]): the parent learns of
/// the exit from the worker's pidfd, takes the answer, and starts a new worker. The parent
/// also never sleeps longer than a bounded time while jobs are out, so a ring that went
/// astray costs time, never a hang.
#[derive(Debug)]
pub(crate) struct Bell {
    fd: i32,
    identity: Option<(u64, u64)>,
    lost: std::cell::Cell<bool>,
}

/// A worker's exit code when a task closed or replaced its bell (see [`Bell`]): the worker
/// answered its job and exited. Not a failure of the pool (the restart guard ignores it).
pub(crate) const EXIT_BELL_LOST: i32 = 75;

impl Bell {
    pub(crate) fn new(fd: i32) -> Self {
        let identity = Self::identity_of(fd);
        Bell {
            fd,
            lost: std::cell::Cell::new(identity.is_none()),
            identity,
        }
    }

    /// The device and inode behind `fd`, if it is an anonymous inode (eventfds are: their mode
    /// has no file-type bits).
    fn identity_of(fd: i32) -> Option<(u64, u64)> {
        // SAFETY: `stat` is plain integers, for which all-zero bytes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one stat struct into a live local; a bad descriptor fails.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != 0 {
            return None;
        }
        Some((st.st_dev, st.st_ino))
    }

    /// Rings the bell if it is still the bell; otherwise marks it lost.
    fn ring(&self) {
        if self.lost.get() || Self::identity_of(self.fd) != self.identity {
            self.lost.set(true);
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to a descriptor checked just above to be an
        // anonymous inode (the bell); a full eventfd makes the call fail harmlessly.
        let n = unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
            self.lost.set(true);
        }
    }

    /// Whether a task closed or replaced the bell.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.get()
    }
}
