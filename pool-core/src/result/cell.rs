//! [`ResultCell`]: where the parts of one result come together — one frame for an `apply`,
//! one per chunk for a `map` — with the callbacks and wakers waiting on it. The collector (or
//! another engine) delivers parts; the [`AsyncResult`](crate::AsyncResult) handle waits.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::decode::{check_count, check_frame};
use crate::job::TaskName;
use crate::wire::frame::ResultFrame;
use crate::Error;

type Decode<T> = fn(&[ResultFrame], &str) -> Result<T, Error>;
type OnSuccess<T> = Box<dyn FnOnce(T) + Send>;
type OnError = Box<dyn FnOnce(Error) + Send>;

/// Where the parts of one result (one frame for `apply`, one per chunk for `map`) come together.
pub(crate) struct ResultCell<T> {
    pub(super) task: TaskName,
    decode: Decode<T>,
    state: Mutex<State<T>>,
    ready: Condvar,
    /// `state.done`, readable without the lock, for a short spin before sleeping.
    done: AtomicBool,
    /// Set by [`cancel`](Self::cancel): the engine must not begin this result's jobs, and
    /// stops the ones running.
    cancelled: AtomicBool,
    /// The result keeps each item's own outcome: an item's error does not fail it (only a
    /// part that is not readable item by item does).
    per_item: bool,
}

/// How long a waiter spins before it sleeps: most round trips to a worker are shorter, and a
/// sleeping thread takes several microseconds to wake.
const SPIN: Duration = Duration::from_micros(30);

pub(super) struct State<T> {
    /// Result frames by part; all present once `outcome` is `Ok`.
    pub(super) parts: Parts,
    /// How many items each part must hold (checked against what the worker sent).
    pub(super) expected: Counts,
    pub(super) remaining: usize,
    /// Set when the last part arrived or the first error did (boxed: errors are large and
    /// rare, and a burst of a million pending results should stay small).
    pub(super) outcome: Option<Result<(), Box<Error>>>,
    /// Set once the callbacks, if any, have run: waiters wake only then, as in Python.
    pub(super) done: bool,
    /// Callbacks and wakers, allocated only when there are some.
    pub(super) extras: Option<Box<Extras<T>>>,
    /// Threads blocked in `wait_until`: the condvar is signalled only when there are some
    /// (signalling costs a system call even with no waiter).
    pub(super) waiters: u32,
}

pub(super) struct Extras<T> {
    pub(super) on_success: Option<OnSuccess<T>>,
    pub(super) on_error: Option<OnError>,
    /// Tasks awaiting the result as a `Future`.
    pub(super) wakers: Vec<Waker>,
}

impl<T> State<T> {
    pub(super) fn extras(&mut self) -> &mut Extras<T> {
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
pub(super) enum Parts {
    One(ResultFrame),
    Many(Vec<ResultFrame>),
}

impl Parts {
    fn as_slice(&self) -> &[ResultFrame] {
        match self {
            Parts::One(frame) => std::slice::from_ref(frame),
            Parts::Many(frames) => frames,
        }
    }

    fn set(&mut self, index: usize, frame: ResultFrame) {
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

impl<T> ResultCell<T> {
    /// A slot awaiting one part per entry of `expected`, each holding that many items.
    pub(crate) fn new(task: TaskName, expected: Counts, decode: Decode<T>) -> Arc<Self> {
        Self::with_mode(task, expected, decode, false)
    }

    /// [`new`](Self::new) for a result that keeps each item's own outcome.
    pub(crate) fn per_item(task: TaskName, expected: Counts, decode: Decode<T>) -> Arc<Self> {
        Self::with_mode(task, expected, decode, true)
    }

    fn with_mode(task: TaskName, expected: Counts, decode: Decode<T>, per_item: bool) -> Arc<Self> {
        let parts = expected.len();
        let slot = Arc::new(ResultCell {
            task,
            decode,
            state: Mutex::new(State {
                parts: match expected {
                    Counts::One(_) => Parts::One(ResultFrame::empty()),
                    Counts::Many(_) => {
                        Parts::Many((0..parts).map(|_| ResultFrame::empty()).collect())
                    }
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
            cancelled: AtomicBool::new(false),
            per_item,
        });
        if parts == 0 {
            slot.finish(slot.lock(), Ok(()));
        }
        slot
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers part `index`. The first error wins; later parts are then ignored.
    pub(crate) fn complete_part(&self, index: usize, result: Result<ResultFrame, Error>) {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return;
        }
        let expected = state.expected.get(index);
        let checked = result.and_then(|frame| {
            if self.per_item {
                check_count(&frame, &self.task, expected)
            } else {
                check_frame(&frame, &self.task, expected)
            }
            .map(|()| frame)
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

    /// Resolves the result to [`Error::Cancelled`] if it has no outcome yet, and marks it so
    /// that its jobs are not begun or are stopped. Returns whether it did.
    pub(crate) fn cancel(&self) -> bool {
        let state = self.lock();
        if state.outcome.is_some() {
            return false;
        }
        self.cancelled.store(true, Ordering::SeqCst);
        self.finish(state, Err(Error::Cancelled));
        true
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
    pub(super) fn value_for_callbacks(
        &self,
        state: &State<T>,
        decode: bool,
    ) -> Option<Result<T, Error>> {
        match state.outcome.as_ref()? {
            Err(err) => Some(Err((**err).clone())),
            Ok(()) if decode => Some((self.decode)(state.parts.as_slice(), &self.task)),
            Ok(()) => None,
        }
    }

    pub(super) fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, State<T>> {
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

    pub(super) fn get_from(&self, state: &State<T>) -> Result<T, Error> {
        match state.outcome.as_ref() {
            Some(Ok(())) => (self.decode)(state.parts.as_slice(), &self.task),
            Some(Err(err)) => Err((**err).clone()),
            None => unreachable!("get_from is called once the slot is done"),
        }
    }
}

impl<T: 'static> crate::job::Sink for ResultCell<T> {
    fn deliver(&self, part: usize, outcome: Result<ResultFrame, Error>) {
        self.complete_part(part, outcome);
    }

    fn is_cancelled(&self, _part: usize) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

pub(super) fn run_callbacks<T>(
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
