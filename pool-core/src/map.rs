//! The map engine of the local pool: `map` (blocking, decoding each chunk's results as they
//! arrive while the next chunks are encoded) and `map_async` (every chunk submitted up front),
//! with the input counted without trusting its size hint, and chunks encoded in reused buffers.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::job::{Job, Sink, TaskName};
use crate::result::{decode_all, Counts, ResultCell};
use crate::wire::frame::JobBuilder;
use crate::wire::splice::Spliced;
use crate::{sys, AsyncResult, Error, Pool, Task};

/// The maps, as the caller sees them.
impl Pool {
    /// Applies `task` to every item and returns the results in order, failing with the first
    /// error (as Python's `map` raises).
    ///
    /// Items travel in chunks (one frame per chunk); the default chunk size is Python's,
    /// `ceil(n / (4 × processes))`, and a chunk also ends once it holds 128 KiB of encoded
    /// arguments. See [`map_chunked`](Self::map_chunked) to choose an exact size. Results are
    /// decoded into the output as chunks come back, while later chunks are encoded and run, with
    /// at most 16 MiB of chunks in flight. A task that takes and returns scalars (integers,
    /// floats, `bool`) takes a faster path: fixed-width items, read and written in tight loops.
    /// A task that takes a `Vec<u8>` gets each buffer of 64 KiB or more moved into its job, not
    /// copied: the collector copies it straight into the worker's shared memory, and this
    /// thread frees it once its result is back.
    ///
    /// The error returned is always the first in item order. Unlike Python's `map`, which runs
    /// every item before it raises, this one stops submitting chunks once it has that error:
    /// chunks already sent finish in the background (they still count in
    /// [`stats`](Self::stats)) and their results are dropped, so how many items after the
    /// failing one ran depends on timing.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let v = pool.map(square, 0..10_000)?;
    /// assert_eq!(v.len(), 10_000);
    /// assert_eq!(v[100], 10_000);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map<T, I>(&self, _task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_now::<T, _>(
            iter,
            n,
            self.default_chunksize(n),
            Some(DEFAULT_CHUNK_BYTES),
        )
    }

    /// [`map`](Self::map) with `chunksize` items per frame (at least 1). Larger chunks cost
    /// less per item; smaller ones balance uneven work better.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.map_chunked(square, 0..5, 2)?, [0, 1, 4, 9, 16]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_now::<T, _>(iter, n, chunksize.clamp(1, u32::MAX as usize), None)
    }

    /// Like [`map`](Self::map), but returns at once with a handle to the whole result.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let r = pool.map_async(square, vec![1, 2, 3]);
    /// assert_eq!(r.get()?, vec![1, 4, 9]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_async<T, I>(&self, _task: T, items: I) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_exact::<T, _>(iter, n, self.default_chunksize(n))
    }

    /// [`map_async`](Self::map_async) with `chunksize` items per frame (at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let r = pool.map_async_chunked(square, 0..1000, 100);
    /// assert_eq!(r.get()?.len(), 1000);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_async_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let (iter, n) = counted(items);
        self.map_exact::<T, _>(iter, n, chunksize.clamp(1, u32::MAX as usize))
    }

    /// [`map`](Self::map) that keeps every item's own outcome: one failed item (a panic, bad
    /// arguments, its worker dying under it, its time limit) is an `Err` in its place, and every
    /// other item still has its value. The outer `Err` is for failures of the whole call (the
    /// pool terminated or closed, used from another process, broken). When a worker dies in the
    /// middle of a chunk, only the item it was running fails (or runs again, under
    /// [`retries`](crate::PoolBuilder::retries)); the items it had reported (a worker running a
    /// long chunk reports every 20 ms) keep their results, and the others run again elsewhere.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    ///
    /// #[task]
    /// fn fragile(x: u64) -> u64 {
    ///     if x == 7 {
    ///         std::process::abort(); // takes its worker down
    ///     }
    ///     x * 10
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out = pool.map_results_chunked(fragile, 0..100, 10)?;
    /// assert!(matches!(out[7], Err(Error::WorkerDied { .. })));
    /// assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 99);
    /// assert_eq!(*out[8].as_ref().unwrap(), 80);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn map_results<T, I>(
        &self,
        task: T,
        items: I,
    ) -> Result<Vec<Result<T::Output, Error>>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let items: Vec<T::Args> = items.into_iter().collect();
        let chunksize = self.default_chunksize(items.len());
        self.map_results_chunked(task, items, chunksize)
    }

    /// [`map_results`](Self::map_results) with `chunksize` items per frame.
    pub fn map_results_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<Result<T::Output, Error>>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        <Self as crate::Executor>::map_results_chunked(self, task, items, chunksize)
    }

    /// [`map`](Self::map) with a progress bar (rate and ETA) on standard error, advanced as
    /// results arrive; hidden when standard error is not a terminal. Feature `progress`.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let v = pool.map_with_progress(square, 0..10_000)?;
    /// assert_eq!(v[9_999], 9_999 * 9_999);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn map_with_progress<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let items: Vec<T::Args> = items.into_iter().collect();
        let n = items.len();
        // Smaller chunks than `map`'s default, so the bar moves smoothly.
        let chunksize = n.div_ceil(64 * self.processes).max(1);
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
            )
            .expect("a valid template"),
        );
        let mut out = Vec::with_capacity(n);
        for result in self.imap_chunked(task, items, chunksize) {
            match result {
                Ok(value) => out.push(value),
                Err(err) => {
                    bar.abandon();
                    return Err(err);
                }
            }
            bar.inc(1);
        }
        bar.finish();
        Ok(out)
    }
}

