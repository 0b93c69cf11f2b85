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
//! ```
//!
//! A result's `status` says what its bytes are: the MessagePack return value (`ITEM_OK`), a
//! panic (`msg_len:u32 msg location`), or an error message in UTF-8. One job frame carries a
//! whole chunk of a `map`, so the per-frame costs are paid once per chunk, not once per item.
//!
//! The fixed-width forms carry a `map` of scalars (`u64`, `f64`, …): every item is the value in
//! its type's widest MessagePack form (see `Small::fixed`), so items need no length, statuses
//! or branches on their size. A worker answers a fixed job of a scalar-returning task with
//! fixed results, and rewrites what it has written into the general form as soon as an item
//! fails (see `ResultsWriter::demote`).
//!
//! The decoders never panic and never read out of bounds: garbage gives a [`FrameError`].

use std::any::Any;

use serde::Serialize;

use crate::codec::Small;
use crate::splice::{Spliced, SPLICE_MIN};

const KIND_JOB: u8 = 1;
const KIND_SHUTDOWN: u8 = 2;
const KIND_RESULTS: u8 = 3;
const KIND_JOB_FIXED: u8 = 4;

const RESULTS_OK: u8 = 0;
const RESULTS_UNKNOWN_TASK: u8 = 1;
const RESULTS_FIXED: u8 = 2;

const ITEM_OK: u8 = 0;
const ITEM_PANIC: u8 = 1;
const ITEM_ARGS_DECODE: u8 = 2;
const ITEM_RESULT_ENCODE: u8 = 3;

/// A frame that does not follow the format above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameError(pub(crate) &'static str);

impl From<FrameError> for crate::Error {
    fn from(err: FrameError) -> Self {
        crate::Error::Protocol(err.0.to_owned())
    }
}

/// Reads fixed-size fields off the front of a byte slice.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    #[inline]
    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    #[inline]
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

// ---------------------------------------------------------------------------------------------
// Parent side: building jobs.

/// Builds one job frame: a task name and any number of encoded argument values.
#[derive(Debug)]
pub(crate) struct JobBuilder {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
    /// The width of every item, in a fixed-width job.
    fixed: Option<u8>,
    /// Big byte buffers that belong in the frame, moved rather than copied (see `splice`).
    spliced: Spliced,
}

impl JobBuilder {
    /// Starts a job for `task`. Panics only if the name is longer than 65,535 bytes, which a
    /// Rust path cannot be in practice; the pool checks names before building.
    pub(crate) fn new(task: &str) -> Self {
        Self::in_buffer(task, Vec::with_capacity(64 + task.len()))
    }

