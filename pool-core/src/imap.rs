//! [`Imap`]: lazy `imap` and `imap_unordered`, with a bounded number of chunks in flight.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::engine::{Engine, JobFrame, JobSink};
use crate::job::Sink;
use crate::owner::Owner;
use crate::result::{decode_value, frame_error};
use crate::wire::frame::{Outcome, ResultFrame};
use crate::wire::splice::Spliced;
use crate::{Error, Pool, Task};

pub(crate) type Delivery = (u64, Result<ResultFrame, Error>);

/// Sends each chunk's outcome, with its index, to the iterator, and wakes it when it is polled
/// as a `Stream`.
pub(crate) struct ChannelSink {
    tx: Sender<Delivery>,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    /// Spliced buffers given back, for the receiver to free on its own thread; `None` when
    /// they are freed where they are given back (see [`Sink::give_back`]).
    given_back: Option<std::sync::Mutex<Vec<Spliced>>>,
    /// Set when the iterator is cancelled or dropped with chunks out: the engine must not
    /// begin them, and stops the ones running.
    cancelled: std::sync::atomic::AtomicBool,
}

impl ChannelSink {
    /// A sink and the receiver of what it is given.
    pub(crate) fn new() -> (Arc<Self>, Receiver<Delivery>) {
        Self::with_given_back(false)
    }

    /// [`new`](Self::new) for a receiver that frees the buffers its jobs carried itself, with
    /// [`free_given_back`](Self::free_given_back) after it takes the delivery of a job that
    /// carried some (they are given back before the outcome is delivered). The collector
    /// then spends no time unmapping them: for big buffers that is a system call and a TLB
    /// flush each, on the thread that feeds every worker.
    pub(crate) fn with_given_back(given_back: bool) -> (Arc<Self>, Receiver<Delivery>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = Arc::new(ChannelSink {
            tx,
            waker: std::sync::Mutex::new(None),
            given_back: given_back.then(|| std::sync::Mutex::new(Vec::new())),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        });
        (sink, rx)
    }

