//! Frozen shared objects: bytes written once into a memfd, sealed, then mapped read-only by
//! every process that receives a handle. [`SharedSlice`](super::SharedSlice) and `Shared` are
//! typed views of one of these.
//!
//! # Who owns what
//!
//! - **The creator** makes the memfd, writes a header and the payload, seals the file against
//!   writing, growing and shrinking (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK`, then
//!   `F_SEAL_SEAL`), and maps it read-only. Its [`Frozen`] owns the descriptor and the mapping;
//!   dropping the last handle in the creator closes and unmaps both. The file has no name
//!   anywhere (nothing in `/dev/shm`), and mode 0600.
//! - **A receiver** (a worker under any start method, a `Process`) that gets a handle over the
//!   wire and does not have the object yet opens `/proc/CREATOR/fd/N` read-only, checks that the
//!   file is sealed and that its header carries the handle's 128-bit token, maps it read-only
//!   and closes the descriptor. It *keeps* that mapping in its table ([`TABLE`], a strong
//!   reference), so every later task that receives a handle to the same object reuses it: one
//!   mapping per process, not one per task.
//! - **Release in receivers.** A kept mapping is dropped when no handle of the receiver uses it
//!   and the creator no longer holds the object (`/proc/CREATOR/fd/N` is gone or names another
//!   file). A worker checks this between jobs (at most every [`SWEEP_NS`]) and, while idle, on a
//!   timer ([`IDLE_SWEEP`]); so the memory is freed shortly after the creator drops its last
//!   handle, whether or not more jobs come. Other processes check whenever they receive a
//!   handle.
//! - **Fork.** A child forked while the object exists inherits its mapping and descriptor, as it
//!   inherits all memory; they go when the child exits. (Pool workers forked *before* the object
//!   was made hold nothing of it until a handle reaches them.) The table changes only under the
//!   crate's fork lock, so no child inherits it half-changed.
//! - **Death.** A process that dies at any instruction loses only its own mapping and
//!   descriptor; the kernel frees the memory with the last of them. If the creator dies, objects
//!   already mapped by receivers stay valid (they hold the pages); new receivers cannot open
//!   them and get an error naming the creator.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::start::with_fork_lock;
use crate::sys::{self, SharedMapping};

const MAGIC: u64 = 0x706f_6f6c_2d66_727a; // "pool-frz"
/// Bytes before the payload. The payload starts this far into a page-aligned mapping, so any
/// element type aligned to at most this many bytes is aligned in every process.
pub(crate) const HEADER: usize = 128;
/// How often, at most, a busy worker checks its kept mappings (ns).
pub(crate) const SWEEP_NS: u64 = 100_000_000;
/// How long an idle worker that keeps mappings sleeps before it checks them.
pub(crate) const IDLE_SWEEP: Duration = Duration::from_millis(250);

/// One frozen object mapped in this process.
pub(crate) struct Frozen {
    map: SharedMapping,
    token: u128,
    kind: u64,
    /// Payload bytes (the mapping is `HEADER` more).
    bytes: usize,
    /// The process that holds the descriptor others open, and its number there.
    home_pid: i32,
    home_fd: i32,
    /// The memfd's identity, to tell whether `/proc/HOME/fd/N` still names it.
    dev: u64,
    ino: u64,
    /// In the creator: the descriptor, kept open so receivers can open it.
    _fd: Option<OwnedFd>,
    /// The type a typed view has checked the payload as, in this process (archives are checked
    /// once per mapping, not per task).
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))]
    checked: OnceLock<TypeId>,
}

// The mapping is read-only in every process and the file is sealed against writes, so shared
// references to its bytes from any thread are sound; `SharedMapping` is already `Send + Sync`.

/// How a handle names a frozen object on the wire (tens of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrozenRef {
    token: u128,
    pid: i32,
    fd: i32,
    bytes: u64,
    kind: u64,
}

struct Entry {
    weak: Weak<Frozen>,
    /// Receivers keep what they opened, for the next task that receives it.
    keep: Option<Arc<Frozen>>,
}

/// token → this process's mapping. Changed only under the fork lock.
static TABLE: OnceLock<Mutex<HashMap<u128, Entry>>> = OnceLock::new();
/// How many entries of [`TABLE`] hold a kept mapping: the workers' fast "nothing to sweep".
static KEPT: AtomicUsize = AtomicUsize::new(0);
static LAST_SWEEP: AtomicU64 = AtomicU64::new(0);

fn table<T>(f: impl FnOnce(&mut HashMap<u128, Entry>) -> T) -> T {
    with_fork_lock(|| {
        let mut t = TABLE
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut t)
    })
}