    /// [`new`](Self::new) for a job of one item whose arguments are `args`: when they are a
    /// scalar the buffer is sized exactly (a burst of a million `apply_async` holds a million of
    /// these), with room for the result frame that comes back in it.
    pub(crate) fn for_one<A: 'static>(task: &str, args: &A) -> Self {
        let capacity = match Small::of(args) {
            // The header, then the item: written as one 16-byte store (see `append_small`).
            Some(_) => (7 + task.len() + 16).max(32),
            None => 64 + task.len(),
        };
        Self::in_buffer(task, Vec::with_capacity(capacity))
    }

    /// [`new`](Self::new), building the frame in `buf` (cleared first): a recycled buffer that
    /// is already big enough saves an allocation and fresh pages.
    pub(crate) fn in_buffer(task: &str, buf: Vec<u8>) -> Self {
        Self::start(task, buf, None)
    }

    /// A fixed-width job (see the module docs): every item is `width` bytes, pushed only with
    /// [`push_small_run`](Self::push_small_run) as `Small::fixed` encodings.
    pub(crate) fn fixed_in_buffer(task: &str, buf: Vec<u8>, width: u8) -> Self {
        Self::start(task, buf, Some(width))
    }

    fn start(task: &str, mut buf: Vec<u8>, fixed: Option<u8>) -> Self {
        let name_len = u16::try_from(task.len()).expect("task names are checked to fit in u16");
        buf.clear();
        buf.push(if fixed.is_some() {
            KIND_JOB_FIXED
        } else {
            KIND_JOB
        });
        buf.extend_from_slice(&name_len.to_le_bytes());
        buf.extend_from_slice(task.as_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend(fixed);
        JobBuilder {
            buf,
            count_at,
            count: 0,
            fixed,
            spliced: Spliced::default(),
        }
    }

    /// Appends one item's arguments. On an encoding error the frame is left as it was.
    #[inline]
    pub(crate) fn push<A: Serialize + 'static>(&mut self, args: &A) -> Result<(), String> {
        assert!(
            self.fixed.is_none(),
            "a fixed-width job takes only small runs"
        );
        if let Some(small) = Small::of(args) {
            append_small(&mut self.buf, None, &small);
            self.count += 1;
            return Ok(());
        }
        self.push_with(|buf| crate::codec::encode(buf, args))
    }

    /// Appends up to `max` scalar items taken from `next` (see [`small_run`]); returns how
    /// many. A panic in `next` propagates.
    #[inline]
    pub(crate) fn push_small_run(
        &mut self,
        max: usize,
        next: impl FnMut() -> Option<Small>,
    ) -> usize {
        let layout = match self.fixed {
            Some(width) => Layout::Fixed(width),
            None => Layout::Prefixed(None),
        };
        let (n, caught) = small_run(&mut self.buf, layout, max, next);
        self.count += n as u32;
        if let Some(payload) = caught {
            std::panic::resume_unwind(payload);
        }
        n
    }

    /// Appends one item's arguments, already encoded as MessagePack.
    pub(crate) fn push_encoded(&mut self, args: &[u8]) -> Result<(), String> {
        self.push_with(|buf| {
            buf.extend_from_slice(args);
            Ok(())
        })
    }

    /// [`push`](Self::push) for arguments the job may keep: a `Vec<u8>` of at least
    /// [`SPLICE_MIN`] bytes is moved into the job instead of being copied into the frame (see
    /// `splice`); the frame on the wire is the same.
    pub(crate) fn push_owned<A: Serialize + 'static>(&mut self, args: A) -> Result<(), String> {
        let mut slot = Some(args);
        if let Some(bytes) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
            if bytes.as_ref().is_some_and(|b| b.len() >= SPLICE_MIN) && self.fixed.is_none() {
                let bytes = bytes.take().expect("checked just above");
                let (header, header_len) = crate::codec::bin_header(bytes.len())?;
                let prefix = item_len_prefix(header_len + bytes.len())?;
                self.buf.extend_from_slice(&prefix);
                self.buf.extend_from_slice(&header[..header_len]);
                self.spliced.push(self.buf.len(), bytes);
                self.count += 1;
                return Ok(());
            }
        }
        let args = slot.expect("taken only when spliced");
        self.push(&args)
    }

    /// [`push`](Self::push) for arguments of any type (without the byte-buffer fast path).
    pub(crate) fn push_any<A: Serialize + ?Sized>(&mut self, args: &A) -> Result<(), String> {
        self.push_with(|buf| crate::codec::encode_any(buf, args))
    }

    fn push_with(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        assert!(
            self.fixed.is_none(),
            "a fixed-width job takes only small runs"
        );
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        if let Err(err) = encode(&mut self.buf) {
            self.buf.truncate(start);
            return Err(err);
        }
        match item_len_prefix(self.buf.len() - start - 4) {
            Ok(prefix) => self.buf[start..start + 4].copy_from_slice(&prefix),
            Err(err) => {
                self.buf.truncate(start);
                return Err(err);
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Makes room for `more` items like the ones pushed so far (one reallocation instead of a
    /// dozen for a big chunk, each of which would copy and fault in fresh pages).
    /// The whole frame stays within `max_bytes` when given.
    pub(crate) fn reserve_like(&mut self, more: usize, max_bytes: Option<usize>) {
        if self.count > 0 {
            let per_item = (self.buf.len() - self.count_at - 4) / self.count as usize;
            let mut want = per_item.saturating_mul(more).saturating_mul(5) / 4;
            if let Some(max) = max_bytes {
                want = want.min(max.saturating_sub(self.buf.len()) + per_item);
            }
            self.buf.reserve(want);
        }
    }

    /// The frame's length so far (with its spliced buffers).
    pub(crate) fn len(&self) -> usize {
        self.buf.len() + self.spliced.len()
    }

    /// How many items the frame holds.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The finished frame, as one buffer.
    pub(crate) fn finish(self) -> Vec<u8> {
        let (head, spliced) = self.finish_spliced();
        spliced.flatten(head)
    }

    /// The finished frame: its own bytes, and the buffers spliced into them (see `splice`).
    pub(crate) fn finish_spliced(mut self) -> (Vec<u8>, Spliced) {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        (self.buf, self.spliced)
    }
}

/// The `len:u32` that precedes an item of `len` bytes in a job frame.
fn item_len_prefix(len: usize) -> Result<[u8; 4], String> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| "one item's arguments are larger than 4 GiB".to_owned())
}

/// The number of items in a job frame built by [`JobBuilder`] (0 if it is not one).
pub(crate) fn job_item_count(frame: &[u8]) -> u32 {
    let mut c = Cursor { rest: frame };
    let mut count = || -> Result<u32, FrameError> {
        if !matches!(c.u8("kind")?, KIND_JOB | KIND_JOB_FIXED) {
            return Ok(0);
        }
        let name_len = c.u16("name length")? as usize;
        c.take(name_len, "name")?;
        c.u32("count")
    };
    count().unwrap_or(0)
}

/// The frame that asks a worker to exit.
pub(crate) fn shutdown_frame() -> &'static [u8] {
    &[KIND_SHUTDOWN]
}