    /// Marks every chunk of this sink cancelled; returns whether it was not already.
    pub(crate) fn cancel(&self) -> bool {
        !self
            .cancelled
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Frees the buffers given back so far, on the calling thread.
    pub(crate) fn free_given_back(&self) {
        if let Some(given_back) = &self.given_back {
            let buffers = std::mem::take(
                &mut *given_back
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            drop(buffers);
        }
    }
}

impl Sink for ChannelSink {
    fn is_cancelled(&self, _part: usize) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn give_back(&self, spliced: Spliced) {
        match &self.given_back {
            Some(given_back) => {
                given_back
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(spliced);
            }
            None => drop(spliced),
        }
    }

    fn deliver(&self, part: usize, outcome: Result<ResultFrame, Error>) {
        // The iterator may be gone; then the outcome is simply dropped.
        let _ = self.tx.send((part as u64, outcome));
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The iterator returned by [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) (and their `_chunked` forms), and by
/// every other [`Executor`](crate::Executor) (`pool_redis::RedisPool`): one `Result` per input item, computed by the pool's workers.
///
/// It pulls its input lazily and keeps at most a few chunks per worker in flight, so it works
/// over an endless iterator with flat memory (unlike Python's, which drains the input first).
/// The ordered form yields results in input order; the unordered form yields chunks as they
/// finish. A failed item yields its error and the iteration goes on.
///
/// Dropping the iterator early cancels the chunks it has not received, as
/// [`cancel`](Self::cancel) does: those not begun never begin, and running ones are stopped
/// (on a local pool; see [`AsyncResult::cancel`](crate::AsyncResult::cancel)).
///
/// If the input iterator panics, the items it yielded before the panic are still computed and
/// yielded, in order; the panic then resumes from `next` (as CPython's `imap` raises the
/// input's exception after the results before it).
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
/// // An endless input: only what is consumed is computed (plus a bounded look-ahead).
/// let firsts: Vec<u64> = pool.imap(square, 0..).take(5).collect::<Result<_, _>>()?;
/// assert_eq!(firsts, [0, 1, 4, 9, 16]);
///
/// let mut any_order: Vec<u64> = pool.imap_unordered(square, 0..100).collect::<Result<_, _>>()?;
/// any_order.sort();
/// assert_eq!(any_order[99], 99 * 99);
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct Imap<'a, T: Task, I> {
    /// The engine that runs the chunks: a local [`Pool`](crate::Pool), or another (pool-redis).
    engine: &'a dyn Engine,
    /// The engine's process: in any other, the iterator yields `WrongProcess` once and ends.
    owner: Owner,
    input: Option<I>,
    chunksize: usize,
    ordered: bool,
    max_in_flight: usize,
    /// Forwards each chunk's outcome to `rx`; shared by all chunks. Holding it keeps `rx`
    /// connected.
    sink: Arc<ChannelSink>,
    rx: Receiver<Delivery>,
    /// Index of the next chunk to submit.
    next_chunk: u64,
    /// Index of the next chunk to yield (ordered form).
    next_yield: u64,
    /// Item counts of the chunks submitted and not yet received.
    in_flight: HashMap<u64, u32>,
    /// Chunks that arrived ahead of their turn (ordered form).
    early: HashMap<u64, Result<ResultFrame, Error>>,
    /// Decoded items ready to yield.
    ready: VecDeque<Result<T::Output, Error>>,
    /// The payload of a panic of the input iterator, raised again once every item before it
    /// has been yielded.
    input_panic: Option<Box<dyn std::any::Any + Send>>,
}

impl<'a, T: Task, I: Iterator<Item = T::Args>> Imap<'a, T, I> {
    /// The results of `T` over `input`, run by `engine`, `chunksize` items a job, in input
    /// order (`ordered`) or as they come. Public (hidden) for other engines (pool-redis).
    #[doc(hidden)]
    pub fn on_engine(engine: &'a dyn Engine, input: I, chunksize: usize, ordered: bool) -> Self {
        let (sink, rx) = ChannelSink::new();
        Imap {
            sink,
            owner: engine.owner(),
            engine,
            input: Some(input),
            chunksize: chunksize.max(1),
            ordered,
            max_in_flight: engine.lookahead().max(1),
            rx,
            next_chunk: 0,
            next_yield: 0,
            in_flight: HashMap::new(),
            early: HashMap::new(),
            ready: VecDeque::new(),
            input_panic: None,
        }
    }

    /// Submits chunks until the look-ahead is full or the input ends.
    fn fill(&mut self) {
        while self.in_flight.len() < self.max_in_flight {
            let Some(input) = &mut self.input else { return };
            let mut builder = crate::wire::frame::JobBuilder::new(T::NAME);
            let mut encode_error = None;
            while (builder.count() as usize) < self.chunksize {
                // A panic of the input is held until every item before it has been yielded,
                // as CPython's `imap` raises the input's exception only after those results.
                let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.next()));
                let Ok(Some(args)) = next else {
                    if let Err(payload) = next {
                        self.input_panic = Some(payload);
                    }
                    self.input = None;
                    break;
                };
                if let Err(message) = builder.push_owned(args) {
                    encode_error = Some(message);
                    break;
                }
            }
            let index = self.next_chunk;
            if let Some(message) = encode_error {
                // This chunk fails as a whole (with chunk size 1, exactly the item that failed).
                let count = builder.count() + 1;
                self.next_chunk += 1;
                self.in_flight.insert(index, count);
                let err = Error::ArgsEncode {
                    task: T::NAME.to_owned(),
                    message,
                };
                self.sink.deliver(index as usize, Err(err));
                continue;
            }
            let count = builder.count();
            if count == 0 {
                return;
            }
            self.next_chunk += 1;
            self.in_flight.insert(index, count);
            let (frame, spliced) = builder.finish_spliced();
            let job = JobFrame {
                frame,
                spliced,
                task: T::NAME.into(),
            };
            let sink: Arc<dyn Sink> = self.sink.clone();
            self.engine.submit_job(
                job,
                JobSink {
                    sink,
                    part: index as usize,
                },
            );
            if !self.engine.accepts_work() {
                // No more work will be accepted: stop pulling input.
                self.input = None;
            }
        }
    }

    /// Decodes a received chunk into `ready`.
    fn unpack(&mut self, index: u64, result: Result<ResultFrame, Error>) {
        let count = self.in_flight.remove(&index).unwrap_or(0) as usize;
        unpack_into::<T::Output>(T::NAME, count, result, &mut self.ready);
    }
}

/// The lazy maps of the local pool.
impl Pool {
    /// A lazy, ordered map: an iterator of one `Result` per item, in input order, with chunk
    /// size 1 (as in Python). See [`Imap`].
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
    /// for (i, r) in pool.imap(square, 0..10).enumerate() {
    ///     assert_eq!(r?, (i * i) as u64);
    /// }
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_chunked(task, items, 1)
    }

