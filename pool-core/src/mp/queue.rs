//! [`Queue`] and [`JoinableQueue`]: typed, multi-producer multi-consumer queues between
//! processes.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::handle::{kind, wire_handle};
use super::locked_ring::{GetFail, LockedRing, PutFail, Wait};
use super::segment::Segment;
use crate::Error;

/// The buffer of a queue made with [`Queue::new`] or [`Queue::bounded`]: 64 MiB of address
/// space; only the pages in use take memory.
pub const DEFAULT_BUFFER: usize = 64 << 20;

/// Why an item was not put; the item is handed back.
pub enum PutError<T> {
    /// The queue is full and the call was not to wait (`try_put`).
    Full(T),
    /// The queue is closed.
    Closed(T),
    /// The queue stayed full for the whole timeout.
    Timeout(T),
    /// The encoded item is larger than the queue's buffer.
    TooLarge(T),
    /// The item could not be encoded (MessagePack).
    Encode(T, String),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t)
            | PutError::Closed(t)
            | PutError::Timeout(t)
            | PutError::TooLarge(t)
            | PutError::Encode(t, _) => t,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full: the queue is full"),
            PutError::Closed(_) => f.write_str("Closed: the queue is closed"),
            PutError::Timeout(_) => f.write_str("Timeout: the queue stayed full"),
            PutError::TooLarge(_) => f.write_str("the item is larger than the queue's buffer"),
            PutError::Encode(_, m) => write!(f, "the item could not be encoded: {m}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {}

/// Why nothing was taken from a queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue is empty and the call was not to wait (`try_get`).
    #[error("Empty: the queue is empty")]
    Empty,
    /// The queue is closed and empty: nothing will come.
    #[error("Closed: the queue is closed and empty")]
    Closed,
    /// Nothing came within the timeout.
    #[error("Timeout: nothing came within the timeout")]
    Timeout,
    /// An item did not decode as `T` (it is dropped).
    #[error("an item did not decode: {0}")]
    Decode(String),
}

/// A queue of `T` between any number of producers and consumers in any processes (Python's
/// `multiprocessing.Queue`), FIFO for each producer.
///
/// Items travel as MessagePack through a ring buffer in shared memory. A handle can be cloned,
/// inherited across `fork`, and passed to a [`Process`](crate::Process) or to a pool task as an
/// argument (Python refuses queues as pool arguments; here it just works). Blocked calls sleep
/// in the kernel and wake within microseconds.
///
/// A process killed at any moment — inside `put` or `get` included — costs at most the item
/// it was putting or taking; the queue goes on serving every other item.
///
/// # Examples
///
/// ```
/// use pool_core::{GetError, Queue};
/// use std::time::Duration;
///
/// let q: Queue<String> = Queue::bounded(2)?;
/// q.put("a".to_string()).unwrap();
/// q.try_put("b".to_string()).unwrap();
/// assert!(q.try_put("c".to_string()).is_err()); // full
/// assert_eq!(q.get().unwrap(), "a");
/// assert_eq!(q.len(), 1);
/// q.close();
/// assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), "b"); // drains after close
/// assert_eq!(q.get(), Err(GetError::Closed));
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct Queue<T> {
    ring: LockedRing,
    seg: Arc<Segment>,
    _t: PhantomData<fn(T) -> T>,
}

wire_handle!(Queue<T>, kind::QUEUE);

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue::from_segment(Arc::clone(&self.seg))
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.ring.len())
            .finish_non_exhaustive()
    }
}

impl<T> Queue<T> {
    fn from_segment(seg: Arc<Segment>) -> Self {
        Queue {
            ring: LockedRing {
                seg: Arc::clone(&seg),
            },
            seg,
            _t: PhantomData,
        }
    }

    /// A queue with no limit on the number of items (its 64 MiB buffer bounds the bytes
    /// waiting; `put` waits while it is full).
    pub fn new() -> Result<Queue<T>, Error> {
        Self::with_limits(None, DEFAULT_BUFFER)
    }

    /// A queue that holds at most `max_items` items.
    pub fn bounded(max_items: usize) -> Result<Queue<T>, Error> {
        Self::with_limits(Some(max_items.max(1)), DEFAULT_BUFFER)
    }

