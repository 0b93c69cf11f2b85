//! How frames move between the parent and one worker.
//!
//! This first transport is a Unix stream socket pair per worker carrying length-prefixed frames
//! (`len:u64` then the frame). Each worker owns its own pair, so a worker that dies mid-frame
//! corrupts nothing that another process needs: the parent sees end-of-file (or a short frame) on
//! that one socket, and discards it with the worker.
//!
//! The interface is deliberately narrow — [`pair`], [`Channel::send`], [`Channel::recv`] — so
//! that a shared-memory transport can replace it without touching the pool.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Frames larger than this are refused on receipt as corrupt (1 TiB).
const MAX_FRAME: u64 = 1 << 40;

/// One end of a worker's connection.
#[derive(Debug)]
pub(crate) struct Channel {
    stream: UnixStream,
}

/// A connected pair of ends: one for the parent, one for the worker. Both are close-on-exec, so a
/// program the task starts with `std::process::Command` does not inherit them.
pub(crate) fn pair() -> io::Result<(Channel, Channel)> {
    let (a, b) = UnixStream::pair()?;
    Ok((Channel { stream: a }, Channel { stream: b }))
}

impl Channel {
    /// Sends one whole frame.
    pub(crate) fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let len = (frame.len() as u64).to_le_bytes();
        let mut head: &[u8] = &len;
        let mut body = frame;
        while !head.is_empty() || !body.is_empty() {
            let slices = [IoSlice::new(head), IoSlice::new(body)];
            let n = match self.stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        Ok(())
    }

    /// Receives one whole frame into `buf` (replacing its contents). End-of-file, also in the
    /// middle of a frame, is `ErrorKind::UnexpectedEof`.
    pub(crate) fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut len = [0u8; 8];
        self.stream.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame length {len} is beyond any real frame"),
            ));
        }
        buf.clear();
        buf.resize(len as usize, 0);
        self.stream.read_exact(buf)
    }

    /// The socket's descriptor.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn frames_arrive_whole_and_in_order() {
        let (mut a, mut b) = pair().unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let expected = big.clone();
        let t = std::thread::spawn(move || {
            a.send(b"hello").unwrap();
            a.send(&[]).unwrap();
            a.send(&big).unwrap();
        });
        let mut buf = Vec::new();
        b.recv(&mut buf).unwrap();
        assert_eq!(buf, b"hello");
        b.recv(&mut buf).unwrap();
        assert!(buf.is_empty());
        b.recv(&mut buf).unwrap();
        assert_eq!(buf, expected);
        t.join().unwrap();
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn absurd_lengths_are_refused() {
        let (a, mut b) = pair().unwrap();
        (&a.stream).write_all(&u64::MAX.to_le_bytes()).unwrap();
        let err = b.recv(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