fn new_memfd() -> io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns a new descriptor
    // or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"pool-core-shared".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Private to this user (a memfd starts as 0777).
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn header_bytes(token: u128, bytes: usize, kind: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    for (i, word) in [
        MAGIC,
        (token >> 64) as u64,
        token as u64,
        bytes as u64,
        kind,
    ]
    .into_iter()
    .enumerate()
    {
        h[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
    h
}

fn stat_fd(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat struct into a live local.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

const SEALS: libc::c_int = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;

impl Frozen {
    /// A new object of `bytes` payload bytes, written by `fill` into a zeroed writable mapping
    /// that is unmapped before the file is sealed.
    pub(crate) fn fill(
        kind: u64,
        checked: Option<TypeId>,
        bytes: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<Arc<Frozen>> {
        let fd = new_memfd()?;
        let total = HEADER + bytes;
        // SAFETY: ftruncate on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), total as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let token = sys::random_u128();
        {
            let draft = SharedMapping::from_fd(fd.as_raw_fd(), total)?;
            // SAFETY: the mapping is `total` bytes, writable, and only this function sees it
            // until it is unmapped at the end of this block (also when `fill` panics).
            let all = unsafe { std::slice::from_raw_parts_mut(draft.as_ptr(), total) };
            let (head, payload) = all.split_at_mut(HEADER);
            fill(payload);
            head.copy_from_slice(&header_bytes(token, bytes, kind));
        }
        Self::seal(fd, token, kind, bytes, checked)
    }

    /// A new object whose payload is what `write` writes (appended to the file as it comes:
    /// no second copy in memory).
    pub(crate) fn stream(
        kind: u64,
        checked: Option<TypeId>,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Arc<Frozen>> {
        let mut file = File::from(new_memfd()?);
        file.write_all(&[0u8; HEADER])?;
        write(&mut file)?;
        let total = file.metadata()?.len() as usize;
        let bytes = total - HEADER;
        let token = sys::random_u128();
        std::os::unix::fs::FileExt::write_all_at(&file, &header_bytes(token, bytes, kind), 0)?;
        Self::seal(OwnedFd::from(file), token, kind, bytes, checked)
    }

    /// Seals and maps a written object. `checked`: the type whose serializer wrote it, if a
    /// typed view must check the payload in other processes.
    fn seal(
        fd: OwnedFd,
        token: u128,
        kind: u64,
        bytes: usize,
        checked: Option<TypeId>,
    ) -> io::Result<Arc<Frozen>> {
        // SAFETY: fcntl on a descriptor we own; no writable mapping of it remains.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS | libc::F_SEAL_SEAL) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let map = SharedMapping::read_only(fd.as_raw_fd(), HEADER + bytes)?;
        let st = stat_fd(&fd)?;
        let frozen = Arc::new(Frozen {
            map,
            token,
            kind,
            bytes,
            home_pid: std::process::id() as i32,
            home_fd: fd.as_raw_fd(),
            dev: st.st_dev,
            ino: st.st_ino,
            _fd: Some(fd),
            checked: checked.map(OnceLock::from).unwrap_or_default(),
        });
        table(|t| {
            t.retain(|_, e| e.keep.is_some() || e.weak.strong_count() > 0);
            t.insert(
                token,
                Entry {
                    weak: Arc::downgrade(&frozen),
                    keep: None,
                },
            );
        });
        Ok(frozen)
    }

    /// The object `r` names: this process's mapping if it has one, else opened through the
    /// creator's descriptor and kept for later handles.
    pub(crate) fn resolve(r: &FrozenRef) -> io::Result<Arc<Frozen>> {
        // Processes that are not workers (a `Process`, the parent receiving a handle back)
        // have no job loop to sweep from: each handle they receive does it.
        sweep_if_due(sys::monotonic_ns());
        let found = table(|t| t.get(&r.token).and_then(|e| e.weak.upgrade()));
        let frozen = match found {
            Some(f) => f,
            None => Self::open(r)?,
        };
        if frozen.kind != r.kind || frozen.bytes as u64 != r.bytes {
            return Err(io::Error::other(
                "the handle does not match the shared object it names (another type or size)",
            ));
        }
        Ok(frozen)
    }

    fn open(r: &FrozenRef) -> io::Result<Arc<Frozen>> {
        let path = format!("/proc/{}/fd/{}\0", r.pid, r.fd);
        // SAFETY: `path` is NUL-terminated; open returns a new descriptor or -1.
        let raw = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "cannot open the shared data: its creator (pid {}) no longer holds it \
                     ({err}); keep a handle in the creating process while others receive theirs",
                    r.pid
                ),
            ));
        }
        // SAFETY: `raw` was just returned by open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let wrong = || {
            io::Error::other(
                "the descriptor no longer holds the shared data (its creator dropped it and the \
                 number was reused)",
            )
        };
        let st = stat_fd(&fd)?;
        // SAFETY: fcntl F_GET_SEALS only reads the file's seals.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let total = HEADER as u64 + r.bytes;
        if seals < 0 || seals & SEALS != SEALS || st.st_size as u64 != total {
            return Err(wrong());
        }
        let map = SharedMapping::read_only(fd.as_raw_fd(), total as usize)?;
        // SAFETY: the mapping is at least HEADER bytes long and sealed: nobody writes it.
        let head = unsafe { std::slice::from_raw_parts(map.as_ptr(), HEADER) };
        if head[..HEADER] != header_bytes(r.token, r.bytes as usize, r.kind) {
            return Err(wrong());
        }
        let frozen = Arc::new(Frozen {
            map,
            token: r.token,
            kind: r.kind,
            bytes: r.bytes as usize,
            home_pid: r.pid,
            home_fd: r.fd,
            dev: st.st_dev,
            ino: st.st_ino,
            _fd: None,
            checked: OnceLock::new(),
        });
        Ok(table(|t| {
            // Another thread may have opened it meanwhile: keep one mapping.
            if let Some(existing) = t.get(&r.token).and_then(|e| e.weak.upgrade()) {
                return existing;
            }
            let old = t.insert(
                r.token,
                Entry {
                    weak: Arc::downgrade(&frozen),
                    keep: Some(frozen.clone()),
                },
            );
            if old.is_none_or(|e| e.keep.is_none()) {
                KEPT.fetch_add(1, Ordering::Relaxed);
            }
            frozen
        }))
    }

    /// How to name this object on the wire.
    pub(crate) fn reference(&self) -> FrozenRef {
        FrozenRef {
            token: self.token,
            pid: self.home_pid,
            fd: self.home_fd,
            bytes: self.bytes as u64,
            kind: self.kind,
        }
    }

    /// What the object holds (the typed view that made it).
    pub(crate) fn kind(&self) -> u64 {
        self.kind
    }

    /// The payload, read-only, `HEADER` bytes into a page-aligned mapping.
    pub(crate) fn payload(&self) -> &[u8] {
        // SAFETY: the mapping is HEADER + bytes long, read-only and sealed, and lives as long
        // as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(HEADER), self.bytes) }
    }

    /// Runs `check` on the payload as type `as_type`, once per mapping in this process: later
    /// calls for the same type succeed at once. (The creator's object counts as checked as the
    /// type that wrote it.)
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))]
    pub(crate) fn check_once(
        &self,
        as_type: TypeId,
        check: impl FnOnce(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.checked.get() == Some(&as_type) {
            return Ok(());
        }
        check(self.payload())?;
        let _ = self.checked.set(as_type);
        Ok(())
    }

    /// Whether the process this object's handles point at still holds it.
    fn home_holds_it(&self) -> bool {
        let path = format!("/proc/{}/fd/{}", self.home_pid, self.home_fd);
        match std::fs::metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                m.dev() == self.dev && m.ino() == self.ino
            }
            Err(_) => false,
        }
    }
}

