//! Shared segments behind the multiprocessing primitives, and how their handles travel.
//!
//! # Who owns what
//!
//! - A segment is a memfd, created by one process (its *creator*), mapped by every process that
//!   uses it. It has no name in any file system: nothing is ever left in `/dev/shm`, and its
//!   memory is freed when the last process unmaps it.
//! - The creator keeps the memfd's descriptor open while it holds a handle. A process that
//!   receives a handle over the wire (a task's argument, a queue item) and does not have the
//!   segment yet opens it as `/proc/CREATOR/fd/N` (the same user may), checks the 128-bit token
//!   in the segment's header, and maps it. So the creator must hold a handle until every other
//!   process has opened the segment; processes forked from one that has it inherit the mapping.
//! - Each process keeps a table (token → mapping), so a handle deserialized twice, or in a
//!   process forked from one that has the segment, maps nothing new. The table changes only under
//!   the crate's fork lock, so no child is forked with it half-changed.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use serde::{Deserialize, Serialize};

use crate::start::with_fork_lock;
use crate::sys::{self, SharedMapping};

const MAGIC: u64 = 0x706f_6f6c_2d6d_7031; // "pool-mp1"
/// Bytes before the payload: the header, padded to a cache line pair.
pub(crate) const HEADER: usize = 128;

/// The first bytes of every segment.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    token_hi: AtomicU64,
    token_lo: AtomicU64,
    len: AtomicU64,
    kind: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER);

/// One mapped segment in this process.
pub(crate) struct Segment {
    map: SharedMapping,
    token: u128,
    kind: u64,
    /// In the creator: the memfd, kept open so other processes can open it.
    fd: Option<OwnedFd>,
    creator: i32,
}

/// How a handle names its segment on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentRef {
    creator: i32,
    fd: i32,
    len: u64,
    token: u128,
    kind: u64,
}

impl SegmentRef {
    pub(crate) fn kind(&self) -> u64 {
        self.kind
    }
}

