//! [`Pipe`]: two connected ends, each a [`Connection`].

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::handle::kind;
use super::locked_ring::{GetFail, LockedRing, PutFail, Wait};
use super::queue::{GetError, DEFAULT_BUFFER};
use crate::Error;

/// Makes connected pairs of [`Connection`]s (Python's `multiprocessing.Pipe`).
///
/// # Examples
///
/// ```
/// use pool_core::Pipe;
///
/// let (a, b) = Pipe::new::<String>()?;
/// a.send(&"ping".to_string())?;
/// assert_eq!(b.recv()?, "ping");
/// b.send(&"pong".to_string())?;
/// assert_eq!(a.recv()?, "pong");
///
/// let (rx, tx) = Pipe::simplex::<u32>()?; // receive-only, send-only
/// tx.send(&7)?;
/// assert_eq!(rx.recv()?, 7);
/// assert!(rx.send(&1).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pipe {
    _private: (),
}

impl Pipe {
    /// Two duplex ends: what one sends, the other receives (Python's `Pipe()`; named `new`
    /// for Python users, though it returns the two ends rather than a `Pipe`).
    #[allow(clippy::new_ret_no_self)]
    pub fn new<T>() -> Result<(Connection<T>, Connection<T>), Error> {
        let ab = pipe_ring()?;
        let ba = pipe_ring()?;
        Ok((
            Connection::new(Some(ab.clone()), Some(ba.clone()), true),
            Connection::new(Some(ba), Some(ab), true),
        ))
    }

    /// A receive-only end and a send-only end (Python's `Pipe(duplex=False)`).
    pub fn simplex<T>() -> Result<(Connection<T>, Connection<T>), Error> {
        let ring = pipe_ring()?;
        Ok((
            Connection::new(None, Some(ring.clone()), true),
            Connection::new(Some(ring), None, true),
        ))
    }
}

/// A new ring for one direction of a pipe, tracking its senders (this process first).
fn pipe_ring() -> Result<LockedRing, Error> {
    let ring = LockedRing::create(DEFAULT_BUFFER, 0, kind::QUEUE)?;
    ring.track_senders();
    Ok(ring)
}

/// One end of a [`Pipe`]: sends and receives `T` (as MessagePack) or raw bytes. It can be
/// cloned, inherited across `fork`, and passed to a [`Process`](crate::Process) or a pool task.
///
/// # Ends, processes and end-of-file
///
/// As with an OS pipe, a receiver learns that nothing more can come — [`GetError::Closed`],
/// Python's `EOFError` — once every process that held the other end has let go of it: by
/// [`close`](Self::close), by dropping its last handle to it, or by dying (a process's exit,
/// even by SIGKILL, lets go of everything, as it closes its descriptors). Everything sent
/// before is received first. `close` acts on this process's hold only: a parent may close the
/// child's end right after [`Process::start`](crate::Process::start), as Python programs do,
/// and the child keeps its own. A `Process` child holds what its parent held when it was
/// started; a pool task holds the ends it received as arguments while it runs.
pub struct Connection<T> {
    send: Option<LockedRing>,
    recv: Option<LockedRing>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Connection<T> {
    /// A handle to the two rings; `fresh`: a new hold on the sending end in this process (a
    /// new pipe, or an end received from elsewhere), which reopens it if this process had
    /// closed it; a clone only adds to the hold it copies.
    fn new(send: Option<LockedRing>, recv: Option<LockedRing>, fresh: bool) -> Self {
        if let Some(ring) = &send {
            local::hold(ring, fresh);
        }
        Connection {
            send,
            recv,
            _t: PhantomData,
        }
    }

    fn sender(&self) -> Result<&LockedRing, Error> {
        let ring = self
            .send
            .as_ref()
            .ok_or_else(|| Error::Config("this end of the pipe only receives".into()))?;
        if local::is_closed(ring) {
            return Err(Error::PipeClosed);
        }
        Ok(ring)
    }

    fn receiver(&self) -> Result<&LockedRing, GetError> {
        self.recv.as_ref().ok_or(GetError::Closed)
    }

    /// Sends raw bytes.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), Error> {
        match self.sender()?.put(bytes, Wait::Forever) {
            Ok(()) => Ok(()),
            Err(PutFail::Closed) => Err(Error::PipeClosed),
            Err(PutFail::TooLarge) => Err(Error::Config(format!(
                "a message of {} bytes is larger than the pipe's buffer",
                bytes.len()
            ))),
            Err(_) => Err(Error::PipeClosed),
        }
    }