/// Whether this process keeps mappings it opened (so an idle worker should wake to sweep).
pub(crate) fn keeps_any() -> bool {
    KEPT.load(Ordering::Relaxed) > 0
}

/// [`sweep`] if this process keeps anything and the last sweep was [`SWEEP_NS`] before `now`
/// (monotonic ns). One atomic load when nothing is kept.
#[inline]
pub(crate) fn sweep_if_due(now: u64) {
    if keeps_any() && now.saturating_sub(LAST_SWEEP.load(Ordering::Relaxed)) >= SWEEP_NS {
        sweep();
    }
}

/// Drops the kept mappings that no handle in this process uses and whose creator no longer
/// holds the object. Returns how many were dropped.
///
/// Sound because a kept entry with a strong count of one is referenced by the table alone, and
/// handles are only made from the table under its lock.
pub(crate) fn sweep() -> usize {
    LAST_SWEEP.store(sys::monotonic_ns(), Ordering::Relaxed);
    let idle: Vec<Arc<Frozen>> = table(|t| {
        t.values()
            .filter_map(|e| e.keep.as_ref())
            .filter(|k| Arc::strong_count(k) == 1)
            .cloned()
            .collect()
    });
    let stale: Vec<u128> = idle
        .iter()
        .filter(|f| !f.home_holds_it())
        .map(|f| f.token)
        .collect();
    drop(idle);
    let dropped: Vec<Arc<Frozen>> = table(|t| {
        let mut dropped = Vec::new();
        for token in &stale {
            let idle = t
                .get(token)
                .and_then(|e| e.keep.as_ref())
                .is_some_and(|k| Arc::strong_count(k) == 1);
            if idle {
                if let Some(k) = t.remove(token).and_then(|e| e.keep) {
                    KEPT.fetch_sub(1, Ordering::Relaxed);
                    dropped.push(k);
                }
            }
        }
        dropped
    });
    // Unmapped here, outside the lock.
    dropped.len()
}

impl fmt::Debug for Frozen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frozen")
            .field("bytes", &self.bytes)
            .field("creator", &self.home_pid)
            .finish_non_exhaustive()
    }
}
