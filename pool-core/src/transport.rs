//! How frames move between the parent and one worker.
//!
//! This first transport is a Unix stream socket pair per worker carrying length-prefixed frames
//! (`len:u64` then the frame). Each worker owns its own pair, so a worker that dies mid-frame
//! corrupts nothing that another process needs.
//!
//! The parent does not rely on end-of-file to learn that a worker died: a copy of the worker's
//! end may live on in a process the task forked, and then end-of-file never comes. Instead the
//! parent's end [`watch`](Channel::watch)es the worker's pidfd: its end is non-blocking, and
//! every wait polls the socket and the pidfd together, so a read or write to a dead worker fails
//! with `ErrorKind::BrokenPipe` as soon as no data is left, whoever holds copies of the socket.
//!
//! The interface is deliberately narrow — [`pair`], [`Channel::send`], [`Channel::recv`],
//! [`Channel::watch`] — so that a shared-memory transport can replace it without touching the
//! pool.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Frames larger than this are refused on receipt as corrupt (1 TiB).
const MAX_FRAME: u64 = 1 << 40;

/// One end of a worker's connection.
#[derive(Debug)]
pub(crate) struct Channel {
    stream: UnixStream,
    /// The peer process's pidfd, on the parent's end.
    peer: Option<OwnedFd>,
}

/// A connected pair of ends: one for the parent, one for the worker. Both are close-on-exec, so a
/// program the task starts with `std::process::Command` does not inherit them.
pub(crate) fn pair() -> io::Result<(Channel, Channel)> {
    let (a, b) = UnixStream::pair()?;
    Ok((
        Channel {
            stream: a,
            peer: None,
        },
        Channel {
            stream: b,
            peer: None,
        },
    ))
}

/// Opens a pidfd for `pid`: a descriptor that becomes readable when the process exits.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just returned to us and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Channel {
    /// From now on, waits on this end also watch `peer` (the other process's pidfd), and fail
    /// with `BrokenPipe` once it has exited and the socket has nothing more to give.
    pub(crate) fn watch(&mut self, peer: OwnedFd) -> io::Result<()> {
        self.stream.set_nonblocking(true)?;
        self.peer = Some(peer);
        Ok(())
    }

    /// Blocks until the socket is ready for `events`, or fails if the peer has exited first.
    fn wait(&self, events: PollFlags) -> io::Result<()> {
        let Some(peer) = &self.peer else {
            return Ok(());
        };
        loop {
            let mut fds = [
                PollFd::new(self.stream.as_fd(), events),
                PollFd::new(peer.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            // Data (or an error or hang-up) on the socket comes first: a worker may send its
            // last frame and die right after.
            if fds[0].any().unwrap_or(false) {
                return Ok(());
            }
            if fds[1].any().unwrap_or(false) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the worker process has exited",
                ));
            }
        }
    }

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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLOUT)?;
                    continue;
                }
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
        self.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame length {len} is beyond any real frame"),
            ));
        }
        buf.clear();
        buf.resize(len as usize, 0);
        self.read_exact(buf)
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.stream.read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(PollFlags::POLLIN)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
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
    fn a_watched_end_notices_its_peer_exit_despite_other_copies() {
        let (mut parent, child) = pair().unwrap();
        // Another copy of the child's end stays open here, as in a process the task forked.
        let copy = child.stream.try_clone().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        parent
            .watch(pidfd_open(sleeper.id() as i32).unwrap())
            .unwrap();
        let err = parent.recv(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // Writes of more than the socket buffer fail the same way instead of blocking.
        let err = parent.send(&vec![0u8; 8 << 20]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        sleeper.wait().unwrap();
        drop((child, copy));
    }

    #[test]
    fn absurd_lengths_are_refused() {
        let (a, mut b) = pair().unwrap();
        (&a.stream).write_all(&u64::MAX.to_le_bytes()).unwrap();
        let err = b.recv(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
