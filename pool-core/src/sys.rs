//! Thin wrappers over the few Linux calls that neither std nor nix offers in the form needed:
//! futexes on shared memory, eventfds, pidfds, and shared anonymous mappings.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

/// Sleeps while `*word == expected`, until [`futex_wake`] on the same word (from any process
/// that maps it) or a spurious wake-up. Callers re-check their condition in a loop.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32) {
    futex_wait_timeout(word, expected, None)
}

/// [`futex_wait`] for at most `timeout` (`None`: no limit). Returns early on a wake-up, a
/// spurious wake-up, a signal, or when the word already differs.
pub(crate) fn futex_wait_timeout(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<std::time::Duration>,
) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the 32-bit word at a valid, aligned address (a live reference),
    // compares it with `expected`, and sleeps; it writes nothing. The timeout, when given,
    // points to a live local timespec (relative time, as FUTEX_WAIT takes it). Not
    // FUTEX_PRIVATE: the word lives in memory shared with other processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes at most one process sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake_one(word: &AtomicU32) {
    // SAFETY: as in `futex_wake`.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

/// Wakes every process sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key to find waiters; it is valid and aligned.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a time the
/// worker writes can be compared with a time the parent reads.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, making it readable.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to a descriptor; a full or closed eventfd makes
    // the call fail harmlessly (the counter is already non-zero, or nobody listens).
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// Resets an eventfd's counter.
pub(crate) fn eventfd_drain(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local; non-blocking, so it returns at once.
    unsafe {
        libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8);
    }
}

/// Opens a pidfd for `pid`: a descriptor that becomes readable when the process exits.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just returned to us and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The wait status (as `waitpid` gives it) of the process behind `pidfd` once it has exited,
/// from the kernel's pidfd information (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`, Linux 6.15 and
/// later); `None` on older kernels or while the process runs. Unlike `waitpid`, this works
/// after someone else reaped the process (the kernel, when the program ignores SIGCHLD).
pub(crate) fn pidfd_exit_status(pidfd: &OwnedFd) -> Option<i32> {
    /// `struct pidfd_info` of `<linux/pidfd.h>`, as of its first version (64 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        ids: [u32; 11],
        exit_code: i32,
    }
    const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    // _IOWR(0xFF, 11, struct pidfd_info): read-write, 64 bytes, type 0xFF, number 11.
    const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl reads and writes at most 64 bytes (the size in its number) of a live,
    // properly aligned local; an unknown request fails with an error and writes nothing.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    (r == 0 && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
}

/// 128 random bits from the kernel (or, if it cannot give them, the clock, pid and an
/// address mixed): tokens that name shared objects.
pub(crate) fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the live local buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = monotonic_ns() as u128;
        bytes = (t ^ (u128::from(std::process::id()) << 64) ^ (&bytes as *const _ as u128))
            .to_le_bytes();
    }
    u128::from_le_bytes(bytes)
}

/// A shared anonymous mapping: the same physical pages in this process and in every child
/// forked while it is mapped. Unmapped on drop (in the process that drops it).
#[derive(Debug)]
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; all access to its contents goes through atomics or
// through the ring protocol, whose safety is argued in `ring`.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

/// A close-on-exec memfd of `len` zeroed bytes: shared memory that can be handed to a process
/// that is not forked from this one (the spawn start method).
pub(crate) fn memfd(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns a new descriptor
    // or -1.
    let fd = unsafe { libc::memfd_create(c"pool-core-region".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

impl SharedMapping {
    /// Maps `len` bytes of the shared-memory file `fd`.
    pub(crate) fn from_fd(fd: RawFd, len: usize) -> io::Result<Self> {
        Self::map_file(fd, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// Maps `len` bytes of the file `fd` read-only: a write through the mapping faults, and
    /// `mprotect` cannot make it writable when the descriptor was opened read-only or the file
    /// is sealed against writes.
    pub(crate) fn read_only(fd: RawFd, len: usize) -> io::Result<Self> {
        Self::map_file(fd, len, libc::PROT_READ)
    }

    fn map_file(fd: RawFd, len: usize, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: a shared mapping of a file at an address of the kernel's choosing aliases no
        // memory of ours; the file is at least `len` bytes long (the caller made it so).
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedMapping { ptr, len })
    }

    /// Maps `len` zeroed bytes, shared with children forked later.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous mapping at an address of the kernel's choosing aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedMapping { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `new` with this length, and every reference into it
        // is tied to the lifetime of this value.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Faults in, with one system call, the whole pages under the next `items` slots of `buf`'s
/// unused capacity, which are about to be written one by one. For a large fresh output vector
/// that saves a trap per 4 KiB page (in a `map` of 40 M `u64`, page faults took half of the
/// caller's time; with this, the map ran about 10% faster here). Best effort: before Linux
/// 5.14 (no `MADV_POPULATE_WRITE`) nothing happens and the writes fault the pages in as usual.
pub(crate) fn prefault<T>(buf: &mut Vec<T>, items: usize) {
    const PAGE: usize = 4096;
    let spare = buf.spare_capacity_mut();
    let items = items.min(spare.len());
    let spare = &mut spare[..items];
    let from = spare.as_mut_ptr() as usize;
    let to = from + std::mem::size_of_val(spare);
    // Whole pages only: the partial ones at either end are faulted in by the writes.
    let start = from.next_multiple_of(PAGE);
    let end = to / PAGE * PAGE;
    if end <= start {
        return;
    }
    let Some(addr) = NonNull::new(start as *mut libc::c_void) else {
        return;
    };
    // SAFETY: `[start, end)` lies inside the vector's allocation, which this process has mapped
    // readable and writable; MADV_POPULATE_WRITE faults the pages in as a write would, without
    // changing what they hold or who may access them.
    let _ = unsafe {
        nix::sys::mman::madvise(
            addr,
            end - start,
            nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE,
        )
    };
}