// ---------------------------------------------------------------------------------------------
// Worker side: reading jobs, writing results.

/// What the parent asked a worker to do.
#[derive(Debug)]
pub(crate) enum Request<'a> {
    /// Run `task` on each item.
    Job { task: &'a str, items: Items<'a> },
    /// Exit.
    Shutdown,
}

/// Parses a job or shutdown frame.
pub(crate) fn parse_request(frame: &[u8]) -> Result<Request<'_>, FrameError> {
    let mut c = Cursor { rest: frame };
    match c.u8("empty frame")? {
        KIND_SHUTDOWN => Ok(Request::Shutdown),
        KIND_JOB => {
            let name_len = c.u16("job: truncated name length")? as usize;
            let name = c.take(name_len, "job: truncated task name")?;
            let task = std::str::from_utf8(name).map_err(|_| FrameError("job: name not UTF-8"))?;
            let count = c.u32("job: truncated item count")?;
            Ok(Request::Job {
                task,
                items: Items {
                    c,
                    remaining: count,
                    width: None,
                },
            })
        }
        KIND_JOB_FIXED => {
            let name_len = c.u16("job: truncated name length")? as usize;
            let name = c.take(name_len, "job: truncated task name")?;
            let task = std::str::from_utf8(name).map_err(|_| FrameError("job: name not UTF-8"))?;
            let count = c.u32("job: truncated item count")?;
            let width = c.u8("job: truncated item width")?;
            if width == 0 {
                return Err(FrameError("job: items of width 0"));
            }
            Ok(Request::Job {
                task,
                items: Items {
                    c,
                    remaining: count,
                    width: Some(width),
                },
            })
        }
        _ => Err(FrameError("unknown request kind")),
    }
}

/// The encoded arguments of a job's items, in order.
#[derive(Debug)]
pub(crate) struct Items<'a> {
    c: Cursor<'a>,
    remaining: u32,
    /// The width of every item, in a fixed-width job.
    width: Option<u8>,
}

impl std::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cursor({} bytes)", self.rest.len())
    }
}

impl Items<'_> {
    /// How many items are left.
    pub(crate) fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Whether the job is a fixed-width one (a `map` of scalars).
    pub(crate) fn is_fixed(&self) -> bool {
        self.width.is_some()
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<&'a [u8], FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let item = match self.width {
            Some(width) => self.c.take(width.into(), "job: truncated item"),
            None => self
                .c
                .u32("job: truncated item length")
                .and_then(|len| self.c.take(len as usize, "job: truncated item")),
        };
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }
}

/// Writes a result frame into a reused buffer.
#[derive(Debug)]
pub(crate) struct ResultsWriter<'a> {
    buf: &'a mut Vec<u8>,
    count_at: usize,
    count: u32,
    errors: u32,
    /// The width of every value, while the frame is a fixed-width one.
    fixed: Option<u8>,
}