    /// Receives raw bytes, waiting for them. [`GetError::Closed`] once the other end has
    /// [`close`](Self::close)d and nothing is left.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, GetError> {
        self.recv_bytes_wait(Wait::Forever)
    }

    fn recv_bytes_wait(&self, wait: Wait) -> Result<Vec<u8>, GetError> {
        self.receiver()?.get(wait).map_err(|e| match e {
            GetFail::Empty => GetError::Empty,
            GetFail::Closed => GetError::Closed,
            GetFail::Timeout => GetError::Timeout,
        })
    }

    /// Waits at most `timeout` for something to receive; whether there is.
    pub fn poll(&self, timeout: Duration) -> bool {
        self.recv
            .as_ref()
            .is_some_and(|r| r.poll(Wait::Until(Instant::now() + timeout)))
    }

    /// Lets go of this end in this process (Python's `Connection.close()`): it sends no more
    /// (a send returns [`Error::PipeClosed`]), and once no process holds the sending end any
    /// more, the other end's receives return [`GetError::Closed`] after everything sent
    /// (Python's `EOFError`). Other processes' ends stay open.
    pub fn close(&self) {
        if let Some(ring) = &self.send {
            local::close(ring);
        }
    }
}

impl<T: Serialize + 'static> Connection<T> {
    /// Sends `value`.
    pub fn send(&self, value: &T) -> Result<(), Error> {
        let bytes = crate::wire::encode(value).map_err(|message| Error::ArgsEncode {
            task: "Connection::send".into(),
            message,
        })?;
        self.send_bytes(&bytes)
    }
}

impl<T: DeserializeOwned + 'static> Connection<T> {
    /// Receives a value, waiting for it.
    pub fn recv(&self) -> Result<T, GetError> {
        let bytes = self.recv_bytes()?;
        crate::wire::decode(&bytes).map_err(GetError::Decode)
    }

    /// Receives a value, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let bytes = self.recv_bytes_wait(Wait::Until(Instant::now() + timeout))?;
        crate::wire::decode(&bytes).map_err(GetError::Decode)
    }
}

impl<T> Drop for Connection<T> {
    fn drop(&mut self) {
        if let Some(ring) = &self.send {
            local::release(ring);
        }
    }
}

impl<T> Clone for Connection<T> {
    fn clone(&self) -> Self {
        Connection::new(self.send.clone(), self.recv.clone(), false)
    }
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("sends", &self.send.is_some())
            .field("receives", &self.recv.is_some())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    send: Option<super::segment::SegmentRef>,
    recv: Option<super::segment::SegmentRef>,
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            send: self.send.as_ref().map(|r| r.seg.reference()),
            recv: self.recv.as_ref().map(|r| r.seg.reference()),
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        // A received end is this process's own hold: it counts as a sender from now on.
        let open = |r: Option<super::segment::SegmentRef>| -> Result<Option<LockedRing>, D::Error> {
            match r {
                None => Ok(None),
                Some(r) if r.kind() == kind::QUEUE => {
                    let seg = super::segment::open_ref(&r).map_err(serde::de::Error::custom)?;
                    Ok(Some(LockedRing { seg }))
                }
                Some(_) => Err(serde::de::Error::custom("not a pipe end")),
            }
        };
        Ok(Connection::new(open(w.send)?, open(w.recv)?, true))
    }
}

