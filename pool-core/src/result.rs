//! [`AsyncResult`]: the handle to a result that is still being computed.

use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::job::TaskName;
use crate::owner::Owner;
use crate::wire::frame::{self, Outcome};
use crate::Error;

/// Turns the result frames of all parts into the caller's value.
type Decode<T> = fn(&[Vec<u8>], &str) -> Result<T, Error>;
type OnSuccess<T> = Box<dyn FnOnce(T) + Send>;
type OnError = Box<dyn FnOnce(Error) + Send>;

/// Where the parts of one result (one frame for `apply`, one per chunk for `map`) come together.
pub(crate) struct Slot<T> {
    task: TaskName,
    decode: Decode<T>,
    state: Mutex<State<T>>,
    ready: Condvar,
    /// `state.done`, readable without the lock, for a short spin before sleeping.
    done: AtomicBool,
}

/// How long a waiter spins before it sleeps: most round trips to a worker are shorter, and a
/// sleeping thread takes several microseconds to wake.
const SPIN: Duration = Duration::from_micros(30);

struct State<T> {
    /// Result frames by part; all present once `outcome` is `Ok`.
    parts: Parts,
    /// How many items each part must hold (checked against what the worker sent).
    expected: Counts,
    remaining: usize,
    /// Set when the last part arrived or the first error did (boxed: errors are large and
    /// rare, and a burst of a million pending results should stay small).
    outcome: Option<Result<(), Box<Error>>>,
    /// Set once the callbacks, if any, have run: waiters wake only then, as in Python.
    done: bool,
    /// Callbacks and wakers, allocated only when there are some.
    extras: Option<Box<Extras<T>>>,
    /// Threads blocked in `wait_until`: the condvar is signalled only when there are some
    /// (signalling costs a system call even with no waiter).
    waiters: u32,
}

struct Extras<T> {
    on_success: Option<OnSuccess<T>>,
    on_error: Option<OnError>,
    /// Tasks awaiting the result as a `Future`.
    wakers: Vec<Waker>,
}

impl<T> State<T> {
    fn extras(&mut self) -> &mut Extras<T> {
        self.extras.get_or_insert_with(|| {
            Box::new(Extras {
                on_success: None,
                on_error: None,
                wakers: Vec::new(),
            })
        })
    }
}

/// The result frames of a slot. One part (an `apply`) needs no allocation of its own.
enum Parts {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

impl Parts {
    fn as_slice(&self) -> &[Vec<u8>] {
        match self {
            Parts::One(frame) => std::slice::from_ref(frame),
            Parts::Many(frames) => frames,
        }
    }

    fn set(&mut self, index: usize, frame: Vec<u8>) {
        match self {
            Parts::One(slot) => *slot = frame,
            Parts::Many(frames) => frames[index] = frame,
        }
    }
}

/// How many items each part of a slot holds.
#[derive(Debug, Clone)]
pub(crate) enum Counts {
    /// A single part.
    One(u32),
    /// Several parts, one count each.
    Many(Vec<u32>),
}

impl Counts {
    fn len(&self) -> usize {
        match self {
            Counts::One(_) => 1,
            Counts::Many(counts) => counts.len(),
        }
    }

    fn get(&self, index: usize) -> u32 {
        match self {
            Counts::One(count) => *count,
            Counts::Many(counts) => counts[index],
        }
    }
}

impl<T> Slot<T> {
    /// A slot awaiting one part per entry of `expected`, each holding that many items.
    pub(crate) fn new(task: TaskName, expected: Counts, decode: Decode<T>) -> Arc<Self> {
        let parts = expected.len();
        let slot = Arc::new(Slot {
            task,
            decode,
            state: Mutex::new(State {
                parts: match expected {
                    Counts::One(_) => Parts::One(Vec::new()),
                    Counts::Many(_) => Parts::Many(vec![Vec::new(); parts]),
                },
                expected,
                remaining: parts,
                outcome: None,
                done: false,
                extras: None,
                waiters: 0,
            }),
            ready: Condvar::new(),
            done: AtomicBool::new(false),
        });
        if parts == 0 {
            slot.finish(slot.lock(), Ok(()));
        }
        slot
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers part `index`. The first error wins; later parts are then ignored.
    pub(crate) fn complete_part(&self, index: usize, result: Result<Vec<u8>, Error>) {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return;
        }
        let checked = result.and_then(|frame| {
            check_frame(&frame, &self.task, state.expected.get(index)).map(|()| frame)
        });
        match checked {
            Err(err) => self.finish(state, Err(err)),
            Ok(frame) => {
                state.parts.set(index, frame);
                state.remaining -= 1;
                if state.remaining == 0 {
                    self.finish(state, Ok(()));
                }
            }
        }
    }

