//! [`Pipe`]: two connected ends, each a [`Connection`].

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::handle::kind;
use super::queue::{GetError, DEFAULT_BUFFER};
use super::ring::{ByteRing, GetFail, PutFail, Wait};
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
        let ab = ByteRing::create(DEFAULT_BUFFER, 0, kind::QUEUE)?;
        let ba = ByteRing::create(DEFAULT_BUFFER, 0, kind::QUEUE)?;
        Ok((
            Connection::new(Some(ab.clone()), Some(ba.clone())),
            Connection::new(Some(ba), Some(ab)),
        ))
    }

    /// A receive-only end and a send-only end (Python's `Pipe(duplex=False)`).
    pub fn simplex<T>() -> Result<(Connection<T>, Connection<T>), Error> {
        let ring = ByteRing::create(DEFAULT_BUFFER, 0, kind::QUEUE)?;
        Ok((
            Connection::new(None, Some(ring.clone())),
            Connection::new(Some(ring), None),
        ))
    }
}

/// One end of a [`Pipe`]: sends and receives `T` (as MessagePack) or raw bytes. It can be
/// cloned, inherited across `fork`, and passed to a [`Process`](crate::Process) or a pool task.
pub struct Connection<T> {
    send: Option<ByteRing>,
    recv: Option<ByteRing>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Connection<T> {
    fn new(send: Option<ByteRing>, recv: Option<ByteRing>) -> Self {
        Connection {
            send,
            recv,
            _t: PhantomData,
        }
    }

    fn sender(&self) -> Result<&ByteRing, Error> {
        self.send
            .as_ref()
            .ok_or_else(|| Error::Config("this end of the pipe only receives".into()))
    }

    fn receiver(&self) -> Result<&ByteRing, GetError> {
        self.recv.as_ref().ok_or(GetError::Closed)
    }

    /// Sends raw bytes.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), Error> {
        match self.sender()?.put(bytes, Wait::Forever) {
            Ok(()) => Ok(()),
            Err(PutFail::Closed) => Err(Error::Closed),
            Err(PutFail::TooLarge) => Err(Error::Config(format!(
                "a message of {} bytes is larger than the pipe's buffer",
                bytes.len()
            ))),
            Err(_) => Err(Error::Closed),
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

    /// Tells the other end that nothing more will be sent: its receives return
    /// [`GetError::Closed`] once it has read everything (Python's `EOFError`).
    pub fn close(&self) {
        if let Some(s) = &self.send {
            s.close();
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

impl<T> Clone for Connection<T> {
    fn clone(&self) -> Self {
        Connection::new(self.send.clone(), self.recv.clone())
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
        let open = |r: Option<super::segment::SegmentRef>| -> Result<Option<ByteRing>, D::Error> {
            match r {
                None => Ok(None),
                Some(r) if r.kind() == kind::QUEUE => {
                    let seg = super::segment::open_ref(&r).map_err(serde::de::Error::custom)?;
                    Ok(Some(ByteRing { seg }))
                }
                Some(_) => Err(serde::de::Error::custom("not a pipe end")),
            }
        };
        Ok(Connection::new(open(w.send)?, open(w.recv)?))
    }
}