fn table() -> &'static Mutex<HashMap<u128, Weak<Segment>>> {
    static TABLE: OnceLock<Mutex<HashMap<u128, Weak<Segment>>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Segment {
    /// A new zeroed segment with `payload` bytes after the header, of kind `kind` (which
    /// primitive it holds, checked on open).
    pub(crate) fn create(payload: usize, kind: u64) -> io::Result<Arc<Segment>> {
        let len = HEADER + payload;
        let fd = sys::memfd(len)?;
        let map = SharedMapping::from_fd(fd.as_raw_fd(), len)?;
        let token = sys::random_u128();
        let seg = Segment {
            map,
            token,
            kind,
            fd: Some(fd),
            creator: std::process::id() as i32,
        };
        let h = seg.header();
        h.token_hi.store((token >> 64) as u64, Ordering::Relaxed);
        h.token_lo.store(token as u64, Ordering::Relaxed);
        h.len.store(len as u64, Ordering::Relaxed);
        h.kind.store(kind, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        let seg = Arc::new(seg);
        with_fork_lock(|| {
            let mut t = table().lock().unwrap_or_else(PoisonError::into_inner);
            t.retain(|_, w| w.strong_count() > 0);
            t.insert(token, Arc::downgrade(&seg));
        });
        Ok(seg)
    }

    /// The segment `r` names: this process's mapping if it has one, else opened through the
    /// creator's descriptor.
    pub(crate) fn open(r: &SegmentRef) -> io::Result<Arc<Segment>> {
        let found = with_fork_lock(|| {
            table()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&r.token)
                .and_then(Weak::upgrade)
        });
        if let Some(seg) = found {
            return Ok(seg);
        }
        let path = format!("/proc/{}/fd/{}\0", r.creator, r.fd);
        // SAFETY: `path` is NUL-terminated; open returns a new descriptor or -1.
        let raw = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "cannot open the shared object: its creator (pid {}) no longer holds it \
                     ({err}); keep a handle in the creating process until every process has \
                     received its own",
                    r.creator
                ),
            ));
        }
        // SAFETY: `raw` was just returned by open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: fstat writes one stat struct into a live local.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 || (st.st_size as u64) < r.len {
            return Err(io::Error::other(
                "the shared object is not the expected size",
            ));
        }
        let map = SharedMapping::from_fd(fd.as_raw_fd(), r.len as usize)?;
        let seg = Segment {
            map,
            token: r.token,
            kind: r.kind,
            fd: None,
            creator: r.creator,
        };
        let h = seg.header();
        let token = (u128::from(h.token_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(h.token_lo.load(Ordering::Relaxed));
        if h.magic.load(Ordering::Acquire) != MAGIC
            || token != r.token
            || h.kind.load(Ordering::Relaxed) != r.kind
        {
            return Err(io::Error::other(
                "the descriptor no longer holds the shared object (its creator exited and the \
                 number was reused)",
            ));
        }
        let seg = Arc::new(seg);
        Ok(with_fork_lock(|| {
            let mut t = table().lock().unwrap_or_else(PoisonError::into_inner);
            // Another thread may have opened it meanwhile: keep one mapping.
            if let Some(existing) = t.get(&r.token).and_then(Weak::upgrade) {
                return existing;
            }
            t.insert(r.token, Arc::downgrade(&seg));
            seg
        }))
    }

    /// The segment's identity, the same in every process that maps it.
    pub(crate) fn token(&self) -> u128 {
        self.token
    }

    /// How to name this segment on the wire.
    pub(crate) fn reference(&self) -> SegmentRef {
        let (creator, fd) = match &self.fd {
            // The creator, or a process forked from it, which holds a copy of the descriptor
            // under the same number. Point at the creator while it still holds it (it usually
            // lives longest), else at this process.
            Some(fd) => {
                let n = fd.as_raw_fd();
                let creator_has_it = self.creator == std::process::id() as i32
                    || std::path::Path::new(&format!("/proc/{}/fd/{n}", self.creator)).exists();
                if creator_has_it {
                    (self.creator, n)
                } else {
                    (std::process::id() as i32, n)
                }
            }
            // A process that opened the segment from a reference: pass the reference on.
            None => (self.creator, self.creator_fd()),
        };
        SegmentRef {
            creator,
            fd,
            len: self.map.len() as u64,
            token: self.token,
            kind: self.kind,
        }
    }

    fn creator_fd(&self) -> i32 {
        CREATOR_FDS
            .get()
            .and_then(|m| {
                m.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&self.token)
                    .copied()
            })
            .unwrap_or(-1)
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER bytes, page-aligned, and `Header` is atomics
        // only, valid for any bytes (zero when new).
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// The payload: `len() - HEADER` bytes, shared with every process that maps the segment.
    pub(crate) fn payload(&self) -> *mut u8 {
        // SAFETY: HEADER is within the mapping.
        unsafe { self.map.as_ptr().add(HEADER) }
    }

    pub(crate) fn payload_len(&self) -> usize {
        self.map.len() - HEADER
    }
}

/// The creator's descriptor number of segments this process opened from a reference, so it
/// can pass the same reference on.
static CREATOR_FDS: OnceLock<Mutex<HashMap<u128, i32>>> = OnceLock::new();

/// Opens `r` and remembers its creator's descriptor for [`Segment::reference`].
pub(crate) fn open_ref(r: &SegmentRef) -> io::Result<Arc<Segment>> {
    let seg = Segment::open(r)?;
    if seg.fd.is_none() {
        with_fork_lock(|| {
            CREATOR_FDS
                .get_or_init(|| Mutex::new(HashMap::new()))
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(r.token, r.fd)
        });
    }
    Ok(seg)
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: `stat` is plain integers, for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("len", &self.map.len())
            .field("creator", &self.creator)
            .finish_non_exhaustive()
    }
}
