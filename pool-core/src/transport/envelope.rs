//! The envelope around a frame on a worker's rings, stated once: what the parent and the worker
//! write before each frame, and how the other side reads it back.
//!
//! ```text
//! job ring    (parent → worker):  len:u64           frame
//! result ring (worker → parent):  len:u64 busy:u64  frame     busy: ns the worker spent on it
//! ```
//!
//! All little-endian. A length over [`MAX_FRAME`] means the stream is out of step (a worker
//! scribbled on its region): the reader stops trusting it — the worker exits, the parent kills
//! the worker.

use super::spsc_ring::SpscRing;

/// Frames longer than this are refused as corrupt (1 TiB).
pub(crate) const MAX_FRAME: u64 = 1 << 40;

/// Bytes of a job frame's envelope.
pub(crate) const JOB_HEAD: usize = 8;
/// Bytes of a result frame's envelope.
pub(crate) const RESULT_HEAD: usize = 16;

/// The envelope of a job frame of `len` bytes.
#[inline]
pub(crate) fn job_head(len: usize) -> [u8; JOB_HEAD] {
    (len as u64).to_le_bytes()
}

/// The length in a job frame's envelope, or `None` if the stream is out of step.
#[inline]
pub(crate) fn read_job_head(head: [u8; JOB_HEAD]) -> Option<usize> {
    let len = u64::from_le_bytes(head);
    (len <= MAX_FRAME).then_some(len as usize)
}

/// The envelope of a result frame of `len` bytes that took the worker `busy_ns`.
#[inline]
pub(crate) fn result_head(len: usize, busy_ns: u64) -> [u8; RESULT_HEAD] {
    let mut head = [0u8; RESULT_HEAD];
    head[..8].copy_from_slice(&(len as u64).to_le_bytes());
    head[8..].copy_from_slice(&busy_ns.to_le_bytes());
    head
}

/// The busy time that marks a *partial* result frame: the outcomes of the items of the running
/// job done so far, sent now and then while a long job runs, so that they survive the worker
/// (see `wire::frame::split`). The job's last frame carries its real busy time.
pub(crate) const PARTIAL: u64 = u64::MAX;

/// The length and busy time in a result frame's envelope, or `None` if the stream is out of
/// step.
#[inline]
pub(crate) fn read_result_head(head: &[u8; RESULT_HEAD]) -> Option<(usize, u64)> {
    let mut len = [0u8; 8];
    let mut busy = [0u8; 8];
    len.copy_from_slice(&head[..8]);
    busy.copy_from_slice(&head[8..]);
    let len = u64::from_le_bytes(len);
    (len <= MAX_FRAME).then_some((len as usize, u64::from_le_bytes(busy)))
}

/// Parent: writes a whole small frame (the shutdown request) with its envelope and wakes the
/// worker. Only for frames that surely fit: the ring is empty behind them.
pub(crate) fn send_small(ring: &SpscRing, frame: &[u8]) {
    ring.write(&job_head(frame.len()));
    ring.write(frame);
    ring.wake_consumer();
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_refuse_absurd_lengths() {
        assert_eq!(read_job_head(job_head(12345)), Some(12345));
        assert_eq!(read_job_head((MAX_FRAME + 1).to_le_bytes()), None);
        assert_eq!(read_result_head(&result_head(7, 99)), Some((7, 99)));
        let mut bad = result_head(0, 1);
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(read_result_head(&bad), None);
    }
}