/// This process's hold on the sending ends of pipes: how many live [`Connection`]s here send on
/// each ring, and whether this process closed it. The ring's shared table of senders
/// (`LockedRing::add_sender`) lists this process while it holds a ring it has not closed.
///
/// A `Process` child inherits this table with the handles it describes (its parent adds the
/// child to each ring's senders as it starts it: [`adopt_child`]); a pool worker uses none of
/// its parent's handles and starts with it empty ([`forget_inherited`]). Changed under the
/// crate's fork lock, so no child inherits it half-changed.
pub(crate) mod local {
    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError, Weak};

    use super::LockedRing;
    use crate::mp::segment::Segment;
    use crate::start::with_fork_lock;

    struct Hold {
        ring: Weak<Segment>,
        count: usize,
        closed: bool,
    }

    static HOLDS: Mutex<Option<HashMap<u128, Hold>>> = Mutex::new(None);

    fn with<R>(f: impl FnOnce(&mut HashMap<u128, Hold>) -> R) -> R {
        with_fork_lock(|| {
            let mut holds = HOLDS.lock().unwrap_or_else(PoisonError::into_inner);
            f(holds.get_or_insert_with(HashMap::new))
        })
    }

    /// A new handle to `ring`'s sending end in this process; `fresh` reopens a closed hold.
    pub(crate) fn hold(ring: &LockedRing, fresh: bool) {
        let first = with(|holds| {
            let hold = holds.entry(ring.seg.token()).or_insert(Hold {
                ring: std::sync::Arc::downgrade(&ring.seg),
                count: 0,
                closed: true,
            });
            hold.count += 1;
            if hold.count > 1 && !fresh {
                return false;
            }
            std::mem::replace(&mut hold.closed, false)
        });
        if first {
            ring.add_sender(std::process::id());
        }
    }

    /// A handle to `ring`'s sending end dropped; the last one lets go.
    pub(crate) fn release(ring: &LockedRing) {
        let last = with(|holds| {
            let token = ring.seg.token();
            let Some(hold) = holds.get_mut(&token) else {
                return false;
            };
            hold.count = hold.count.saturating_sub(1);
            if hold.count > 0 {
                return false;
            }
            let open = !hold.closed;
            holds.remove(&token);
            open
        });
        if last {
            ring.remove_sender(std::process::id());
        }
    }

    /// `close()` on a handle: this process lets go of the sending end.
    pub(crate) fn close(ring: &LockedRing) {
        let was_open = with(|holds| {
            holds
                .get_mut(&ring.seg.token())
                .is_some_and(|h| !std::mem::replace(&mut h.closed, true))
        });
        if was_open {
            ring.remove_sender(std::process::id());
        }
    }

    /// Whether this process closed its hold on `ring`'s sending end.
    pub(crate) fn is_closed(ring: &LockedRing) -> bool {
        with(|holds| holds.get(&ring.seg.token()).is_some_and(|h| h.closed))
    }

    /// In the parent, right after forking `child` (a `Process`): the child holds what this
    /// process holds.
    pub(crate) fn adopt_child(child: u32) {
        let rings: Vec<LockedRing> = with(|holds| {
            holds
                .values()
                .filter(|h| !h.closed && h.count > 0)
                .filter_map(|h| h.ring.upgrade())
                .map(|seg| LockedRing { seg })
                .collect()
        });
        for ring in rings {
            ring.add_sender(child);
        }
    }

    /// In a new pool worker forked from this process: it holds none of the parent's handles.
    /// The fork lock was held across the fork, so the table is whole; no lock is taken here.
    pub(crate) fn forget_inherited() {
        if let Ok(mut holds) = HOLDS.try_lock() {
            if let Some(map) = holds.take() {
                std::mem::forget(map); // the parent's: never dropped here
            }
        }
    }
}