impl<'a> ResultsWriter<'a> {
    /// Clears `buf` and starts a result frame in it.
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        buf.clear();
        buf.push(KIND_RESULTS);
        buf.push(RESULTS_OK);
        let count_at = buf.len();
        buf.extend_from_slice(&[0u8; 8]);
        ResultsWriter {
            buf,
            count_at,
            count: 0,
            errors: 0,
            fixed: None,
        }
    }

    /// Makes the frame a fixed-width one, whose values are written only with
    /// [`ok_small_run`](Self::ok_small_run) as `Small::fixed` encodings of `width` bytes. Any
    /// other outcome first rewrites the frame into the general form ([`demote`](Self::demote)).
    /// Only before the first item.
    pub(crate) fn set_fixed(&mut self, width: u8) {
        assert!(self.count == 0 && self.fixed.is_none() && width > 0);
        self.buf[1] = RESULTS_FIXED;
        self.buf.push(width);
        self.fixed = Some(width);
    }

    /// Whether the frame is (still) a fixed-width one.
    pub(crate) fn is_fixed(&self) -> bool {
        self.fixed.is_some()
    }

    /// Rewrites a fixed-width frame into the general form, each value with its status and
    /// length, so that an outcome that is not a value can follow. Marks taken before are void.
    pub(crate) fn demote(&mut self) {
        let Some(width) = self.fixed.take() else {
            return;
        };
        let start = self.count_at + 8;
        let values = self.buf.split_off(start + 1);
        self.buf.truncate(start);
        self.buf[1] = RESULTS_OK;
        let len = u32::from(width).to_le_bytes();
        self.buf
            .reserve(values.len() / usize::from(width) * 5 + values.len());
        for value in values.chunks_exact(width.into()) {
            self.buf.push(ITEM_OK);
            self.buf.extend_from_slice(&len);
            self.buf.extend_from_slice(value);
        }
    }

    /// Clears `buf` and writes the frame that says the task name is unknown.
    pub(crate) fn unknown_task(buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(KIND_RESULTS);
        buf.push(RESULTS_UNKNOWN_TASK);
    }

    /// Appends a return value, or an encoding error if it does not encode.
    #[inline]
    pub(crate) fn ok<R: Serialize + 'static>(&mut self, value: &R) {
        self.demote();
        if let Some(small) = Small::of(value) {
            append_small(self.buf, Some(ITEM_OK), &small);
            self.count += 1;
            return;
        }
        let start = self.buf.len();
        self.buf.push(ITEM_OK);
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let encoded = crate::codec::encode(self.buf, value);
        let len = self.buf.len() - start - 5;
        match (encoded, u32::try_from(len)) {
            (Ok(()), Ok(len)) => {
                self.buf[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
                self.count += 1;
            }
            (Err(message), _) => {
                self.buf.truncate(start);
                self.error(ITEM_RESULT_ENCODE, &message);
            }
            (Ok(()), Err(_)) => {
                self.buf.truncate(start);
                self.error(ITEM_RESULT_ENCODE, "the result is larger than 4 GiB");
            }
        }
    }

    /// Appends a return value already encoded as MessagePack (from another engine's worker).
    pub(crate) fn ok_encoded(&mut self, value: &[u8]) -> Result<(), crate::Error> {
        self.demote();
        let len = u32::try_from(value.len())
            .map_err(|_| crate::Error::Protocol("a result larger than 4 GiB".into()))?;
        self.buf.push(ITEM_OK);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(value);
        self.count += 1;
        Ok(())
    }

    /// Appends up to `max` scalar return values taken from `next` (see [`small_run`]); returns
    /// how many, and the panic if `next` panicked (the values before it are kept).
    #[inline]
    pub(crate) fn ok_small_run(
        &mut self,
        max: usize,
        next: impl FnMut() -> Option<Small>,
    ) -> (usize, Option<Box<dyn std::any::Any + Send>>) {
        let layout = match self.fixed {
            Some(width) => Layout::Fixed(width),
            None => Layout::Prefixed(Some(ITEM_OK)),
        };
        let (n, caught) = small_run(self.buf, layout, max, next);
        self.count += n as u32;
        (n, caught)
    }

    /// Appends a panic with its message and location.
    pub(crate) fn panicked(&mut self, message: &str, location: Option<&str>) {
        self.demote();
        let location = location.unwrap_or("");
        let len = 4 + message.len() + location.len();
        self.header(ITEM_PANIC, len);
        self.buf
            .extend_from_slice(&(message.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(message.as_bytes());
        self.buf.extend_from_slice(location.as_bytes());
        self.count += 1;
        self.errors += 1;
    }

    /// Appends "the arguments did not decode".
    pub(crate) fn args_decode(&mut self, message: &str) {
        self.error(ITEM_ARGS_DECODE, message);
    }

    fn error(&mut self, status: u8, message: &str) {
        self.demote();
        // Messages are short; clip pathological ones so the length always fits.
        let message = &message[..floor_char_boundary(message, 1 << 20)];
        self.header(status, message.len());
        self.buf.extend_from_slice(message.as_bytes());
        self.count += 1;
        self.errors += 1;
    }

    fn header(&mut self, status: u8, len: usize) {
        self.buf.push(status);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
    }

    /// A point to [`rollback`](Self::rollback) to, taken between items. (Counts change only
    /// once an item's outcome is complete, so the frame's length is all a rollback needs.)
    #[inline]
    pub(crate) fn mark(&self) -> usize {
        self.buf.len()
    }

    /// Forgets what was written since `mark` (used when a panic interrupts an item).
    pub(crate) fn rollback(&mut self, mark: usize) {
        self.buf.truncate(mark);
    }

    /// Writes the item count; the frame is complete.
    pub(crate) fn finish(self) {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf[self.count_at + 4..self.count_at + 8].copy_from_slice(&self.errors.to_le_bytes());
    }
}

/// How the items of a [`small_run`] are laid out.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Each item preceded by `status` (for results) and its length as a little-endian `u32`.
    Prefixed(Option<u8>),
    /// Each item exactly this many bytes, nothing else (a fixed-width frame).
    Fixed(u8),
}