    /// Records the outcome, runs the callbacks (outside the lock), then wakes the waiters.
    fn finish(&self, mut state: MutexGuard<'_, State<T>>, outcome: Result<(), Error>) {
        state.outcome = Some(outcome.map_err(Box::new));
        let extras = state.extras.take();
        let (on_success, on_error, wakers) = match extras {
            Some(e) => {
                let e = *e;
                (e.on_success, e.on_error, e.wakers)
            }
            None => (None, None, Vec::new()),
        };
        let waiters = if on_success.is_some() || on_error.is_some() {
            let value = self.value_for_callbacks(&state, on_success.is_some());
            drop(state);
            run_callbacks(value, on_success, on_error);
            let mut state = self.lock();
            state.done = true;
            self.done.store(true, Ordering::Release);
            state.waiters
        } else {
            state.done = true;
            self.done.store(true, Ordering::Release);
            state.waiters
        };
        if waiters > 0 {
            self.ready.notify_all();
        }
        for waker in wakers {
            waker.wake();
        }
    }

    /// The value or error the callbacks get; decodes only when a success callback wants it.
    fn value_for_callbacks(&self, state: &State<T>, decode: bool) -> Option<Result<T, Error>> {
        match state.outcome.as_ref()? {
            Err(err) => Some(Err((**err).clone())),
            Ok(()) if decode => Some((self.decode)(state.parts.as_slice(), &self.task)),
            Ok(()) => None,
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, State<T>> {
        if !self.done.load(Ordering::Acquire) {
            let spin_until = Instant::now() + SPIN;
            let limit = deadline.map_or(spin_until, |d| d.min(spin_until));
            let mut i = 0u32;
            while !self.done.load(Ordering::Acquire) && Instant::now() < limit {
                i += 1;
                if i % 32 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        let mut state = self.lock();
        while !state.done {
            state.waiters += 1;
            state = match deadline {
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.waiters -= 1;
                        break;
                    }
                    self.ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.waiters -= 1;
        }
        state
    }

    fn get_from(&self, state: &State<T>) -> Result<T, Error> {
        match state.outcome.as_ref() {
            Some(Ok(())) => (self.decode)(state.parts.as_slice(), &self.task),
            Some(Err(err)) => Err((**err).clone()),
            None => unreachable!("get_from is called once the slot is done"),
        }
    }
}

impl<T: 'static> crate::job::Sink for Slot<T> {
    fn deliver(&self, part: usize, outcome: Result<Vec<u8>, Error>) {
        self.complete_part(part, outcome);
    }
}

fn run_callbacks<T>(
    value: Option<Result<T, Error>>,
    on_success: Option<OnSuccess<T>>,
    on_error: Option<OnError>,
) {
    // A panicking callback must not take down the thread that delivers results; the panic hook
    // has already reported it.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || match value {
        Some(Ok(v)) => {
            if let Some(f) = on_success {
                f(v)
            }
        }
        Some(Err(e)) => {
            if let Some(f) = on_error {
                f(e)
            }
        }
        None => {}
    }));
}

/// Checks a result frame's structure and item count, and returns the first error it carries.
pub(crate) fn check_frame(frame: &[u8], task: &str, expected: u32) -> Result<(), Error> {
    let results = frame::parse_results(frame).map_err(|e| frame_error(e, task))?;
    if results.remaining() != expected {
        return Err(Error::Protocol(format!(
            "expected {expected} results, the worker sent {}",
            results.remaining()
        )));
    }
    if results.errors() == 0 {
        // Items are checked one by one as they are decoded; a frame that lies about its
        // errors only makes the error surface there instead of here.
        return Ok(());
    }
    for outcome in results {
        if let Some(err) = outcome?.to_error(task) {
            return Err(err);
        }
    }
    Ok(())
}

/// The error for a result frame whose header does not parse (`None`: the task is unknown).
pub(crate) fn frame_error(err: Option<frame::FrameError>, task: &str) -> Error {
    match err {
        None => Error::UnknownTask {
            name: task.to_owned(),
        },
        Some(err) => err.into(),
    }
}

/// Decodes one MessagePack value of the task's return type.
#[inline]
pub(crate) fn decode_value<R: DeserializeOwned + 'static>(
    bytes: &[u8],
    task: &str,
) -> Result<R, Error> {
    crate::wire::codec::decode(bytes).map_err(|message| Error::ResultDecode {
        task: task.to_owned(),
        message,
    })
}

