//! [`SharedMemory`]: raw named segments in `/dev/shm` (Python's
//! `multiprocessing.shared_memory.SharedMemory`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sys::SharedMapping;
use crate::Error;

struct Inner {
    name: String,
    map: SharedMapping,
    /// Created (not opened) by this process: the name is removed when the last handle here
    /// is dropped.
    created: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.created {
            let _ = nix::sys::mman::shm_unlink(self.name.as_str());
        }
    }
}

/// A named block of shared memory that any process of the same user can open by name.
///
/// Created with mode 0600 (private to the user). The process that created it removes the name
/// when its last handle is dropped ([`unlink`](Self::unlink) does it at once); processes that
/// have it open keep their mapping. Handles can be cloned and passed to a child as a task
/// argument (they travel as the name).
///
/// The bytes are shared with other processes without any lock: use [`read`](Self::read) and
/// [`write`](Self::write), and a [`Lock`](crate::Lock) when several processes write.
///
/// # Examples
///
/// ```
/// use pool_core::SharedMemory;
///
/// let name = format!("/pool-core-doc-{}", std::process::id());
/// let a = SharedMemory::create(&name, 4096)?;
/// a.write(0, b"hello");
/// let b = SharedMemory::open(&name)?;
/// let mut buf = [0u8; 5];
/// b.read(0, &mut buf);
/// assert_eq!(&buf, b"hello");
/// assert_eq!(b.len(), 4096);
/// drop((a, b)); // the creator's last handle: the name is gone
/// assert!(SharedMemory::open(&name).is_err());
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    inner: Arc<Inner>,
}

fn normalize(name: &str) -> String {
    if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/{name}")
    }
}

impl SharedMemory {
    /// Creates a new segment of `size` zeroed bytes; fails if the name exists, and with
    /// [`Error::Config`] if `size` is 0 (as Python's `SharedMemory` raises `ValueError`).
    pub fn create(name: &str, size: usize) -> Result<SharedMemory, Error> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        if size == 0 {
            // As Python's `SharedMemory(create=True, size=0)`: a block must hold something.
            return Err(Error::Config(
                "a shared memory block needs a size of at least one byte".into(),
            ));
        }
        let name = normalize(name);
        let fd = nix::sys::mman::shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| Error::shared(std::io::Error::from(e)))?;
        let setup = nix::unistd::ftruncate(&fd, size as libc::off_t)
            .map_err(|e| Error::shared(std::io::Error::from(e)))
            .and_then(|()| {
                use std::os::fd::AsRawFd;
                SharedMapping::from_fd(fd.as_raw_fd(), size).map_err(Error::shared)
            });
        match setup {
            Ok(map) => Ok(SharedMemory {
                inner: Arc::new(Inner {
                    name,
                    map,
                    created: true,
                }),
            }),
            Err(e) => {
                let _ = nix::sys::mman::shm_unlink(name.as_str());
                Err(e)
            }
        }
    }

    /// Opens an existing segment by name.
    pub fn open(name: &str) -> Result<SharedMemory, Error> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        use std::os::fd::AsRawFd;
        let name = normalize(name);
        let fd = nix::sys::mman::shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty())
            .map_err(|e| Error::shared(std::io::Error::from(e)))?;
        let size = nix::sys::stat::fstat(&fd)
            .map_err(|e| Error::shared(std::io::Error::from(e)))?
            .st_size as usize;
        let map = SharedMapping::from_fd(fd.as_raw_fd(), size).map_err(Error::shared)?;
        Ok(SharedMemory {
            inner: Arc::new(Inner {
                name,
                map,
                created: false,
            }),
        })
    }

    /// Removes the name now (processes that have the segment open keep it).
    pub fn unlink(&self) -> Result<(), Error> {
        nix::sys::mman::shm_unlink(self.inner.name.as_str())
            .map_err(|e| Error::shared(std::io::Error::from(e)))
    }

    /// Its name, with the leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether it is empty (never: a segment has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`. Panics if out of range.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(
            offset.saturating_add(buf.len()) <= self.len(),
            "read out of range"
        );
        // SAFETY: the range is inside the mapping (checked above); other processes may write
        // these bytes concurrently, which can only make the copy see mixed old and new bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.inner.map.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// Copies `data` to `offset`. Panics if out of range.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset.saturating_add(data.len()) <= self.len(),
            "write out of range"
        );
        // SAFETY: as in `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.inner.map.as_ptr().add(offset),
                data.len(),
            )
        }
    }

    /// The start of the mapping, for code that needs raw access (e.g. to place its own
    /// atomics). Valid while any clone of this handle lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.map.as_ptr()
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.inner.name)
            .field("len", &self.len())
            .finish()
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.inner.name.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        SharedMemory::open(&name).map_err(serde::de::Error::custom)
    }
}
