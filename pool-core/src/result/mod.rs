//! [`AsyncResult`]: the handle to a result that is still being computed.
//!
//! The handle waits on a [`ResultCell`](cell::ResultCell), which the engine fills part by part;
//! `decode` turns the cell's result frames into values.

pub(crate) mod cell;
pub(crate) mod decode;
mod outcomes;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cell::run_callbacks;
pub(crate) use cell::{Counts, ResultCell};
pub(crate) use decode::{
    check_frame, decode_all, decode_into, decode_one, decode_value, encoded_all, encoded_each,
    frame_error,
};

pub use outcomes::{EncodedOutcomes, Iter as EncodedOutcomesIter};

use crate::owner::Owner;
use crate::Error;

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
    slot: Arc<ResultCell<T>>,
    /// The process whose pool delivers the result. In any other process (a forked child) the
    /// result is resolved at once to [`Error::WrongProcess`], without touching the slot, whose
    /// lock may have been held at the fork.
    owner: Owner,
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(slot: Arc<ResultCell<T>>) -> Self {
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

    /// Cancels the work: if it has no result yet, it resolves at once to
    /// [`Error::Cancelled`] (callbacks get that error, waiters wake), and returns `true`;
    /// if it is finished already, nothing changes and it returns `false`.
    ///
    /// On a local [`Pool`](crate::Pool), a job not yet begun never begins (queued, or already
    /// sent to a worker), and a running one is asked to stop: [`cancelled()`](crate::cancelled)
    /// turns true in the task, and if the task has not returned after the pool's
    /// [`cancel_grace`](crate::PoolBuilder::cancel_grace) (50 ms unless set), its worker is
    /// stopped and replaced. For a `map_async` result this covers every chunk. The
    /// [`PoolStats::tasks_cancelled`](crate::PoolStats::tasks_cancelled) counter counts the
    /// items. On `pool-redis` a job not yet taken by a worker is deleted from the queue, and a
    /// running one is cancelled on its worker the same way (see `pool_redis`'s docs).
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::time::{Duration, Instant};
    ///
    /// #[task]
    /// fn spin() {
    ///     loop {
    ///         std::hint::spin_loop(); // never looks at `cancelled()`
    ///     }
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let running = pool.apply_async(spin, ());
    /// let queued = pool.apply_async(spin, ()); // behind it: never begins
    /// std::thread::sleep(Duration::from_millis(50));
    /// let t = Instant::now();
    /// assert!(queued.cancel());
    /// assert!(running.cancel());
    /// assert!(matches!(running.get(), Err(Error::Cancelled)));
    /// assert!(!running.cancel()); // finished already
    /// assert!(t.elapsed() < Duration::from_secs(1));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        if self.foreign().is_some() {
            return false;
        }
        let cancelled = self.slot.cancel();
        if cancelled {
            crate::cancel::requested();
        }
        cancelled
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

#[cfg(test)]
mod test {
    use super::*;
    use crate::job::Sink;

    fn value(v: u64) -> Vec<u8> {
        crate::wire::encode(&v).unwrap()
    }

    #[test]
    fn parts_arriving_in_any_order_make_one_ordered_result() {
        let (r, sink) = AsyncResult::<Vec<u64>>::pending_many("t", vec![2, 1, 3]);
        assert!(!r.ready());
        assert_eq!(r.successful(), None);
        sink.part(2)
            .deliver_items(Ok(vec![value(4), value(5), value(6)]));
        sink.part(0).deliver_items(Ok(vec![value(1), value(2)]));
        assert!(!r.wait_timeout(Duration::from_millis(1)));
        sink.part(1).deliver_items(Ok(vec![value(3)]));
        assert!(r.ready());
        assert_eq!(r.get().unwrap(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            r.get().unwrap(),
            [1, 2, 3, 4, 5, 6],
            "a result can be read again"
        );
    }

    #[test]
    fn the_first_error_wins_and_later_parts_are_ignored() {
        let (r, sink) = AsyncResult::<Vec<u64>>::pending_many("t", vec![1, 1]);
        sink.part(1).deliver_items(Err(Error::Terminated));
        sink.part(0).deliver_items(Ok(vec![value(1)]));
        assert!(matches!(r.get(), Err(Error::Terminated)));
        assert_eq!(r.successful(), Some(false));
    }

    #[test]
    fn a_part_with_the_wrong_item_count_is_a_protocol_error() {
        let (r, sink) = AsyncResult::<Vec<u64>>::pending_many("t", vec![2]);
        sink.deliver_items(Ok(vec![value(1)]));
        assert!(r.get().is_err());
    }

    #[test]
    fn callbacks_run_once_with_the_value_or_the_error() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, sink) = AsyncResult::<u64>::pending_one("t");
        let tx2 = tx.clone();
        let r = r
            .on_success(move |v| tx.send(Ok(v)).unwrap())
            .on_error(move |e| tx2.send(Err(e.to_string())).unwrap());
        sink.deliver_items(Ok(vec![value(7)]));
        assert_eq!(rx.recv().unwrap(), Ok(7));
        assert!(rx.try_recv().is_err());
        assert_eq!(r.get().unwrap(), 7);
        // Already resolved: the callback runs at once, on this thread.
        let (tx, rx) = std::sync::mpsc::channel();
        drop(r.on_success(move |v| tx.send(v).unwrap()));
        assert_eq!(rx.recv().unwrap(), 7);
    }

    #[test]
    fn get_timeout_gives_up_and_the_result_can_still_come() {
        let (r, sink) = AsyncResult::<u64>::pending_one("t");
        assert!(matches!(
            r.get_timeout(Duration::from_millis(5)),
            Err(Error::WaitTimeout(_))
        ));
        let cell: Arc<dyn Sink> = sink.sink.clone();
        cell.deliver(0, Err(Error::Closed));
        assert!(matches!(r.get(), Err(Error::Closed)));
    }
}
