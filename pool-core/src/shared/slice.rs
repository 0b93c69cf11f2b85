//! [`SharedSlice`]: a read-only slice of plain data that every worker sees without a copy.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, Deref, Range, RangeBounds};
use std::sync::Arc;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::frozen::{Frozen, FrozenRef, HEADER};
use crate::Error;

/// A read-only slice of plain-old-data values in shared memory, built once and then seen by
/// the parent and by every worker without a copy.
///
/// Build it from a `Vec`, a slice, an iterator or a closure that fills it; after that it is
/// frozen: the memory is sealed against writes, and every process maps it read-only. It
/// dereferences to `&[T]` everywhere.
///
/// As a task argument it travels as a small handle (about 50 bytes), under every
/// [`StartMethod`](crate::StartMethod): a worker maps the data the first time a handle reaches
/// it and reuses that mapping for every later task (one `mmap` per worker, not per task). A
/// handle to part of the data ([`slice`](Self::slice), [`chunks_of`](Self::chunks_of)) is a
/// valid argument too, so a map over windows of a large dataset sends no data at all.
///
/// # Lifetime
///
/// The memory has no name in any file system (nothing in `/dev/shm`) and mode 0600. It is
/// freed when the last handle in the creating program is dropped: the creator closes and
/// unmaps it at once, and each worker drops its mapping at its next job or within a quarter of
/// a second when idle. Workers forked *after* the data was built inherit its mapping, as they
/// inherit all memory, and release it when they exit. The creating process must hold a handle
/// while it sends handles to others (a worker that receives a handle after the creator dropped
/// the data gets an argument error naming the creator, never other memory).
///
/// # Examples
///
/// ```
/// use pool_core::{task, Pool, SharedSlice};
///
/// #[task]
/// fn sum(window: SharedSlice<u64>) -> u64 {
///     window.iter().sum() // reads the shared pages; nothing was copied
/// }
///
/// # fn main() -> Result<(), pool_core::Error> {
/// let data = SharedSlice::from_vec((0..1_000_000u64).collect())?;
/// let pool = Pool::new()?;
/// let sums = pool.map(sum, data.chunks_of(100_000))?; // ten handles of ~50 bytes each
/// assert_eq!(sums.iter().sum::<u64>(), data.iter().sum::<u64>());
/// assert_eq!(pool.apply(sum, data.slice(10..13))?, 10 + 11 + 12);
/// # Ok(())
/// # }
/// ```
///
/// Your own element types derive [`Pod`](crate::Pod) through the re-export, with no
/// dependency of their own:
///
/// ```
/// use pool_core::{Pod, SharedSlice, Zeroable};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[bytemuck(crate = "pool_core::bytemuck")]
/// #[repr(C)]
/// struct Point {
///     x: f32,
///     y: f32,
/// }
///
/// let points = SharedSlice::build(1000, |p: &mut [Point]| {
///     for (i, p) in p.iter_mut().enumerate() {
///         *p = Point { x: i as f32, y: 0.5 };
///     }
/// })?;
/// assert_eq!(points[999].x, 999.0);
/// # Ok::<(), pool_core::Error>(())
/// ```
///
/// Writing through it does not compile:
///
/// ```compile_fail
/// let data = pool_core::SharedSlice::from_vec(vec![1u64, 2, 3])?;
/// data[0] = 7; // error: cannot assign to data in dereference of `SharedSlice<u64>`
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct SharedSlice<T> {
    frozen: Arc<Frozen>,
    /// The range of the whole data this handle sees, in elements.
    start: usize,
    len: usize,
    _t: PhantomData<T>,
}

/// What names a slice's element type on the wire. Any bytes are a valid `T` (`Pod`), so this
/// only catches a handle received as another type, never a memory-safety question.
fn kind<T: Pod>() -> u64 {
    const {
        assert!(
            std::mem::size_of::<T>() > 0,
            "SharedSlice needs an element type of non-zero size"
        );
        assert!(
            std::mem::align_of::<T>() <= HEADER,
            "SharedSlice supports element alignment up to 128 bytes"
        );
    }
    0x736c_0000_0000_0000
        | ((std::mem::size_of::<T>() as u64) << 8)
        | std::mem::align_of::<T>() as u64
}

impl<T: Pod> SharedSlice<T> {
    fn whole(frozen: Arc<Frozen>) -> Self {
        let len = frozen.payload().len() / std::mem::size_of::<T>();
        SharedSlice {
            frozen,
            start: 0,
            len,
            _t: PhantomData,
        }
    }

    /// Shared data holding a copy of `data` (written straight into the shared memory: one
    /// copy).
    pub fn from_slice(data: &[T]) -> Result<Self, Error> {
        let frozen = Frozen::stream(kind::<T>(), None, |w| {
            w.write_all(bytemuck::cast_slice(data))
        })
        .map_err(Error::shared)?;
        Ok(Self::whole(frozen))
    }

    /// Shared data holding the items of `data` (the vector is freed afterwards).
    pub fn from_vec(data: Vec<T>) -> Result<Self, Error> {
        Self::from_slice(&data)
    }