/// The engine behind them.
impl Pool {
    /// The blocking `map`: submits chunks as they are encoded and decodes each result as it
    /// arrives — between submissions, then while waiting for the rest — so encoding, the
    /// workers' computing and decoding overlap instead of following one another. With
    /// `max_bytes`, a chunk also ends once its frame holds that many bytes.
    pub(crate) fn map_now<T: Task, I: Iterator<Item = T::Args>>(
        &self,
        mut iter: I,
        n: usize,
        chunksize: usize,
        max_bytes: Option<usize>,
    ) -> Result<Vec<T::Output>, Error> {
        self.shared.owner.check()?;
        let (sink, rx) = crate::imap::ChannelSink::with_given_back(true);
        // Results are decoded straight onto the end of `out` in chunk order; a chunk that comes
        // back before its turn waits, undecoded, in `early` (workers finish chunks in about the
        // order they took them, so it stays small). `early[i]` is chunk `next + i`.
        let mut out: Vec<T::Output> = Vec::with_capacity(n);
        let mut early: VecDeque<Option<crate::wire::frame::ResultFrame>> = VecDeque::new();
        // Decoded result frames, whose buffers the next chunks are built in.
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut flight = InFlight::default();
        let mut next = 0usize;
        let mut take = |(index, result): crate::imap::Delivery,
                        flight: &mut InFlight,
                        out: &mut Vec<T::Output>,
                        spare: &mut Vec<Vec<u8>>|
         -> Result<(), Error> {
            let index = index as usize;
            let (count, size, spliced) = flight.chunks[index];
            if spliced {
                // Given back before the outcome was delivered (see `Job::complete`).
                sink.free_given_back();
            }
            flight.pending -= 1;
            flight.bytes -= size;
            let frame = result?;
            crate::result::check_frame(&frame, T::NAME, count)?;
            let at = index - next;
            if early.len() <= at {
                early.resize_with(at + 1, || None);
            }
            early[at] = Some(frame);
            while let Some(Some(_)) = early.front() {
                let frame = early.pop_front().flatten().expect("just checked");
                sys::prefault(out, flight.chunks[next].0 as usize);
                crate::result::decode_into(&frame, T::NAME, out)?;
                spare.push(frame.into_bytes());
                next += 1;
            }
            Ok(())
        };
        // Bytes of job frames in flight at once: enough to keep every worker busy while the
        // next chunk is encoded, bounded so that memory stays bounded and the result buffers
        // come back to be reused for the next chunks. At least two chunks per worker go,
        // however big.
        let mut left = n;
        while left > 0 {
            while flight.pending >= 2 * self.processes.max(1) && flight.bytes > MAX_IN_FLIGHT_BYTES
            {
                let delivery = rx.recv().expect("the sink holds a sender");
                take(delivery, &mut flight, &mut out, &mut spare)?;
            }
            let want = chunksize.min(left) as u32;
            let buf = spare.pop().unwrap_or_default();
            let (frame, spliced, count) = encode_chunk::<T>(buf, &mut iter, want, n, max_bytes)?;
            let size = frame.len() + spliced.len();
            left -= count as usize;
            flight.chunks.push((count, size, !spliced.is_empty()));
            flight.pending += 1;
            flight.bytes += size;
            let sink: Arc<dyn Sink> = sink.clone();
            let part = flight.chunks.len() - 1;
            self.submit_recycled((frame, spliced), T::NAME.into(), sink, part);
            while let Ok(delivery) = rx.try_recv() {
                take(delivery, &mut flight, &mut out, &mut spare)?;
            }
        }
        // `n` came from the iterator's size hint: an iterator that yields more than it promised
        // fails the map rather than losing the rest (see `counted`).
        if iter.next().is_some() {
            return Err(too_many(n));
        }
        while flight.pending > 0 {
            // Every submitted chunk is answered exactly once (see `Job`), and `sink` keeps the
            // channel open, so this wait ends.
            let delivery = rx.recv().expect("the sink holds a sender");
            take(delivery, &mut flight, &mut out, &mut spare)?;
        }
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }

