//! The frames that travel between the parent and a worker, and their bounds-checked decoders.
//!
//! A frame is a byte string; the transport moves it whole. All integers are little-endian.
//!
//! ```text
//! job      := 0x01 name_len:u16 name count:u32 item*      item   := len:u32 msgpack-args
//!           | 0x04 name_len:u16 name count:u32 width:u8 fixed*     fixed := width bytes
//! shutdown := 0x02
//! results  := 0x03 0x00 count:u32 errors:u32 result*      result := status:u8 len:u32 bytes
//!           | 0x03 0x01                                     (the task name is unknown)
//!           | 0x03 0x02 count:u32 errors:u32 width:u8 fixed*  (every item a value)
//!           | 0x03 0x03                                     (cancelled before it began)
//! ```
//!
//! A result's `status` says what its bytes are: the MessagePack return value (`ITEM_OK`), a
//! panic (`msg_len:u32 msg location`), or an error message in UTF-8; and, only in frames the
//! parent puts together after a worker died under a chunk (`split`), the worker's death
//! (`pid:i32 kind:u8 value:i32 attempts:u32`) or a time limit (`limit_ns:u64 pid:i32
//! attempts:u32`) of one item. One job frame carries a
//! whole chunk of a `map`, so the per-frame costs are paid once per chunk, not once per item.
//!
//! The fixed-width forms carry a `map` of scalars (`u64`, `f64`, …): every item is the value in
//! its type's widest MessagePack form (see `Small::fixed`), so items need no length, statuses
//! or branches on their size. A worker answers a fixed job of a scalar-returning task with
//! fixed results, and rewrites what it has written into the general form as soon as an item
//! fails (see `ResultsWriter::demote`).
//!
//! The decoders never panic and never read out of bounds: garbage gives a [`FrameError`].

pub(super) const KIND_JOB: u8 = 1;
pub(super) const KIND_SHUTDOWN: u8 = 2;
pub(super) const KIND_RESULTS: u8 = 3;
pub(super) const KIND_JOB_FIXED: u8 = 4;

pub(super) const RESULTS_OK: u8 = 0;
pub(super) const RESULTS_UNKNOWN_TASK: u8 = 1;
pub(super) const RESULTS_FIXED: u8 = 2;
pub(super) const RESULTS_SKIPPED: u8 = 3;

pub(super) const ITEM_OK: u8 = 0;
pub(super) const ITEM_PANIC: u8 = 1;
pub(super) const ITEM_ARGS_DECODE: u8 = 2;
pub(super) const ITEM_RESULT_ENCODE: u8 = 3;
/// Written only by the parent, for the item under which a worker died (see `split`).
pub(super) const ITEM_WORKER_DIED: u8 = 4;
/// Written only by the parent, for the item that ran past its time limit (see `split`).
pub(super) const ITEM_TIMEOUT: u8 = 5;

/// A frame that does not follow the format above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameError(pub(crate) &'static str);

impl From<FrameError> for crate::Error {
    fn from(err: FrameError) -> Self {
        crate::Error::Protocol(err.0.to_owned())
    }
}

/// Reads fixed-size fields off the front of a byte slice.
pub(super) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    #[inline]
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    #[inline]
    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    #[inline]
    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl std::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cursor({} bytes)", self.rest.len())
    }
}

mod job;
mod results;
mod small;
pub(crate) mod split;
#[cfg(test)]
mod test;

pub(crate) use job::parse_request;
pub(crate) use job::{job_item_count, shutdown_frame, Items, JobBuilder, Request};
pub(crate) use results::{parse_results, Outcome, ResultFrame, Results, ResultsWriter};
