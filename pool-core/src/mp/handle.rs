//! What every shared handle has in common: a segment of a known kind, and its wire form.

use std::sync::Arc;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::segment::{open_ref, Segment, SegmentRef};
use crate::Error;

/// The kinds of segment, checked when a handle is received.
pub(crate) mod kind {
    pub(crate) const LOCK: u64 = 1;
    pub(crate) const RLOCK: u64 = 2;
    pub(crate) const SEMAPHORE: u64 = 3;
    pub(crate) const EVENT: u64 = 4;
    pub(crate) const CONDITION: u64 = 5;
    pub(crate) const BARRIER: u64 = 6;
    pub(crate) const QUEUE: u64 = 7;
    /// Value and Array: the element size is folded in (`VALUE | size << 16`).
    pub(crate) const VALUE: u64 = 8;
    pub(crate) const ARRAY: u64 = 9;
}

/// Creates a segment, mapping the error.
pub(crate) fn create(payload: usize, kind: u64) -> Result<Arc<Segment>, Error> {
    Segment::create(payload, kind).map_err(Error::shared)
}

pub(crate) fn serialize<S: Serializer>(seg: &Segment, s: S) -> Result<S::Ok, S::Error> {
    seg.reference().serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
    kind: u64,
) -> Result<Arc<Segment>, D::Error> {
    let r = SegmentRef::deserialize(d)?;
    let seg = open_ref(&r).map_err(de::Error::custom)?;
    if seg.reference().kind() != kind {
        return Err(de::Error::custom(
            "the handle names a shared object of another kind",
        ));
    }
    Ok(seg)
}

/// Implements `Serialize`/`Deserialize` for a handle type with a `seg: Arc<Segment>` field
/// and a `from_segment` constructor.
macro_rules! wire_handle {
    ($ty:ident $(<$g:ident $(: $b:path)?>)?, $kind:expr) => {
        impl$(<$g $(: $b)?>)? serde::Serialize for $ty$(<$g>)? {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::mp::handle::serialize(&self.seg, s)
            }
        }

        impl<'de $(, $g $(: $b)?)?> serde::Deserialize<'de> for $ty$(<$g>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let seg = $crate::mp::handle::deserialize(d, $kind)?;
                Ok(Self::from_segment(seg))
            }
        }
    };
}
pub(crate) use wire_handle;
