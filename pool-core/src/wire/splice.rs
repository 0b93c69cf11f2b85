//! Big byte buffers that travel inside a job frame without being copied into it first.
//!
//! A `map` over `Vec<u8>` arguments would copy every buffer into its frame, and the collector
//! would then copy the frame into the worker's ring: two copies of every byte in the parent. A
//! buffer of at least [`SPLICE_MIN`] bytes is instead moved into the job as it is, and the frame
//! holds everything around it (the item's length and `bin` header). The collector writes the
//! frame into the ring piece by piece, so the worker reads exactly the bytes the flat frame
//! would have held, and the parent copies each byte once.
//!
//! The buffers stay with the job until it resolves: a job sent back to the queue because its
//! worker died before beginning it is written again, whole.

use crate::transport::spsc_ring::SpscRing;

/// Byte buffers at least this long are spliced; shorter ones are cheaper to copy.
pub(crate) const SPLICE_MIN: usize = 64 << 10;

/// Owned buffers that belong inside a frame, each at an offset of the frame's own bytes.
///
/// Boxed, so that a job without any (nearly every job) carries one word for them.
#[derive(Default)]
pub(crate) struct Spliced(Option<Box<Parts>>);

#[derive(Default)]
struct Parts {
    /// `(offset, buffer)`: `buffer` comes right before byte `offset` of the frame. Offsets never
    /// decrease.
    list: Vec<(usize, Vec<u8>)>,
    /// The buffers' total length.
    bytes: usize,
}

impl Spliced {
    /// Puts `buf` at `at` (which is not before any earlier offset).
    pub(crate) fn push(&mut self, at: usize, buf: Vec<u8>) {
        let parts = self.0.get_or_insert_default();
        debug_assert!(parts.list.last().is_none_or(|&(prev, _)| prev <= at));
        parts.bytes += buf.len();
        parts.list.push((at, buf));
    }

    /// The buffers' total length (what they add to the frame's).
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |parts| parts.bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn list(&self) -> &[(usize, Vec<u8>)] {
        self.0.as_ref().map_or(&[], |parts| &parts.list)
    }

    /// The whole frame, in order: slices of `head` with the buffers between them.
    pub(crate) fn pieces<'a>(&'a self, head: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let list = self.list();
        (0..=list.len()).flat_map(move |i| {
            let start = if i == 0 { 0 } else { list[i - 1].0 };
            let part = list.get(i);
            let end = part.map_or(head.len(), |&(at, _)| at);
            std::iter::once(&head[start..end]).chain(part.map(|(_, buf)| buf.as_slice()))
        })
    }

    /// The flat frame (for the rare caller that needs one buffer).
    pub(crate) fn flatten(self, head: Vec<u8>) -> Vec<u8> {
        if self.is_empty() {
            return head;
        }
        let mut flat = Vec::with_capacity(head.len() + self.len());
        for piece in self.pieces(&head) {
            flat.extend_from_slice(piece);
        }
        flat
    }
}

impl std::fmt::Debug for Spliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spliced")
            .field("buffers", &self.list().len())
            .field("bytes", &self.len())
            .finish()
    }
}

/// Writes as much of `pieces` (taken as one stream) as fits in `ring`, starting `offset` bytes
/// into the stream. Returns how many bytes it wrote.
pub(crate) fn write_from<'a>(
    ring: &SpscRing,
    pieces: impl Iterator<Item = &'a [u8]>,
    offset: usize,
) -> usize {
    let mut skip = offset;
    let mut written = 0;
    for piece in pieces {
        if skip >= piece.len() {
            skip -= piece.len();
            continue;
        }
        let rest = &piece[skip..];
        skip = 0;
        let n = ring.write(rest);
        written += n;
        if n < rest.len() {
            break;
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_rebuild_the_flat_frame() {
        let head: Vec<u8> = (0..10).collect();
        let mut s = Spliced::default();
        assert_eq!(s.pieces(&head).collect::<Vec<_>>().concat(), head);
        s.push(0, vec![100, 101]);
        s.push(4, vec![102]);
        s.push(4, vec![103, 104]);
        s.push(10, vec![105]);
        assert_eq!(s.len(), 6);
        let flat = s.flatten(head);
        assert_eq!(
            flat,
            [100, 101, 0, 1, 2, 3, 102, 103, 104, 4, 5, 6, 7, 8, 9, 105]
        );
    }
}
