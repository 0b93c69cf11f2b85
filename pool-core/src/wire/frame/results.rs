//! Result frames: what a worker sends back (written by [`ResultsWriter`], read by
//! [`parse_results`]).

use serde::Serialize;

use super::small::*;
use super::*;
use crate::wire::codec::Small;

/// Where a worker sends a partial result frame (see [`ResultsWriter::flush_to`]).
pub(crate) type Flush<'a> = &'a mut dyn FnMut(&[u8]);

/// How long a job runs between partial result frames, at least (ns): a chunk shorter than this
/// (a `map` of tiny items) sends none.
pub(crate) const FLUSH_NS: u64 = 20_000_000;

/// Writes a result frame into a reused buffer.
pub(crate) struct ResultsWriter<'a> {
    buf: &'a mut Vec<u8>,
    count_at: usize,
    count: u32,
    errors: u32,
    /// The width of every value, while the frame is a fixed-width one.
    fixed: Option<u8>,
    /// Partial frames go here (in a worker running a job of several items).
    flush: Option<Flush<'a>>,
    /// Items to write before the clock is read again, and how many that was last time.
    until_check: u32,
    check_every: u32,
    last_check_ns: u64,
    last_flush_ns: u64,
}

impl std::fmt::Debug for ResultsWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultsWriter")
            .field("count", &self.count)
            .field("errors", &self.errors)
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
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
            flush: None,
            until_check: u32::MAX,
            check_every: 1,
            last_check_ns: 0,
            last_flush_ns: 0,
        }
    }

    /// In a worker, for a job of several items: every [`FLUSH_NS`] or so, the outcomes written
    /// so far go to `flush` as a complete result frame of their own (a partial frame), and the
    /// writer starts a new frame for the items after them. The clock is read adaptively: every
    /// item while items are slow, every few thousand while they are tiny.
    pub(crate) fn flush_to(&mut self, flush: Flush<'a>) {
        let now = crate::sys::monotonic_ns();
        self.flush = Some(flush);
        self.until_check = 1;
        self.check_every = 1;
        self.last_check_ns = now;
        self.last_flush_ns = now;
    }

    /// After `n` items were written: reads the clock when due, and sends a partial frame when
    /// [`FLUSH_NS`] have passed since the last.
    #[inline]
    fn items_done(&mut self, n: u32) {
        if self.flush.is_none() {
            return;
        }
        self.until_check = self.until_check.saturating_sub(n);
        if self.until_check == 0 {
            self.check();
        }
    }

    #[cold]
    fn check(&mut self) {
        let now = crate::sys::monotonic_ns();
        let since = now.saturating_sub(self.last_check_ns);
        // Aim at a clock read about every millisecond of work.
        self.check_every = if since < 500_000 {
            (self.check_every * 2).min(1 << 16)
        } else if since > 2_000_000 {
            (self.check_every / 2).max(1)
        } else {
            self.check_every
        };
        self.until_check = self.check_every;
        self.last_check_ns = now;
        if now.saturating_sub(self.last_flush_ns) >= FLUSH_NS && self.count > 0 {
            self.last_flush_ns = now;
            self.send_partial();
        }
    }

    /// Sends the outcomes written so far as a frame of their own, and starts a new one.
    fn send_partial(&mut self) {
        self.write_counts();
        if let Some(flush) = self.flush.as_mut() {
            flush(self.buf);
        }
        let fixed = self.fixed;
        self.buf.clear();
        self.buf.push(KIND_RESULTS);
        self.buf.push(RESULTS_OK);
        self.count_at = self.buf.len();
        self.buf.extend_from_slice(&[0u8; 8]);
        self.count = 0;
        self.errors = 0;
        self.fixed = None;
        if let Some(width) = fixed {
            self.set_fixed(width);
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

    /// Clears `buf` and writes the frame that answers a job cancelled before it began (the
    /// parent, which cancelled it, answers the caller itself).
    pub(crate) fn skipped(buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(KIND_RESULTS);
        buf.push(RESULTS_SKIPPED);
    }

    /// Appends a return value, or an encoding error if it does not encode.
    #[inline]
    pub(crate) fn ok<R: Serialize + 'static>(&mut self, value: &R) {
        self.demote();
        if let Some(small) = Small::of(value) {
            append_small(self.buf, Some(ITEM_OK), &small);
            self.count += 1;
            self.items_done(1);
            return;
        }
        let start = self.buf.len();
        self.buf.push(ITEM_OK);
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let encoded = crate::wire::codec::encode(self.buf, value);
        let len = self.buf.len() - start - 5;
        match (encoded, u32::try_from(len)) {
            (Ok(()), Ok(len)) => {
                self.buf[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
                self.count += 1;
                self.items_done(1);
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
        self.items_done(1);
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
        self.items_done(n as u32);
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
        self.items_done(1);
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
        self.items_done(1);
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
    pub(crate) fn finish(mut self) {
        self.write_counts();
    }

    fn write_counts(&mut self) {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf[self.count_at + 4..self.count_at + 8].copy_from_slice(&self.errors.to_le_bytes());
    }
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
    /// The worker died under this item (written by the parent when it split the job).
    WorkerDied {
        pid: i32,
        cause: crate::ExitCause,
        attempts: u32,
    },
    /// This item ran past its time limit (written by the parent when it split the job).
    Timeout {
        limit: std::time::Duration,
        pid: i32,
        attempts: u32,
    },
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
            Outcome::WorkerDied {
                pid,
                cause,
                attempts,
            } => Some(Error::WorkerDied {
                task: task.to_owned(),
                pid,
                cause,
                attempts,
            }),
            Outcome::Timeout {
                limit,
                pid,
                attempts,
            } => Some(Error::Timeout {
                task: task.to_owned(),
                limit,
                pid,
                attempts,
            }),
        }
    }
}

/// The outcomes in a result frame, in item order.
#[derive(Debug)]
pub(crate) struct Results<'a> {
    pub(super) c: Cursor<'a>,
    pub(super) remaining: u32,
    errors: u32,
    /// The width of every value, in a fixed-width frame.
    width: Option<u8>,
}

/// A result frame's header: what [`parse_results`] reads before the outcomes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    remaining: u32,
    errors: u32,
    width: Option<u8>,
    /// Where the outcomes start.
    body: usize,
}