    /// A queue with an optional limit on items and a buffer of `buffer_bytes` (an item's
    /// encoding, plus 4 bytes, must fit in it).
    pub fn with_limits(max_items: Option<usize>, buffer_bytes: usize) -> Result<Queue<T>, Error> {
        let ring = LockedRing::create(buffer_bytes, max_items.unwrap_or(0) as u64, kind::QUEUE)?;
        Ok(Queue::from_segment(ring.seg))
    }

    /// How many items are waiting.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a `put` would wait now.
    pub fn is_full(&self) -> bool {
        self.ring.is_full()
    }

    /// Closes the queue for every process: puts fail with `Closed`; gets take what is left,
    /// then fail with [`GetError::Closed`] — a way to tell every consumer to stop.
    pub fn close(&self) {
        self.ring.close()
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }
}

impl<T: Serialize + 'static> Queue<T> {
    fn put_with(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        let bytes = match crate::wire::encode(&item) {
            Ok(b) => b,
            Err(m) => return Err(PutError::Encode(item, m)),
        };
        match self.ring.put(&bytes, wait) {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(PutError::Full(item)),
            Err(PutFail::Closed) => Err(PutError::Closed(item)),
            Err(PutFail::Timeout) => Err(PutError::Timeout(item)),
            Err(PutFail::TooLarge) => Err(PutError::TooLarge(item)),
        }
    }

    /// Puts `item`, waiting while the queue is full.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::Forever)
    }

    /// Puts `item`, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::Until(Instant::now() + timeout))
    }

    /// Puts `item` if there is room now.
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::No)
    }
}

impl<T: DeserializeOwned + 'static> Queue<T> {
    fn get_with(&self, wait: Wait) -> Result<T, GetError> {
        match self.ring.get(wait) {
            Ok(bytes) => crate::wire::decode(&bytes).map_err(GetError::Decode),
            Err(GetFail::Empty) => Err(GetError::Empty),
            Err(GetFail::Closed) => Err(GetError::Closed),
            Err(GetFail::Timeout) => Err(GetError::Timeout),
        }
    }

    /// Takes the oldest item, waiting for one.
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(Wait::Forever)
    }

    /// Takes the oldest item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(Wait::Until(Instant::now() + timeout))
    }

    /// Takes the oldest item if there is one now.
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_with(Wait::No)
    }
}

/// A [`Queue`] whose consumers mark each item done (Python's `multiprocessing.JoinableQueue`),
/// so a producer can [`join`](JoinableQueue::join) until all the work is finished.
///
/// # Examples
///
/// ```
/// use pool_core::JoinableQueue;
///
/// let q: JoinableQueue<u32> = JoinableQueue::new()?;
/// q.put(1).unwrap();
/// assert_eq!(q.get().unwrap(), 1);
/// q.task_done()?;
/// q.join(); // every item put was marked done
/// assert!(q.task_done().is_err()); // once too many
/// # Ok::<(), pool_core::Error>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
    seg: Arc<Segment>,
}

wire_handle!(JoinableQueue<T>, kind::QUEUE);

impl<T> JoinableQueue<T> {
    fn from_segment(seg: Arc<Segment>) -> Self {
        JoinableQueue {
            queue: Queue::from_segment(Arc::clone(&seg)),
            seg,
        }
    }

    /// A joinable queue with no limit on the number of items.
    pub fn new() -> Result<JoinableQueue<T>, Error> {
        Ok(Self::from_segment(Queue::<T>::new()?.seg))
    }

    /// A joinable queue that holds at most `max_items` items.
    pub fn bounded(max_items: usize) -> Result<JoinableQueue<T>, Error> {
        Ok(Self::from_segment(Queue::<T>::bounded(max_items)?.seg))
    }

    /// Marks one item taken from the queue as done. An error if called more times than items
    /// were put.
    pub fn task_done(&self) -> Result<(), Error> {
        if self.queue.ring.task_done() {
            Ok(())
        } else {
            Err(Error::Config(
                "task_done() called more times than there were items put".into(),
            ))
        }
    }

    /// Waits until every item put has been marked done with [`task_done`](Self::task_done).
    pub fn join(&self) {
        self.queue.ring.join(Wait::Forever);
    }

    /// [`join`](Self::join) for at most `timeout`; whether everything was done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.queue.ring.join(Wait::Until(Instant::now() + timeout))
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        Self::from_segment(Arc::clone(&self.seg))
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.queue.len())
            .finish_non_exhaustive()
    }
}
