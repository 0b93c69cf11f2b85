//! Job frames: what the parent sends a worker (built by [`JobBuilder`], read by
//! [`parse_request`]).

use std::any::Any;

use serde::Serialize;

use super::small::*;
use super::*;
use crate::wire::codec::Small;
use crate::wire::splice::{Spliced, SPLICE_MIN};

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
        self.push_with(|buf| crate::wire::codec::encode(buf, args))
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
                let (header, header_len) = crate::wire::codec::bin_header(bytes.len())?;
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
        self.push_with(|buf| crate::wire::codec::encode_any(buf, args))
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
                    progress: None,
                    taken: 0,
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
                    progress: None,
                    taken: 0,
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
    pub(super) width: Option<u8>,
    /// In a worker: where to publish the index of the item being run (see `report_to`).
    progress: Option<&'a std::sync::atomic::AtomicU64>,
    /// How many items have been taken.
    taken: u64,
}

impl<'a> Items<'a> {
    /// In a worker: publishes to `word` the index of each item as it is taken, which is also
    /// how many items of the job are done, so that the parent knows which item was running if
    /// the worker dies (one relaxed store per item).
    /// A job of one item reports nothing: if its worker dies, that item is the one.
    pub(crate) fn report_to(&mut self, word: &'a std::sync::atomic::AtomicU64) {
        if self.remaining > 1 {
            word.store(0, std::sync::atomic::Ordering::Relaxed);
            self.progress = Some(word);
        }
    }

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
        if let Some(word) = self.progress {
            word.store(self.taken, std::sync::atomic::Ordering::Relaxed);
        }
        self.taken += 1;
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