    /// [`imap`](Self::imap) with `chunksize` items per frame.
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
    /// let total: u64 = pool.imap_chunked(square, 0..10_000, 256).map(Result::unwrap).sum();
    /// assert_eq!(total, (0..10_000u64).map(|x| x * x).sum::<u64>());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Imap::on_engine(self, items.into_iter(), chunksize, true)
    }

    /// Like [`imap`](Self::imap), but yields each chunk's results as soon as it finishes,
    /// whatever its position.
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
    /// let mut v: Vec<u64> = pool.imap_unordered(square, 0..5).collect::<Result<_, _>>()?;
    /// v.sort();
    /// assert_eq!(v, [0, 1, 4, 9, 16]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap_unordered<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_unordered_chunked(task, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) with `chunksize` items per frame.
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
    /// let n = pool.imap_unordered_chunked(square, 0..1000, 50).count();
    /// assert_eq!(n, 1000);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn imap_unordered_chunked<T, I>(
        &self,
        _task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Imap::on_engine(self, items.into_iter(), chunksize, false)
    }
}

/// Decodes a chunk's outcome into one `Result` per item (exactly `count` of them) at the end of
/// `ready`.
pub(crate) fn unpack_into<R: serde::de::DeserializeOwned + 'static>(
    task: &str,
    count: usize,
    result: Result<ResultFrame, Error>,
    ready: &mut VecDeque<Result<R, Error>>,
) {
    let frame = match result {
        Ok(frame) => frame,
        Err(err) => {
            ready.extend((0..count).map(|_| Err(err.clone())));
            return;
        }
    };
    let results = match frame.results() {
        Ok(results) if results.remaining() as usize == count => results,
        Ok(results) => {
            let err = Error::Protocol(format!(
                "expected {count} results, the worker sent {}",
                results.remaining()
            ));
            ready.extend((0..count).map(|_| Err(err.clone())));
            return;
        }
        Err(err) => {
            let err = frame_error(err, task);
            ready.extend((0..count).map(|_| Err(err.clone())));
            return;
        }
    };
    let start = ready.len();
    for outcome in results {
        ready.push_back(match outcome {
            Ok(Outcome::Ok(bytes)) => decode_value(bytes, task),
            Ok(other) => Err(other.to_error(task).expect("not Ok")),
            Err(err) => Err(err.into()),
        });
    }
    // A torn frame stops early: the items it lost still get an answer each.
    while ready.len() - start < count {
        ready.push_back(Err(Error::Protocol(
            "a result frame ended early".to_owned(),
        )));
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Imap<'_, T, I> {
    /// Moves the iteration on: `Some(next)` when the next item (or the end) is known, `None`
    /// when `receive` had nothing to give (only a non-blocking `receive` returns `None`).
    fn advance(
        &mut self,
        mut receive: impl FnMut(&Receiver<Delivery>) -> Option<Delivery>,
    ) -> Option<Option<Result<T::Output, Error>>> {
        // In a process forked from the pool's, nothing would ever arrive: one error, then the
        // end, without touching the channel (its lock may have been held at the fork).
        if !self.owner.is_here() {
            let pending = self.input.take().is_some() || !self.in_flight.is_empty();
            if pending || !self.ready.is_empty() {
                self.in_flight.clear();
                self.ready.clear();
                return Some(Some(Err(self.owner.error())));
            }
            return Some(None);
        }
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Some(item));
            }
            self.fill();
            if self.in_flight.is_empty() {
                if let Some(payload) = self.input_panic.take() {
                    // Every result before the input's panic has been yielded: now the panic.
                    std::panic::resume_unwind(payload);
                }
                return Some(None);
            }
            if self.ordered {
                if let Some(result) = self.early.remove(&self.next_yield) {
                    let index = self.next_yield;
                    self.next_yield += 1;
                    self.unpack(index, result);
                    continue;
                }
            }
            let (index, result) = receive(&self.rx)?;
            if self.ordered && index != self.next_yield {
                self.early.insert(index, result);
                continue;
            }
            if self.ordered {
                self.next_yield += 1;
            }
            self.unpack(index, result);
        }
    }
}