/// A small item as `layout` frames it. Returns the 16 bytes to store, as one little-endian
/// integer, and how many of them count.
#[inline(always)]
fn framed_small(layout: Layout, small: &Small) -> (u128, usize) {
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
fn store16(dst: &mut [std::mem::MaybeUninit<u8>], item: u128) {
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
fn append_small(buf: &mut Vec<u8>, status: Option<u8>, small: &Small) {
    let (item, n) = framed_small(Layout::Prefixed(status), small);
    buf.reserve(16);
    let len = buf.len();
    store16(buf.spare_capacity_mut(), item);
    // SAFETY: `reserve` made room for 16 more bytes and `store16` initialised them; `n` ≤ 14
    // of them become part of the vector.
    unsafe { buf.set_len(len + n) };
}

/// At most this many items go in one [`small_run`], so its reservation stays modest.
const RUN: usize = 4096;

/// Appends up to `max` (at most [`RUN`]) small items with their headers, taking them from
/// `next` until it returns `None`; returns how many were appended and, if `next` panicked, the
/// panic, with every item completed before it kept.
///
/// This is [`append_small`] for a stream of items: it writes into the spare capacity through a
/// local slice and position and sets the length once, where appending through the `Vec` would
/// reload its length and capacity after every store (bytes written through a pointer may
/// alias anything).
#[inline(always)]
fn small_run(
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
fn fill_small(
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

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// Parent side: reading results.

/// One item's outcome, borrowed from a result frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome<'a> {
    /// The MessagePack return value.
    Ok(&'a [u8]),
    /// The task panicked.
    Panicked {
        message: &'a str,
        location: Option<&'a str>,
    },
    /// The arguments did not decode.
    ArgsDecode(&'a str),
    /// The result did not encode.
    ResultEncode(&'a str),
}

impl Outcome<'_> {
    /// The error this outcome stands for, if it is one.
    pub(crate) fn to_error(self, task: &str) -> Option<crate::Error> {
        use crate::Error;
        match self {
            Outcome::Ok(_) => None,
            Outcome::Panicked { message, location } => Some(Error::Panicked {
                task: task.to_owned(),
                message: message.to_owned(),
                location: location.map(str::to_owned),
            }),
            Outcome::ArgsDecode(m) => Some(Error::ArgsDecode {
                task: task.to_owned(),
                message: m.to_owned(),
            }),
            Outcome::ResultEncode(m) => Some(Error::ResultEncode {
                task: task.to_owned(),
                message: m.to_owned(),
            }),
        }
    }
}

/// The outcomes in a result frame, in item order.
#[derive(Debug)]
pub(crate) struct Results<'a> {
    c: Cursor<'a>,
    remaining: u32,
    errors: u32,
    /// The width of every value, in a fixed-width frame.
    width: Option<u8>,
}

/// Parses a result frame's header. `Err(None)` means the worker does not know the task.
pub(crate) fn parse_results(frame: &[u8]) -> Result<Results<'_>, Option<FrameError>> {
    let mut c = Cursor { rest: frame };
    if c.u8("empty frame")? != KIND_RESULTS {
        return Err(Some(FrameError("expected a result frame")));
    }
    match c.u8("results: truncated status")? {
        status @ (RESULTS_OK | RESULTS_FIXED) => {
            let remaining = c.u32("results: truncated count")?;
            let errors = c.u32("results: truncated error count")?;
            let width = if status == RESULTS_FIXED {
                match c.u8("results: truncated width")? {
                    0 => return Err(Some(FrameError("results: values of width 0"))),
                    width => Some(width),
                }
            } else {
                None
            };
            Ok(Results {
                c,
                remaining,
                errors,
                width,
            })
        }
        RESULTS_UNKNOWN_TASK => Err(None),
        _ => Err(Some(FrameError("results: unknown status"))),
    }
}

impl<'a> Results<'a> {
    /// In a fixed-width frame: the width and the values still to read, exactly `remaining`
    /// of them (`None` if the frame is not fixed-width or its length does not match).
    pub(crate) fn fixed_values(&self) -> Option<(u8, &'a [u8])> {
        let width = self.width?;
        let len = usize::from(width).checked_mul(self.remaining as usize)?;
        (self.c.rest.len() == len).then_some((width, self.c.rest))
    }

    /// How many outcomes are left.
    pub(crate) fn remaining(&self) -> u32 {
        self.remaining
    }

    /// How many of the outcomes are errors, as the worker counted them.
    pub(crate) fn errors(&self) -> u32 {
        self.errors
    }
}

impl<'a> Iterator for Results<'a> {
    type Item = Result<Outcome<'a>, FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let outcome = self.read_one();
        if outcome.is_err() {
            self.remaining = 0;
        }
        Some(outcome)
    }
}

impl<'a> Results<'a> {
    #[inline]
    fn read_one(&mut self) -> Result<Outcome<'a>, FrameError> {
        if let Some(width) = self.width {
            return Ok(Outcome::Ok(
                self.c.take(width.into(), "results: truncated value")?,
            ));
        }
        let status = self.c.u8("results: truncated item status")?;
        let len = self.c.u32("results: truncated item length")? as usize;
        let bytes = self.c.take(len, "results: truncated item")?;
        if status == ITEM_OK {
            return Ok(Outcome::Ok(bytes));
        }
        Self::failure(status, bytes)
    }

    /// An outcome other than a value.
    #[cold]
    fn failure(status: u8, bytes: &'a [u8]) -> Result<Outcome<'a>, FrameError> {
        let text = |b: &'a [u8]| {
            std::str::from_utf8(b).map_err(|_| FrameError("results: message not UTF-8"))
        };
        match status {
            ITEM_PANIC => {
                let mut p = Cursor { rest: bytes };
                let msg_len = p.u32("panic: truncated message length")? as usize;
                let message = text(p.take(msg_len, "panic: truncated message")?)?;
                let location = text(p.rest)?;
                Ok(Outcome::Panicked {
                    message,
                    location: (!location.is_empty()).then_some(location),
                })
            }
            ITEM_ARGS_DECODE => Ok(Outcome::ArgsDecode(text(bytes)?)),
            ITEM_RESULT_ENCODE => Ok(Outcome::ResultEncode(text(bytes)?)),
            _ => Err(FrameError("results: unknown item status")),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn spliced_byte_buffers_make_the_same_frame() {
        let sizes = [0, 5, SPLICE_MIN - 1, SPLICE_MIN, 70_000, 0, 1 << 20];
        let blobs: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i * 13 + n) as u8).collect())
            .collect();
        let mut copied = JobBuilder::new("m::echo");
        let mut moved = JobBuilder::new("m::echo");
        for b in &blobs {
            copied.push(b).unwrap();
            moved.push_owned(b.clone()).unwrap();
        }
        assert_eq!(copied.len(), moved.len());
        let (head, spliced) = moved.finish_spliced();
        assert_eq!(spliced.len(), SPLICE_MIN + 70_000 + (1 << 20));
        // The one buffer under the threshold is copied in; no other.
        assert!(
            head.len() < SPLICE_MIN + 100,
            "a big buffer was copied: {}",
            head.len()
        );
        let flat = spliced.flatten(head);
        assert_eq!(flat, copied.finish());
        let Request::Job { mut items, .. } = parse_request(&flat).unwrap() else {
            panic!("not a job")
        };
        for b in &blobs {
            let item = items.next().unwrap().unwrap();
            assert_eq!(crate::codec::decode::<Vec<u8>>(item).unwrap(), *b);
        }
    }

    #[test]
    fn job_round_trip() {
        let mut b = JobBuilder::new("m::square");
        b.push(&3u64).unwrap();
        b.push(&(1i64, "x".to_string())).unwrap();
        assert_eq!(b.count(), 2);
        let frame = b.finish();
        let Request::Job { task, mut items } = parse_request(&frame).unwrap() else {
            panic!("not a job")
        };
        assert_eq!(task, "m::square");
        assert_eq!(job_item_count(&frame), 2);
        assert_eq!(items.remaining(), 2);
        let a: u64 = rmp_serde::from_slice(items.next().unwrap().unwrap()).unwrap();
        assert_eq!(a, 3);
        let b: (i64, String) = rmp_serde::from_slice(items.next().unwrap().unwrap()).unwrap();
        assert_eq!(b, (1, "x".to_owned()));
        assert!(items.next().is_none());
        assert!(matches!(
            parse_request(shutdown_frame()),
            Ok(Request::Shutdown)
        ));
    }

    #[test]
    fn results_round_trip() {
        let mut buf = Vec::new();
        let mut w = ResultsWriter::new(&mut buf);
        w.ok(&49u64);
        w.panicked("boom", Some("src/lib.rs:1:2"));
        w.panicked("quiet", None);
        w.args_decode("bad");
        w.finish();
        let mut r = parse_results(&buf).unwrap();
        assert_eq!(r.remaining(), 4);
        assert_eq!(r.errors(), 3);
        let Outcome::Ok(bytes) = r.next().unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(rmp_serde::from_slice::<u64>(bytes).unwrap(), 49);
        assert_eq!(
            r.next().unwrap().unwrap(),
            Outcome::Panicked {
                message: "boom",
                location: Some("src/lib.rs:1:2")
            }
        );
        assert_eq!(
            r.next().unwrap().unwrap(),
            Outcome::Panicked {
                message: "quiet",
                location: None
            }
        );
        assert_eq!(r.next().unwrap().unwrap(), Outcome::ArgsDecode("bad"));
        assert!(r.next().is_none());

        ResultsWriter::unknown_task(&mut buf);
        assert!(matches!(parse_results(&buf), Err(None)));
    }

    /// A run of fixed-width items with values of every size of encoding, as `map` sends them.
    fn fixed_job(values: &[u64]) -> Vec<u8> {
        let mut b = JobBuilder::fixed_in_buffer("m::square", Vec::new(), 9);
        let mut it = values.iter();
        while b.push_small_run(values.len(), || it.next().and_then(Small::fixed)) > 0 {}
        assert_eq!(b.count() as usize, values.len());
        b.finish()
    }

    #[test]
    fn fixed_width_jobs_and_results_round_trip() {
        let values = [0u64, 1, 127, 128, 255, 256, 65_536, 1 << 32, u64::MAX];
        let job = fixed_job(&values);
        assert_eq!(job_item_count(&job), values.len() as u32);
        let Request::Job { task, items } = parse_request(&job).unwrap() else {
            panic!("not a job")
        };
        assert_eq!(task, "m::square");
        assert!(items.is_fixed());
        let got: Vec<u64> = items
            .map(|item| rmp_serde::from_slice(item.unwrap()).unwrap())
            .collect();
        assert_eq!(got, values);

        let mut buf = Vec::new();
        let mut w = ResultsWriter::new(&mut buf);
        w.set_fixed(9);
        let mut it = values.iter();
        w.ok_small_run(values.len(), || it.next().and_then(Small::fixed));
        assert!(w.is_fixed());
        w.finish();
        assert_eq!(buf.len(), 11 + 9 * values.len());
        let r = parse_results(&buf).unwrap();
        assert_eq!((r.remaining(), r.errors()), (values.len() as u32, 0));
        assert_eq!(r.fixed_values().unwrap().0, 9);
        let got: Vec<u64> = r
            .map(|o| match o.unwrap() {
                Outcome::Ok(bytes) => rmp_serde::from_slice(bytes).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, values);
    }

    /// A failure after fixed-width values rewrites them into the general form, in order.
    #[test]
    fn fixed_width_results_turn_general_at_the_first_failure() {
        let mut buf = Vec::new();
        let mut w = ResultsWriter::new(&mut buf);
        w.set_fixed(9);
        let mut n = 0u64;
        let (count, caught) = w.ok_small_run(10, || {
            n += 1;
            if n == 4 {
                panic!("the fourth");
            }
            Small::fixed(&(n * n))
        });
        assert_eq!(count, 3);
        assert!(caught.is_some());
        w.panicked("the fourth", None);
        assert!(!w.is_fixed());
        w.ok(&25u64);
        let mut it = [36u64, 49].into_iter();
        w.ok_small_run(2, || it.next().as_ref().and_then(Small::of));
        w.finish();
        let r = parse_results(&buf).unwrap();
        assert!(r.fixed_values().is_none());
        assert_eq!((r.remaining(), r.errors()), (7, 1));
        let got: Vec<Option<u64>> = r
            .map(|o| match o.unwrap() {
                Outcome::Ok(bytes) => Some(rmp_serde::from_slice(bytes).unwrap()),
                Outcome::Panicked { message, .. } => {
                    assert_eq!(message, "the fourth");
                    None
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                Some(1),
                Some(4),
                Some(9),
                None,
                Some(25),
                Some(36),
                Some(49)
            ]
        );
    }

    #[test]
    fn fixed_width_garbage_never_panics() {
        let job = fixed_job(&[1, 2, 3]);
        let mut res = Vec::new();
        let mut w = ResultsWriter::new(&mut res);
        w.set_fixed(9);
        let mut it = [4u64, 5].iter();
        w.ok_small_run(2, || it.next().and_then(Small::fixed));
        w.finish();
        for cut in 0..job.len() {
            if let Ok(Request::Job { items, .. }) = parse_request(&job[..cut]) {
                assert!(items.count() <= 3);
            }
        }
        for cut in 0..res.len() {
            if let Ok(r) = parse_results(&res[..cut]) {
                assert!(r.fixed_values().is_none(), "a cut frame is not whole");
                for o in r {
                    let _ = o;
                }
            }
        }
        // Width 0 is refused, not looped on.
        let mut zero = job.clone();
        let at = zero.len() - 3 * 9 - 1;
        zero[at] = 0;
        assert!(parse_request(&zero).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // Every prefix of valid frames, and some random bytes, decode to values or errors.
        let mut b = JobBuilder::new("t");
        b.push(&vec![1u8; 40]).unwrap();
        b.push(&7u32).unwrap();
        let job = b.finish();
        let mut res = Vec::new();
        let mut w = ResultsWriter::new(&mut res);
        w.ok(&"hello".to_string());
        w.panicked("p", Some("l"));
        w.finish();
        for cut in 0..job.len() {
            if let Ok(Request::Job { items, .. }) = parse_request(&job[..cut]) {
                for item in items {
                    let _ = item;
                }
            }
        }
        for cut in 0..res.len() {
            if let Ok(r) = parse_results(&res[..cut]) {
                for o in r {
                    let _ = o;
                }
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8 % 5);
            }
            if let Ok(Request::Job { items, .. }) = parse_request(&bytes) {
                items.for_each(drop);
            }
            if let Ok(r) = parse_results(&bytes) {
                r.for_each(drop);
            }
        }
    }
}