/// Every item of every part, in order, through `item` (the parts are checked already).
fn collect_items<R>(
    parts: &[Vec<u8>],
    task: &str,
    mut item: impl FnMut(&[u8]) -> Result<R, Error>,
) -> Result<Vec<R>, Error> {
    let mut out = Vec::new();
    for part in parts {
        collect_into(part, task, &mut out, &mut item)?;
    }
    Ok(out)
}

/// Appends every item of one checked result frame to `out`, through `item`.
#[inline]
fn collect_into<R>(
    part: &[u8],
    task: &str,
    out: &mut Vec<R>,
    mut item: impl FnMut(&[u8]) -> Result<R, Error>,
) -> Result<(), Error> {
    let results = frame::parse_results(part).map_err(|e| frame_error(e, task))?;
    out.reserve(results.remaining() as usize);
    for outcome in results {
        match outcome? {
            Outcome::Ok(bytes) => out.push(item(bytes)?),
            other => return Err(other.to_error(task).expect("not Ok")),
        }
    }
    Ok(())
}

/// Decodes every item of every part, in order (the parts are checked already).
pub(crate) fn decode_all<R: DeserializeOwned + 'static>(
    parts: &[Vec<u8>],
    task: &str,
) -> Result<Vec<R>, Error> {
    collect_items(parts, task, |bytes| decode_value(bytes, task))
}

/// Decodes every item of one checked result frame onto the end of `out`.
pub(crate) fn decode_into<R: DeserializeOwned + 'static>(
    part: &[u8],
    task: &str,
    out: &mut Vec<R>,
) -> Result<(), Error> {
    if crate::wire::codec::is_scalar::<R>() {
        return decode_scalars_into(part, task, out);
    }
    collect_into(part, task, out, |bytes| decode_value(bytes, task))
}

/// [`decode_into`] for scalar results (a `map` of `u64`, say): values are written straight
/// into the spare capacity through a local slice and index, and the length is set once; pushing
/// would reload the vector's length and capacity after every value.
fn decode_scalars_into<R: DeserializeOwned + 'static>(
    part: &[u8],
    task: &str,
    out: &mut Vec<R>,
) -> Result<(), Error> {
    let results = frame::parse_results(part).map_err(|e| frame_error(e, task))?;
    let count = results.remaining() as usize;
    out.reserve(count);
    let len = out.len();
    let mut done = 0;
    let result = fill_scalars(
        results,
        &mut out.spare_capacity_mut()[..count],
        &mut done,
        task,
    );
    // SAFETY: `fill_scalars` initialised the first `done` slots of the spare capacity.
    unsafe { out.set_len(len + done) };
    result
}

/// The loop of [`decode_scalars_into`]; `done` counts the slots written, also on an error.
#[inline(always)]
fn fill_scalars<R: DeserializeOwned + 'static>(
    results: frame::Results<'_>,
    spare: &mut [std::mem::MaybeUninit<R>],
    done: &mut usize,
    task: &str,
) -> Result<(), Error> {
    let mut i = 0;
    if let Some((width, values)) = results.fixed_values() {
        if Some(width) == crate::wire::codec::fixed_width::<R>() {
            // A fixed-width frame of values of this very type: the tightest loop.
            for (bytes, slot) in values.chunks_exact(width.into()).zip(spare.iter_mut()) {
                let value = match crate::wire::codec::decode_fixed::<R>(bytes) {
                    Some(value) => value,
                    None => match decode_value(bytes, task) {
                        Ok(value) => value,
                        Err(err) => {
                            *done = i;
                            return Err(err);
                        }
                    },
                };
                slot.write(value);
                i += 1;
            }
            *done = i;
            return Ok(());
        }
    }
    let result = (|| {
        for outcome in results {
            let value = match outcome? {
                Outcome::Ok(bytes) => match crate::wire::codec::decode_scalar::<R>(bytes) {
                    Some(value) => value,
                    None => decode_value(bytes, task)?,
                },
                other => return Err(other.to_error(task).expect("not Ok")),
            };
            let Some(slot) = spare.get_mut(i) else {
                return Err(Error::Protocol(
                    "more results than the frame counts".to_owned(),
                ));
            };
            slot.write(value);
            i += 1;
        }
        Ok(())
    })();
    *done = i;
    result
}

