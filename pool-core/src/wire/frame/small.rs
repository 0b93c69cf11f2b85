//! The small-value fast path: scalars framed and stored as whole words, in tight loops.

use crate::wire::codec::Small;

/// How the items of a [`small_run`] are laid out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Layout {
    /// Each item preceded by `status` (for results) and its length as a little-endian `u32`.
    Prefixed(Option<u8>),
    /// Each item exactly this many bytes, nothing else (a fixed-width frame).
    Fixed(u8),
}

/// A small item as `layout` frames it. Returns the 16 bytes to store, as one little-endian
/// integer, and how many of them count.
#[inline(always)]
pub(super) fn framed_small(layout: Layout, small: &Small) -> (u128, usize) {
    let len = u128::from(small.len());
    match layout {
        Layout::Prefixed(Some(status)) => (
            u128::from(status) | len << 8 | small.bits() << 40,
            5 + usize::from(small.len()),
        ),
        Layout::Prefixed(None) => (len | small.bits() << 32, 4 + usize::from(small.len())),
        Layout::Fixed(width) => {
            debug_assert_eq!(small.len(), width, "a fixed-width item of another width");
            (small.bits(), width.into())
        }
    }
}

/// Stores the 16 bytes of `item` (little-endian) at the front of `dst`, which must have room:
/// one 16-byte store, where writing the bytes one by one would be sixteen.
#[inline(always)]
pub(super) fn store16(dst: &mut [std::mem::MaybeUninit<u8>], item: u128) {
    assert!(dst.len() >= 16);
    // SAFETY: `dst` has at least 16 bytes (checked above); an unaligned write of a `u128` to
    // them initialises exactly those bytes.
    unsafe {
        dst.as_mut_ptr()
            .cast::<u128>()
            .write_unaligned(item.to_le())
    };
}

/// Appends one small item with its header (see [`framed_small`]) as one 16-byte store.
#[inline(always)]
pub(super) fn append_small(buf: &mut Vec<u8>, status: Option<u8>, small: &Small) {
    let (item, n) = framed_small(Layout::Prefixed(status), small);
    buf.reserve(16);
    let len = buf.len();
    store16(buf.spare_capacity_mut(), item);
    // SAFETY: `reserve` made room for 16 more bytes and `store16` initialised them; `n` ≤ 14
    // of them become part of the vector.
    unsafe { buf.set_len(len + n) };
}

/// At most this many items go in one [`small_run`], so its reservation stays modest.
pub(super) const RUN: usize = 4096;

/// Appends up to `max` (at most [`RUN`]) small items with their headers, taking them from
/// `next` until it returns `None`; returns how many were appended and, if `next` panicked, the
/// panic, with every item completed before it kept.
///
/// This is [`append_small`] for a stream of items: it writes into the spare capacity through a
/// local slice and position and sets the length once, where appending through the `Vec` would
/// reload its length and capacity after every store (bytes written through a pointer may
/// alias anything).
#[inline(always)]
pub(super) fn small_run(
    buf: &mut Vec<u8>,
    layout: Layout,
    max: usize,
    mut next: impl FnMut() -> Option<Small>,
) -> (usize, Option<Box<dyn std::any::Any + Send>>) {
    let max = max.min(RUN);
    buf.reserve(max * 16);
    let len = buf.len();
    let mut pos = 0;
    let mut count = 0;
    let caught = {
        let spare = &mut buf.spare_capacity_mut()[..max * 16];
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fill_small(spare, &mut pos, &mut count, layout, max, &mut next)
        }))
        .err()
    };
    // SAFETY: `fill_small` initialised the first `pos` bytes of the spare capacity (it updates
    // `pos` only after an item is wholly written, so this holds after a panic too).
    unsafe { buf.set_len(len + pos) };
    (count, caught)
}

/// The loop of [`small_run`], on a slice and counters that are its own parameters (so the
/// compiler knows the stores into `spare` touch nothing else).
#[inline(always)]
pub(super) fn fill_small(
    spare: &mut [std::mem::MaybeUninit<u8>],
    pos: &mut usize,
    count: &mut usize,
    layout: Layout,
    max: usize,
    next: &mut impl FnMut() -> Option<Small>,
) {
    let (mut p, mut c) = (0, 0);
    while c < max {
        let Some(small) = next() else { break };
        let (item, n) = framed_small(layout, &small);
        let Some(dst) = spare.get_mut(p..p + 16) else {
            break; // Cannot happen: `max` items of at most 16 bytes fit.
        };
        store16(dst, item);
        p += n;
        c += 1;
        *pos = p;
        *count = c;
    }
}

pub(super) fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