impl<T: Task, I> Imap<'_, T, I> {
    /// Cancels the chunks not yet received and ends the iteration: chunks not begun never
    /// begin, and running ones are asked to stop ([`cancelled()`](crate::cancelled) turns true
    /// in their tasks) and stopped after the pool's cancel grace, as with
    /// [`AsyncResult::cancel`](crate::AsyncResult::cancel). No more input is read. Returns
    /// whether anything was left to cancel. Dropping the iterator does the same.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    /// use std::time::Duration;
    ///
    /// #[task]
    /// fn slow(x: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(20));
    ///     x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut it = pool.imap(slow, 0..1_000);
    /// assert_eq!(it.next().transpose()?, Some(0));
    /// assert!(it.cancel()); // the other 999 are not run
    /// assert!(it.next().is_none());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn cancel(&mut self) -> bool {
        if !self.owner.is_here() {
            return false;
        }
        let pending = self.input.is_some() || !self.in_flight.is_empty();
        self.input = None;
        self.input_panic = None;
        self.in_flight.clear();
        self.early.clear();
        self.ready.clear();
        if self.sink.cancel() {
            crate::cancel::requested();
        }
        pending
    }
}

impl<T: Task, I> Drop for Imap<'_, T, I> {
    fn drop(&mut self) {
        if !self.in_flight.is_empty() && self.owner.is_here() && self.sink.cancel() {
            crate::cancel::requested();
        }
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Iterator for Imap<'_, T, I> {
    type Item = Result<T::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        // Every submitted chunk is answered exactly once (see `Job`), and we hold a sender, so
        // this wait ends.
        self.advance(|rx| Some(rx.recv().expect("the iterator holds a sender")))
            .expect("a blocking receive always gives a delivery")
    }
}

/// With feature `stream`, an `Imap` is also a `futures_core::Stream`, for async code: it never
/// blocks, and the pool's collector thread wakes the task when a chunk arrives.
///
/// ```
/// # #[cfg(feature = "stream")] {
/// use futures_core::Stream;
/// use pool_core::{task, Pool};
/// use std::pin::Pin;
/// use std::task::{Context, Poll, Waker};
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::builder().processes(2).build()?;
/// let mut stream = pool.imap(square, 0..100);
/// let mut cx = Context::from_waker(Waker::noop());
/// let mut sum = 0;
/// loop {
///     match Pin::new(&mut stream).poll_next(&mut cx) {
///         Poll::Ready(Some(x)) => sum += x?,
///         Poll::Ready(None) => break,
///         Poll::Pending => std::thread::yield_now(), // a real executor would sleep here
///     }
/// }
/// assert_eq!(sum, 328_350);
/// # }
/// # Ok::<(), pool_core::Error>(())
/// ```
#[cfg(feature = "stream")]
impl<T: Task, I: Iterator<Item = T::Args>> futures_core::Stream for Imap<'_, T, I> {
    type Item = Result<T::Output, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let sink = Arc::clone(&this.sink);
        let step = this.advance(|rx| {
            if let Ok(delivery) = rx.try_recv() {
                return Some(delivery);
            }
            // Register, then look again: a delivery between the two is not missed.
            *sink
                .waker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.waker().clone());
            rx.try_recv().ok()
        });
        match step {
            Some(item) => std::task::Poll::Ready(item),
            None => std::task::Poll::Pending,
        }
    }
}

// `Imap` never relies on its fields staying in place (no pin projection), so it may move freely
// even while polled as a `Stream`.
impl<T: Task, I> Unpin for Imap<'_, T, I> {}

impl<T: Task, I> fmt::Debug for Imap<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("task", &T::NAME)
            .field("chunksize", &self.chunksize)
            .field("ordered", &self.ordered)
            .field("chunks_in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}