/// A result frame as it arrived from a worker (or another engine), with its header parsed once,
/// where it arrives: everything after — counting its failures, checking it against the items
/// it answers, decoding it — starts from [`results`](Self::results), which does not parse the
/// header again.
#[derive(Debug)]
pub(crate) struct ResultFrame {
    bytes: Vec<u8>,
    /// `Err(None)`: the worker does not know the task.
    header: Result<Header, Option<FrameError>>,
}

impl ResultFrame {
    /// Takes a frame's bytes and parses its header.
    pub(crate) fn parse(bytes: Vec<u8>) -> Self {
        let header = parse_results(&bytes).map(|r| Header {
            remaining: r.remaining,
            errors: r.errors,
            width: r.width,
            body: bytes.len() - r.c.rest.len(),
        });
        ResultFrame { bytes, header }
    }

    /// A frame that answers nothing (a placeholder until a part arrives).
    pub(crate) fn empty() -> Self {
        ResultFrame {
            bytes: Vec::new(),
            header: Err(Some(FrameError("no frame"))),
        }
    }

    /// The outcomes, from the header parsed on arrival.
    pub(crate) fn results(&self) -> Result<Results<'_>, Option<FrameError>> {
        let h = self.header?;
        Ok(Results {
            c: Cursor {
                rest: &self.bytes[h.body..],
            },
            remaining: h.remaining,
            errors: h.errors,
            width: h.width,
        })
    }

    /// How many of `items` failed, as the worker counted them (all of them if the frame is not
    /// one the parent can read).
    pub(crate) fn failed(&self, items: u32) -> u32 {
        self.header.map_or(items, |h| h.errors)
    }

    /// The frame's size in bytes.
    pub(crate) fn len_hint(&self) -> usize {
        self.bytes.len()
    }

    /// Whether an item of the frame panicked.
    pub(crate) fn has_panic(&self) -> bool {
        self.results().is_ok_and(|results| {
            results
                .into_iter()
                .any(|o| matches!(o, Ok(Outcome::Panicked { .. })))
        })
    }

    /// The buffer, for reuse.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
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
        RESULTS_SKIPPED => Err(Some(FrameError("the job was cancelled before it began"))),
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
            ITEM_WORKER_DIED => {
                let (pid, cause, attempts) = super::split::worker_died(bytes)?;
                Ok(Outcome::WorkerDied {
                    pid,
                    cause,
                    attempts,
                })
            }
            ITEM_TIMEOUT => {
                let (limit, pid, attempts) = super::split::timeout(bytes)?;
                Ok(Outcome::Timeout {
                    limit,
                    pid,
                    attempts,
                })
            }
            _ => Err(FrameError("results: unknown item status")),
        }
    }
}