    /// Python's default: `ceil(n / (4 × processes))`.
    pub(crate) fn default_chunksize(&self, n: usize) -> usize {
        n.div_ceil(4 * self.processes).max(1)
    }

    /// Submits `n` items in chunks as they are encoded, so workers start on the first chunk
    /// while the caller encodes the next.
    pub(crate) fn map_exact<T: Task, I: Iterator<Item = T::Args>>(
        &self,
        mut iter: I,
        n: usize,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>> {
        if let Err(err) = self.shared.owner.check() {
            let slot = ResultCell::new(
                T::NAME.into(),
                Counts::Many(vec![0]),
                decode_all::<T::Output>,
            );
            slot.complete_part(0, Err(err));
            return AsyncResult::new(slot);
        }
        let counts = chunk_counts(n, chunksize);
        if counts.is_empty() && iter.next().is_some() {
            let slot = ResultCell::new(
                T::NAME.into(),
                Counts::Many(vec![0]),
                decode_all::<T::Output>,
            );
            slot.complete_part(0, Err(too_many(n)));
            return AsyncResult::new(slot);
        }
        let slot = ResultCell::new(
            T::NAME.into(),
            Counts::Many(counts.clone()),
            decode_all::<T::Output>,
        );
        let last = counts.len().wrapping_sub(1);
        for (index, &count) in counts.iter().enumerate() {
            let encoded = encode_chunk::<T>(Vec::new(), &mut iter, count, n, None);
            // Checked before the last chunk goes, so the map fails as a whole (see `counted`).
            let encoded = match encoded {
                Ok(_) if index == last && iter.next().is_some() => Err(too_many(n)),
                other => other,
            };
            match encoded {
                Ok((frame, spliced, _)) => {
                    self.submit_frame((frame, spliced), T::NAME.into(), slot.clone(), index)
                }
                Err(err) => {
                    // The whole map fails with this error; nothing more is submitted.
                    slot.complete_part(index, Err(err));
                    break;
                }
            }
        }
        AsyncResult::new(slot)
    }

    /// [`submit_frame`](Self::submit_frame) for a submitter that reuses the result's buffer for
    /// its next job (see `Job::recycle`).
    pub(crate) fn submit_recycled(
        &self,
        (frame, spliced): (Vec<u8>, Spliced),
        task: TaskName,
        sink: Arc<dyn Sink>,
        part: usize,
    ) {
        let mut job = Job::with_spliced((frame, spliced), task, sink, part);
        job.recycle = true;
        self.shared.submit(job);
    }
}

/// An input whose length is known: the iterator itself when its size hint is exact, otherwise
/// its items collected first (as Python's `map` does).
///
/// A size hint is only a hint: an iterator may break it. Every user of a `Counted` therefore
/// checks both ways — `encode_chunk` fails when the input ends before `n` items, and the maps
/// check that nothing follows the `n`th ([`too_many`]) — so a lying hint fails the map with
/// [`Error::BadIterator`] and never drops or invents an item.
pub(crate) enum Counted<I: Iterator> {
    Exact(I),
    Collected(std::vec::IntoIter<I::Item>),
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        match self {
            Counted::Exact(iter) => iter.next(),
            Counted::Collected(iter) => iter.next(),
        }
    }
}