/// Every item of every part as its raw MessagePack bytes, in order (the parts are checked).
pub(crate) fn encoded_all(parts: &[Vec<u8>], task: &str) -> Result<Vec<Vec<u8>>, Error> {
    collect_items(parts, task, |bytes| Ok(bytes.to_vec()))
}

/// Decodes the single item of a single part.
pub(crate) fn decode_one<R: DeserializeOwned + 'static>(
    parts: &[Vec<u8>],
    task: &str,
) -> Result<R, Error> {
    // Without collecting into a vector first: one allocation fewer per `apply`.
    let one = || Error::Protocol("expected exactly one result".to_owned());
    let [part] = parts else {
        return Err(one());
    };
    let mut results = frame::parse_results(part).map_err(|e| frame_error(e, task))?;
    if results.remaining() != 1 {
        return Err(one());
    }
    match results.next().ok_or_else(one)?? {
        Outcome::Ok(bytes) => decode_value(bytes, task),
        other => Err(other.to_error(task).expect("not Ok")),
    }
}

/// The result of work submitted with [`Pool::apply_async`](crate::Pool::apply_async) or
/// [`Pool::map_async`](crate::Pool::map_async), available once a worker has finished it.
///
/// Waiting never hangs on a failure: a worker that dies, a pool that is terminated or dropped,
/// each resolves the result to an error.
///
/// # Examples
///
/// ```
/// use pool_core::{task, Pool};
/// use std::time::Duration;
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::builder().processes(2).build()?;
/// let r = pool.apply_async(square, 9);
/// r.wait();
/// assert!(r.ready());
/// assert_eq!(r.successful(), Some(true));
/// assert_eq!(r.get()?, 81);
/// assert_eq!(r.get_timeout(Duration::from_secs(1))?, 81); // a result can be read again
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct AsyncResult<T> {
    slot: Arc<Slot<T>>,
    /// The process whose pool delivers the result. In any other process (a forked child) the
    /// result is resolved at once to [`Error::WrongProcess`], without touching the slot, whose
    /// lock may have been held at the fork.
    owner: Owner,
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(slot: Arc<Slot<T>>) -> Self {
        AsyncResult {
            slot,
            owner: Owner::here(),
        }
    }

    /// The error this result resolves to in a process other than its pool's.
    #[inline]
    fn foreign(&self) -> Option<Error> {
        (!self.owner.is_here()).then(|| self.owner.error())
    }

    /// Blocks until the result is ready, then returns it (or the task's error).
    ///
    /// The value is decoded from the worker's reply on each call, so `get` may be called more
    /// than once.
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
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async(square, 6);
    /// assert_eq!(r.get()?, 36);
    /// assert_eq!(r.get()?, 36);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn get(&self) -> Result<T, Error> {
        self.owner.check()?;
        let state = self.slot.wait_until(None);
        self.slot.get_from(&state)
    }

    /// Like [`get`](Self::get), but gives up after `timeout` with [`Error::WaitTimeout`]; the
    /// task goes on and can be waited for again.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::time::Duration;
    ///
    /// #[task]
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async(nap, 200);
    /// assert!(matches!(r.get_timeout(Duration::from_millis(1)), Err(Error::WaitTimeout(_))));
    /// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 200);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.owner.check()?;
        let state = self.slot.wait_until(Some(Instant::now() + timeout));
        if !state.done {
            return Err(Error::WaitTimeout(timeout));
        }
        self.slot.get_from(&state)
    }

    /// Blocks until the result is ready.
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
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async(square, 2);
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn wait(&self) {
        if self.foreign().is_some() {
            return;
        }
        drop(self.slot.wait_until(None));
    }

    /// Blocks until the result is ready or `timeout` has passed; returns whether it is ready.
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
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async(square, 2);
    /// assert!(r.wait_timeout(std::time::Duration::from_secs(10)));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        if self.foreign().is_some() {
            return true;
        }
        self.slot.wait_until(Some(Instant::now() + timeout)).done
    }

    /// Whether the result is ready (successful or not).
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
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async(square, 2);
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        if self.foreign().is_some() {
            return true;
        }
        self.slot.lock().done
    }

    /// `Some(true)` if the work finished without error, `Some(false)` if it failed, `None` while
    /// it is not ready. (Python raises `ValueError` for the last case.)
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn fail() -> u8 {
    ///     panic!("no")
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async(fail, ());
    /// r.wait();
    /// assert_eq!(r.successful(), Some(false));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn successful(&self) -> Option<bool> {
        if self.foreign().is_some() {
            return Some(false);
        }
        let state = self.slot.lock();
        if !state.done {
            return None;
        }
        state.outcome.as_ref().map(Result::is_ok)
    }

    /// Runs `f` with the value when the work succeeds.
    ///
    /// As in Python, the callback runs in the parent, on the pool's thread that received the
    /// result (so it should be quick), and before any [`get`](Self::get) returns. If the result
    /// is already ready, `f` runs at once on the calling thread. A panic in `f` is caught and
    /// does not affect the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    /// use std::sync::mpsc;
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let (tx, rx) = mpsc::channel();
    /// let tx2 = tx.clone();
    /// pool.apply_async(square, 5)
    ///     .on_success(move |v| tx.send(Ok(v)).unwrap())
    ///     .on_error(move |e| tx2.send(Err(e.to_string())).unwrap());
    /// assert_eq!(rx.recv().unwrap(), Ok(25));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn on_success(self, f: impl FnOnce(T) + Send + 'static) -> Self {
        if self.foreign().is_some() {
            return self; // resolved to an error here: a success callback never runs
        }
        let mut state = self.slot.lock();
        if state.outcome.is_none() {
            state.extras().on_success = Some(Box::new(f));
            drop(state);
        } else {
            let value = self.slot.value_for_callbacks(&state, true);
            drop(state);
            run_callbacks(value, Some(Box::new(f)), None);
        }
        self
    }

    /// Runs `f` with the error when the work fails. Runs like [`on_success`](Self::on_success).
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::sync::mpsc;
    ///
    /// #[task]
    /// fn fail() -> u8 {
    ///     panic!("no")
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async(fail, ()).on_error(move |e| tx.send(e).unwrap());
    /// assert!(matches!(rx.recv().unwrap(), Error::Panicked { .. }));
    /// assert!(r.get().is_err());
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn on_error(self, f: impl FnOnce(Error) + Send + 'static) -> Self {
        if let Some(err) = self.foreign() {
            run_callbacks::<T>(Some(Err(err)), None, Some(Box::new(f)));
            return self;
        }
        let mut state = self.slot.lock();
        if state.outcome.is_none() {
            state.extras().on_error = Some(Box::new(f));
            drop(state);
        } else {
            let value = self.slot.value_for_callbacks(&state, false);
            drop(state);
            run_callbacks::<T>(value, None, Some(Box::new(f)));
        }
        self
    }
}

