//! [`Shared`]: structured read-only data (an `rkyv` archive) that every worker reads in place.

use std::any::TypeId;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Archived, Portable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::frozen::{Frozen, FrozenRef};
use crate::Error;

/// A value archived once with [`rkyv`] into shared memory, which the parent and every worker
/// read in place as `&Archived<T>`: a big lookup table, a parsed model, a graph — zero-copy, no
/// decoding per task. (Feature `rkyv`.)
///
/// It follows [`SharedSlice`](crate::SharedSlice)'s rules: the memory is sealed read-only,
/// has no name (nothing in `/dev/shm`), mode 0600, and is freed when the last handle in the
/// creating program is dropped; as a task argument it travels as a handle of about 50 bytes,
/// and each worker maps it once and reuses the mapping for every later task. A worker checks
/// the archive (rkyv's validation) the first time it maps it, so a damaged or foreign handle is
/// an argument error, never undefined behaviour; that check reads the whole archive once per
/// worker.
///
/// Turning the feature on brings in rkyv's comparisons between native and archived integers
/// (`u64 == Archived<u64>` …); a `sum()` or `parse()` whose type was inferred from an
/// `assert_eq!` may then need its type spelled out (`sum::<u64>()`).
///
/// The archived form is what `#[derive(rkyv::Archive)]` makes of `T` (`ArchivedString`,
/// `ArchivedVec`, `ArchivedHashMap` …); call [`rkyv::deserialize`] on it for an owned `T`.
///
/// # Examples
///
/// ```
/// use pool_core::rkyv::{self, Archive};
/// use pool_core::{task, Pool, Shared};
///
/// #[derive(Archive, rkyv::Serialize)]
/// #[rkyv(crate = pool_core::rkyv)]
/// struct Model {
///     name: String,
///     weights: Vec<f32>,
/// }
///
/// #[task]
/// fn score(model: Shared<Model>, x: f32) -> f32 {
///     model.weights.iter().map(|w| w.to_native() * x).sum() // read in place
/// }
///
/// # fn main() -> Result<(), pool_core::Error> {
/// let model = Shared::new(&Model { name: "m".into(), weights: vec![0.5; 1000] })?;
/// assert_eq!(model.name, "m");
/// let pool = Pool::new()?;
/// assert_eq!(pool.apply(score, (model.clone(), 2.0))?, 1000.0);
/// # Ok(())
/// # }
/// ```
pub struct Shared<T: Archive> {
    frozen: Arc<Frozen>,
    _t: Marker<T>,
}

/// `Shared<T>` is `Send`/`Sync` as `&Archived<T>` is, whatever `T` itself is.
type Marker<T> = PhantomData<(fn() -> T, Archived<T>)>;

/// What names `T` on the wire: a hash of its type name. A receiver of another type gets an
/// error; a collision would still be caught by the archive check.
fn kind<T: 'static>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::any::type_name::<T>().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    0x6172_0000_0000_0000 | (h >> 16)
}

impl<T> Shared<T>
where
    T: Archive + 'static,
    Archived<T>: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// Archives `value` into shared memory. (The archive is built in memory first, as
    /// `rkyv::to_bytes` builds it, then written to the shared memory and freed.)
    pub fn new(value: &T) -> Result<Self, Error>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let bytes = rkyv::to_bytes::<rancor::Error>(value)
            .map_err(|e| Error::shared(io::Error::other(e)))?;
        let frozen = Frozen::stream(kind::<T>(), Some(TypeId::of::<T>()), |w| {
            w.write_all(&bytes)
        })
        .map_err(Error::shared)?;
        Ok(Shared {
            frozen,
            _t: PhantomData,
        })
    }

    /// The archived value, read in place.
    pub fn get(&self) -> &Archived<T> {
        // SAFETY: the payload is an archive of `T`: this process wrote it with `T`'s
        // serializer, or checked it as `T` with rkyv's validation when the handle arrived
        // (`check_once` in `deserialize`). The memory is sealed against writes, so it stays
        // as checked, and the payload starts 128 bytes into a page-aligned mapping, aligned
        // for any archived type.
        unsafe { rkyv::access_unchecked::<Archived<T>>(self.frozen.payload()) }
    }

    /// The archive's size in bytes.
    pub fn archived_len(&self) -> usize {
        self.frozen.payload().len()
    }
}

impl<T> Deref for Shared<T>
where
    T: Archive + 'static,
    Archived<T>: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    type Target = Archived<T>;

    fn deref(&self) -> &Archived<T> {
        self.get()
    }
}

impl<T: Archive> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            frozen: self.frozen.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Archive> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("type", &std::any::type_name::<T>())
            .field("of", &self.frozen)
            .finish()
    }
}

impl<T: Archive + 'static> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.frozen.reference().serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Shared<T>
where
    T: Archive + 'static,
    Archived<T>: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let r = FrozenRef::deserialize(d)?;
        let frozen = Frozen::resolve(&r).map_err(D::Error::custom)?;
        if frozen.kind() != kind::<T>() {
            return Err(D::Error::custom(
                "a Shared handle received as another type than it was made with",
            ));
        }
        frozen
            .check_once(TypeId::of::<T>(), |bytes| {
                rkyv::access::<Archived<T>, rancor::Error>(bytes)
                    .map(|_| ())
                    .map_err(io::Error::other)
            })
            .map_err(|e| D::Error::custom(format!("the shared archive does not check out: {e}")))?;
        Ok(Shared {
            frozen,
            _t: PhantomData,
        })
    }
}
