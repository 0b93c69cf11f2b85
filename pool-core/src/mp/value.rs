//! [`Value`] and [`Array`]: plain-old-data in shared memory, each with its own lock.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytemuck::Pod;

use super::handle::{self, kind, wire_handle};
use super::lock::{wrap, LockResult};
use super::raw::RawMutex;
use super::segment::Segment;
use crate::Error;

/// Where the data starts in the payload (after the mutex and the length).
const DATA: usize = 128;

#[repr(C)]
struct Head {
    mutex: RawMutex,
    len: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Head>() <= DATA);

fn create<T: Pod>(len: usize, kind: u64) -> Result<Arc<Segment>, Error> {
    assert!(
        std::mem::align_of::<T>() <= DATA,
        "types aligned to more than 128 bytes are not supported"
    );
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::Config("array too large".into()))?;
    let seg = handle::create(DATA + bytes, kind)?;
    // SAFETY: fresh zeroed shared memory, page-aligned, used by nothing yet.
    unsafe { RawMutex::init(seg.payload().cast()) };
    head(&seg).len.store(len as u64, Ordering::Release);
    Ok(seg)
}

fn head(seg: &Segment) -> &Head {
    // SAFETY: the payload starts with a Head, initialized by `create`.
    unsafe { &*seg.payload().cast::<Head>() }
}

fn data<T>(seg: &Segment) -> *mut T {
    // SAFETY: DATA is within the payload (created with DATA + len × size bytes), and aligned
    // for T (the payload is page-aligned plus 128, and T's alignment is at most 128).
    unsafe { seg.payload().add(DATA).cast::<T>() }
}

fn value_kind<T>() -> u64 {
    kind::VALUE | ((std::mem::size_of::<T>() as u64) << 16)
}

fn array_kind<T>() -> u64 {
    kind::ARRAY | ((std::mem::size_of::<T>() as u64) << 16)
}

/// One value of a plain-old-data type `T` in shared memory, with a lock (Python's
/// `multiprocessing.Value`). Clone it, inherit it across `fork`, or pass it to a
/// [`Process`](crate::Process) or pool task: every copy sees the same value.
///
/// `T` must be [`bytemuck::Pod`]: integers, floats, and arrays or `#[repr(C)]` structs of them
/// — no pointers, which would mean nothing in another process.
///
/// # Examples
///
/// ```
/// use pool_core::Value;
///
/// let counter = Value::new(0u64)?;
/// counter.set(41);
/// *counter.lock().unwrap() += 1;
/// assert_eq!(counter.get(), 42);
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct Value<T: Pod> {
    seg: Arc<Segment>,
    _t: PhantomData<T>,
}

wire_handle!(Value<T: Pod>, value_kind::<T>());

impl<T: Pod> Value<T> {
    /// A shared value, initially `value`.
    pub fn new(value: T) -> Result<Value<T>, Error> {
        let seg = create::<T>(1, value_kind::<T>())?;
        // SAFETY: the data area holds one T, aligned, and nothing else uses it yet.
        unsafe { data::<T>(&seg).write(value) };
        Ok(Value::from_segment(seg))
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        Value {
            seg,
            _t: PhantomData,
        }
    }

    /// A copy of the value, read under the lock. (A lock whose owner died is taken over
    /// silently here and in [`set`](Self::set); [`lock`](Self::lock) reports it.)
    pub fn get(&self) -> T {
        *self.lock().unwrap_or_else(super::OwnerDied::into_guard)
    }

    /// Sets the value, under the lock.
    pub fn set(&self, value: T) {
        *self.lock().unwrap_or_else(super::OwnerDied::into_guard) = value;
    }

    /// Takes the value's lock: the guard gives `&mut T` until dropped.
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let taken = head(&self.seg).mutex.lock();
        wrap(
            taken,
            ValueGuard {
                value: self,
                _not_send: PhantomData,
            },
        )
    }
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value::from_segment(Arc::clone(&self.seg))
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

/// Holds a [`Value`]'s lock; dereferences to the value.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    value: &'a Value<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the data area holds a T; the lock is held, so no other copy writes it.
        unsafe { &*data::<T>(&self.value.seg) }
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the guard is the only access while it lives.
        unsafe { &mut *data::<T>(&self.value.seg) }
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        head(&self.value.seg).mutex.unlock();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

/// A fixed-length array of a plain-old-data type `T` in shared memory, with a lock (Python's
/// `multiprocessing.Array`).
///
/// # Examples
///
/// ```
/// use pool_core::Array;
///
/// let a = Array::new(&[1u32, 2, 3])?;
/// a.set(0, 10);
/// a.lock().unwrap()[2] = 30;
/// assert_eq!(a.to_vec(), [10, 2, 30]);
/// assert_eq!(a.len(), 3);
/// assert_eq!(a.get(5), None);
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct Array<T: Pod> {
    seg: Arc<Segment>,
    _t: PhantomData<T>,
}

wire_handle!(Array<T: Pod>, array_kind::<T>());

impl<T: Pod> Array<T> {
    /// A shared array holding a copy of `items`.
    pub fn new(items: &[T]) -> Result<Array<T>, Error> {
        let seg = create::<T>(items.len(), array_kind::<T>())?;
        // SAFETY: the data area holds `items.len()` Ts, aligned; nothing else uses it yet.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), data::<T>(&seg), items.len()) };
        Ok(Array::from_segment(seg))
    }

    /// A shared array of `len` zeroed elements.
    pub fn zeroed(len: usize) -> Result<Array<T>, Error> {
        Ok(Array::from_segment(create::<T>(len, array_kind::<T>())?))
    }

    fn from_segment(seg: Arc<Segment>) -> Self {
        Array {
            seg,
            _t: PhantomData,
        }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        let len = head(&self.seg).len.load(Ordering::Acquire) as usize;
        // Never trust more than the mapping holds.
        len.min((self.seg.payload_len() - DATA) / std::mem::size_of::<T>().max(1))
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of element `i`, read under the lock.
    pub fn get(&self, i: usize) -> Option<T> {
        self.lock()
            .unwrap_or_else(super::OwnerDied::into_guard)
            .get(i)
            .copied()
    }

    /// Sets element `i` under the lock; false if `i` is out of range.
    pub fn set(&self, i: usize, value: T) -> bool {
        let mut g = self.lock().unwrap_or_else(super::OwnerDied::into_guard);
        match g.get_mut(i) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// A copy of every element, read under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        self.lock()
            .unwrap_or_else(super::OwnerDied::into_guard)
            .to_vec()
    }

    /// Takes the array's lock: the guard gives `&mut [T]` until dropped.
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let taken = head(&self.seg).mutex.lock();
        wrap(
            taken,
            ArrayGuard {
                array: self,
                _not_send: PhantomData,
            },
        )
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array::from_segment(Arc::clone(&self.seg))
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

/// Holds an [`Array`]'s lock; dereferences to the elements.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    array: &'a Array<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the data area holds `len()` Ts; the lock is held.
        unsafe { std::slice::from_raw_parts(data::<T>(&self.array.seg), self.array.len()) }
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; the guard is the only access while it lives.
        unsafe { std::slice::from_raw_parts_mut(data::<T>(&self.array.seg), self.array.len()) }
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        head(&self.array.seg).mutex.unlock();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}