/// An `AsyncResult` is a `Future` too, so async code can `.await` pool work. It needs no
/// particular runtime: the pool's collector thread wakes the awaiting task.
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
/// let r = pool.apply_async(square, 12);
/// // Any executor will do; here, a minimal one that parks the thread.
/// let value = block_on(r)?;
/// assert_eq!(value, 144);
///
/// fn block_on<F: std::future::Future>(f: F) -> F::Output {
///     use std::sync::Arc;
///     use std::task::{Context, Poll, Wake};
///     struct Unpark(std::thread::Thread);
///     impl Wake for Unpark {
///         fn wake(self: Arc<Self>) {
///             self.0.unpark();
///         }
///     }
///     let waker = Arc::new(Unpark(std::thread::current())).into();
///     let mut cx = Context::from_waker(&waker);
///     let mut f = std::pin::pin!(f);
///     loop {
///         match f.as_mut().poll(&mut cx) {
///             Poll::Ready(v) => return v,
///             Poll::Pending => std::thread::park(),
///         }
///     }
/// }
/// # Ok::<(), pool_core::Error>(())
/// ```
impl<T> Future for AsyncResult<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(err) = self.foreign() {
            return Poll::Ready(Err(err));
        }
        let mut state = self.slot.lock();
        if state.done {
            return Poll::Ready(self.slot.get_from(&state));
        }
        let wakers = &mut state.extras().wakers;
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("task", &self.slot.task)
            .field("ready", &self.ready())
            .field("owner", &self.owner)
            .finish()
    }
}