pub(crate) fn counted<I: IntoIterator>(items: I) -> (Counted<I::IntoIter>, usize) {
    let iter = items.into_iter();
    match iter.size_hint() {
        (lo, Some(hi)) if lo == hi => (Counted::Exact(iter), lo),
        _ => {
            let items: Vec<I::Item> = iter.collect();
            let n = items.len();
            (Counted::Collected(items.into_iter()), n)
        }
    }
}

/// The error for an input that yielded more items than its exact size hint promised.
fn too_many(n: usize) -> Error {
    Error::BadIterator(format!(
        "its size_hint promised exactly {n} items and it yielded more"
    ))
}

/// How many items each chunk of a map of `n` items holds.
fn chunk_counts(n: usize, chunksize: usize) -> Vec<u32> {
    (0..n.div_ceil(chunksize))
        .map(|c| chunksize.min(n - c * chunksize) as u32)
        .collect()
}

/// With the default chunk size, a chunk of a blocking `map` also ends once its frame holds this
/// many bytes: a frame larger than a ring goes through in pieces, each a hand-over between the
/// processes, and a frame this small, with its results, stays in the caches of the cores that
/// copy it (here `map` of 40 M `u64` ran at 55 M/s with 1 MiB frames, 66 M/s with 128 KiB).
pub(crate) const DEFAULT_CHUNK_BYTES: usize = 128 << 10;

/// The chunks of a blocking `map`: each one's item count, frame length and whether buffers are
/// spliced into it, and how many of them, and how many bytes, are in flight.
#[derive(Default)]
struct InFlight {
    chunks: Vec<(u32, usize, bool)>,
    pending: usize,
    bytes: usize,
}

/// A blocking `map` waits for results before it submits more once its job frames in flight
/// hold this many bytes (and every worker has two chunks).
const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;

/// Encodes the next `count` items of a map of `n` into one job frame, built in `buf` (a
/// recycled buffer, or a new one), with fewer items (at least one) if the frame reaches
/// `max_bytes` first. Returns the frame and how many items it holds. Scalar arguments make a
/// fixed-width frame.
pub(crate) fn encode_chunk<T: Task>(
    buf: Vec<u8>,
    iter: &mut impl Iterator<Item = T::Args>,
    count: u32,
    n: usize,
    max_bytes: Option<usize>,
) -> Result<(Vec<u8>, Spliced, u32), Error> {
    let ended_early = || {
        Error::BadIterator(format!(
            "its size_hint promised exactly {n} items and it ended early"
        ))
    };
    if let Some(width) = crate::wire::codec::fixed_width::<T::Args>() {
        // Scalars (which always encode): a fixed-width job, written in runs of items in a
        // tight loop. `max_bytes` is checked between runs, so a frame may pass it by one run.
        let mut builder = JobBuilder::fixed_in_buffer(T::NAME, buf, width);
        while builder.count() < count && max_bytes.is_none_or(|max| builder.len() < max) {
            let mut ended = false;
            builder.push_small_run((count - builder.count()) as usize, || match iter.next() {
                Some(args) => crate::wire::codec::Small::fixed(&args),
                None => {
                    ended = true;
                    None
                }
            });
            if ended {
                return Err(ended_early());
            }
        }
        let count = builder.count();
        let (frame, spliced) = builder.finish_spliced();
        return Ok((frame, spliced, count));
    }
    let mut builder = JobBuilder::in_buffer(T::NAME, buf);
    while builder.count() < count {
        let Some(args) = iter.next() else {
            return Err(ended_early());
        };
        builder
            .push_owned(args)
            .map_err(|message| Error::ArgsEncode {
                task: T::NAME.to_owned(),
                message,
            })?;
        if builder.count() == 1 && count > 64 {
            // One allocation for a big chunk, instead of a dozen that copy and fault in pages.
            builder.reserve_like(count as usize - 1, max_bytes);
        }
        if max_bytes.is_some_and(|max| builder.len() >= max) {
            break;
        }
    }
    let count = builder.count();
    let (frame, spliced) = builder.finish_spliced();
    Ok((frame, spliced, count))
}