    /// Shared data holding the items `iter` yields, written to the shared memory in blocks of
    /// 64 KiB as they come (the whole never exists twice).
    pub fn try_from_iter(iter: impl IntoIterator<Item = T>) -> Result<Self, Error> {
        let per_block = (64 << 10) / std::mem::size_of::<T>();
        let frozen = Frozen::stream(kind::<T>(), None, |w| {
            let mut block = Vec::with_capacity(per_block.max(1));
            for item in iter {
                block.push(item);
                if block.len() == block.capacity() {
                    w.write_all(bytemuck::cast_slice(&block))?;
                    block.clear();
                }
            }
            w.write_all(bytemuck::cast_slice(&block))
        })
        .map_err(Error::shared)?;
        Ok(Self::whole(frozen))
    }

    /// Shared data of `len` items, which `fill` writes in place (they start zeroed). The
    /// fastest way to build a large dataset: no copy at all.
    pub fn build(len: usize, fill: impl FnOnce(&mut [T])) -> Result<Self, Error> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::Config(format!(
                "a SharedSlice of {len} items does not fit in memory"
            ))
        })?;
        let frozen = Frozen::fill(kind::<T>(), None, bytes, |b| {
            fill(bytemuck::cast_slice_mut(b))
        })
        .map_err(Error::shared)?;
        Ok(Self::whole(frozen))
    }

    /// The items this handle sees.
    pub fn as_slice(&self) -> &[T] {
        let all: &[T] = bytemuck::cast_slice(self.frozen.payload());
        &all[self.start..self.start + self.len]
    }

    /// A handle to part of this one (`range` is relative to this handle, as in slice
    /// indexing). It shares the same memory and travels as a handle too.
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds, as slicing is.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> SharedSlice<T> {
        let from = match range.start_bound() {
            Bound::Included(&a) => a,
            Bound::Excluded(&a) => a + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&b) => b + 1,
            Bound::Excluded(&b) => b,
            Bound::Unbounded => self.len,
        };
        assert!(
            from <= to && to <= self.len,
            "range {from}..{to} out of bounds of a SharedSlice of {} items",
            self.len
        );
        SharedSlice {
            frozen: self.frozen.clone(),
            start: self.start + from,
            len: to - from,
            _t: PhantomData,
        }
    }

    /// Handles to consecutive pieces of `chunk_len` items (the last may be shorter), for a map
    /// over windows of the data.
    ///
    /// # Panics
    ///
    /// If `chunk_len` is 0.
    pub fn chunks_of(&self, chunk_len: usize) -> impl ExactSizeIterator<Item = SharedSlice<T>> {
        assert!(chunk_len > 0, "chunks_of needs a chunk length above 0");
        let this = self.clone();
        (0..self.len.div_ceil(chunk_len)).map(move |i| {
            let a = i * chunk_len;
            this.slice(a..(a + chunk_len).min(this.len))
        })
    }

    /// Where this handle's items lie in the whole data (for a sub-range handle, its offset).
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// Handles to consecutive, non-overlapping windows of `len` items of `data` (the last may be
/// shorter): the same as [`data.chunks_of(len)`](SharedSlice::chunks_of), for a map over a
/// large dataset in pieces, `pool.map(sum_window, windows_of(&data, 1 << 17))`.
///
/// # Panics
///
/// If `len` is 0.
///
/// # Examples
///
/// ```
/// use pool_core::{windows_of, SharedSlice};
///
/// let data = SharedSlice::from_vec((0..10u32).collect())?;
/// let lens: Vec<usize> = windows_of(&data, 4).map(|w| w.len()).collect();
/// assert_eq!(lens, [4, 4, 2]);
/// # Ok::<(), pool_core::Error>(())
/// ```
pub fn windows_of<T: Pod>(
    data: &SharedSlice<T>,
    len: usize,
) -> impl ExactSizeIterator<Item = SharedSlice<T>> {
    data.chunks_of(len)
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> AsRef<[T]> for SharedSlice<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice {
            frozen: self.frozen.clone(),
            start: self.start,
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> TryFrom<Vec<T>> for SharedSlice<T> {
    type Error = Error;

    fn try_from(data: Vec<T>) -> Result<Self, Error> {
        Self::from_vec(data)
    }
}

impl<T: Pod> TryFrom<&[T]> for SharedSlice<T> {
    type Error = Error;

    fn try_from(data: &[T]) -> Result<Self, Error> {
        Self::from_slice(data)
    }
}

impl<T> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlice")
            .field("range", &(self.start..self.start + self.len))
            .field("of", &self.frozen)
            .finish()
    }
}

/// A handle on the wire: the object, and the range of elements it sees.
#[derive(Serialize, Deserialize)]
struct Wire {
    data: FrozenRef,
    start: u64,
    len: u64,
}

impl<T: Pod> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            data: self.frozen.reference(),
            start: self.start as u64,
            len: self.len as u64,
        }
        .serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        let frozen = Frozen::resolve(&w.data).map_err(D::Error::custom)?;
        let whole = frozen.payload().len() / std::mem::size_of::<T>();
        if frozen.kind() != kind::<T>()
            || w.start
                .checked_add(w.len)
                .is_none_or(|end| end > whole as u64)
        {
            return Err(D::Error::custom(
                "a SharedSlice handle out of its data's bounds, or of another element type",
            ));
        }
        Ok(SharedSlice {
            frozen,
            start: w.start as usize,
            len: w.len as usize,
            _t: PhantomData,
        })
    }
}
