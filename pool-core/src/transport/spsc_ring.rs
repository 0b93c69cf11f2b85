//! A single-producer, single-consumer byte ring in memory shared by two processes.
//!
//! The producer copies bytes in at `tail`, the consumer copies them out at `head`; both
//! positions only grow, and a position `p` lives at byte `p % capacity`. Frames are simply
//! bytes in the stream (length-prefixed by the layer above), so a frame may be larger than the
//! ring: it is then moved in pieces as the other side makes room.
//!
//! # Memory ordering
//!
//! The producer writes bytes into `[tail, head + capacity)`, then publishes them by storing the
//! new `tail` with `Release`; the consumer loads `tail` with `Acquire` before reading
//! `[head, tail)`, and publishes the space it freed by storing `head` with `Release`, which the
//! producer loads with `Acquire` before reusing it. So no byte is read and written at once by a
//! well-behaved peer.
//!
//! # Sleeping and waking
//!
//! A side that finds nothing to do may sleep on a futex (the worker does). Before sleeping it
//! raises its `waiting` flag, issues a `SeqCst` fence and checks the ring again; the other side,
//! after publishing, issues a `SeqCst` fence and checks the flag. One of the two always sees the
//! other (the fences are totally ordered), so a wake-up is never lost, and the busy path costs no
//! system call.
//!
//! # A peer that misbehaves
//!
//! The other process may die at any instruction or scribble over the shared memory. Every index
//! is reduced modulo the capacity and every length clamped to it, so garbage positions give
//! garbage bytes, never an access outside the ring; the layer above validates what it reads.

use std::mem::MaybeUninit;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::sys;

/// Keeps each field on its own cache lines, so the two sides do not slow each other down.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

/// The control block of one ring, in shared memory.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RingCtl {
    head: Padded<AtomicU64>,
    tail: Padded<AtomicU64>,
    wait: Padded<WaitWords>,
}

#[repr(C)]
#[derive(Debug, Default)]
struct WaitWords {
    /// Bumped by the producer to wake a consumer sleeping for data.
    data_signal: AtomicU32,
    consumer_waiting: AtomicU32,
    /// Bumped by the consumer to wake a producer sleeping for space.
    space_signal: AtomicU32,
    producer_waiting: AtomicU32,
}

/// How many times a side re-checks the ring before it goes to sleep.
const SPINS: u32 = 2_000;

/// A view of one ring: its control block and data area.
///
/// # Invariant
///
/// `ctl` and `data .. data + cap` point into a shared mapping that outlives this value (the
/// `Region` that owns both), `cap` is a power of two, and in each process at most one thread
/// acts as this ring's producer and at most one as its consumer.
#[derive(Debug)]
pub(crate) struct SpscRing {
    ctl: *const RingCtl,
    data: *mut u8,
    cap: usize,
}

// SAFETY: a `Ring` is a pair of pointers into shared memory; the producer/consumer discipline
// of the invariant, not the thread, is what keeps access sound.
unsafe impl Send for SpscRing {}
// SAFETY: as above.
unsafe impl Sync for SpscRing {}

impl SpscRing {
    /// # Safety
    ///
    /// `ctl` must point to an initialized `RingCtl` and `data` to `cap` bytes, both valid for the
    /// lifetime of the returned value, and `cap` must be a power of two.
    pub(crate) unsafe fn new(ctl: *const RingCtl, data: *mut u8, cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        SpscRing { ctl, data, cap }
    }

    fn ctl(&self) -> &RingCtl {
        // SAFETY: valid for our lifetime by the invariant.
        unsafe { &*self.ctl }
    }

    // --- producer side ------------------------------------------------------------------------

    /// How many bytes can be written now.
    pub(crate) fn writable(&self) -> usize {
        let ctl = self.ctl();
        let tail = ctl.tail.0.load(Ordering::Relaxed);
        let head = ctl.head.0.load(Ordering::Acquire);
        let used = (tail.wrapping_sub(head) as usize).min(self.cap);
        self.cap - used
    }

    /// Copies as much of `src` as fits and publishes it; returns how much was written.
    pub(crate) fn write(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.writable());
        if n == 0 {
            return 0;
        }
        let ctl = self.ctl();
        let tail = ctl.tail.0.load(Ordering::Relaxed);
        let at = tail as usize & (self.cap - 1);
        let first = n.min(self.cap - at);
        // SAFETY: `at + first <= cap` and `n - first <= at`, so both copies stay inside the data
        // area; the bytes `[tail, tail + n)` are free (checked through `writable` with an
        // `Acquire` load of `head`), so a well-behaved consumer does not touch them now.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data, n - first);
        }
        ctl.tail
            .0
            .store(tail.wrapping_add(n as u64), Ordering::Release);
        n
    }

    /// After writing: wakes the consumer if it sleeps waiting for data.
    pub(crate) fn wake_consumer(&self) {
        let w = &self.ctl().wait.0;
        wake(&w.consumer_waiting, &w.data_signal);
    }

    /// Blocks (spinning briefly, then on the futex) until some space is free.
    pub(crate) fn wait_writable(&self) {
        let w = &self.ctl().wait.0;
        wait(
            || self.writable() > 0,
            &w.producer_waiting,
            &w.space_signal,
            None,
        );
    }

    // --- consumer side ------------------------------------------------------------------------

    /// How many bytes can be read now.
    pub(crate) fn readable(&self) -> usize {
        let ctl = self.ctl();
        let head = ctl.head.0.load(Ordering::Relaxed);
        let tail = ctl.tail.0.load(Ordering::Acquire);
        (tail.wrapping_sub(head) as usize).min(self.cap)
    }

    /// Copies as many bytes as are available into `dst` and frees their space; returns how many.
    pub(crate) fn read(&self, dst: &mut [u8]) -> usize {
        // SAFETY: `read_into` only writes initialised bytes, so `dst` stays initialised.
        self.read_into(unsafe { &mut *(dst as *mut [u8] as *mut [MaybeUninit<u8>]) })
    }

    /// Appends up to `max` available bytes to `dst` (without first zeroing the room for them)
    /// and frees their space; returns how many.
    pub(crate) fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> usize {
        dst.reserve(max);
        let len = dst.len();
        let n = self.read_into(&mut dst.spare_capacity_mut()[..max]);
        // SAFETY: `read_into` initialised the first `n` bytes of the spare capacity.
        unsafe { dst.set_len(len + n) };
        n
    }

    /// Copies as many bytes as are available into the front of `dst`, frees their space, and
    /// returns how many: those bytes of `dst` are then initialised.
    fn read_into(&self, dst: &mut [MaybeUninit<u8>]) -> usize {
        let n = dst.len().min(self.readable());
        if n == 0 {
            return 0;
        }
        let ctl = self.ctl();
        let head = ctl.head.0.load(Ordering::Relaxed);
        let at = head as usize & (self.cap - 1);
        let first = n.min(self.cap - at);
        let dst = dst.as_mut_ptr().cast::<u8>();
        // SAFETY: both copies stay inside the data area (as in `write`) and inside `dst`
        // (`n <= dst.len()`); the bytes `[head, head + n)` were published by the producer
        // (`Acquire` load of `tail` in `readable`), which does not touch them until `head`
        // moves past them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(at), dst, first);
            std::ptr::copy_nonoverlapping(self.data, dst.add(first), n - first);
        }
        ctl.head
            .0
            .store(head.wrapping_add(n as u64), Ordering::Release);
        n
    }

    /// Runs `f` on the next `len` bytes where they lie in the ring, then frees them — when all
    /// `len` are readable and contiguous; otherwise returns `None` and consumes nothing.
    pub(crate) fn consume_in_place<R>(&self, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if len > self.readable() {
            return None;
        }
        let ctl = self.ctl();
        let head = ctl.head.0.load(Ordering::Relaxed);
        let at = head as usize & (self.cap - 1);
        if len > self.cap - at {
            return None;
        }
        // SAFETY: `[at, at + len)` is inside the data area (checked above); those bytes were
        // published by the producer (`Acquire` load of `tail` in `readable`), and a
        // well-behaved producer does not write them until `head` moves past them, which
        // happens only below, after `f` — the only user of the slice — has returned. (The
        // producer is the parent, which trusts its own code: a worker that reads its jobs in
        // place trusts the parent, as it already trusts the frames it copies.)
        let bytes = unsafe { std::slice::from_raw_parts(self.data.add(at), len) };
        let result = f(bytes);
        ctl.head
            .0
            .store(head.wrapping_add(len as u64), Ordering::Release);
        Some(result)
    }

    /// How many bytes the ring holds.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Blocks (spinning briefly, then on the futex) until at least `len` bytes are readable,
    /// which must be at most the capacity.
    pub(crate) fn wait_for(&self, len: usize) {
        debug_assert!(len <= self.cap);
        let w = &self.ctl().wait.0;
        wait(
            || self.readable() >= len,
            &w.consumer_waiting,
            &w.data_signal,
            None,
        );
    }

    /// After reading: wakes the producer if it sleeps waiting for space.
    pub(crate) fn wake_producer(&self) {
        let w = &self.ctl().wait.0;
        wake(&w.producer_waiting, &w.space_signal);
    }

    /// Blocks (spinning briefly, then on the futex) until some data is available.
    pub(crate) fn wait_readable(&self) {
        let w = &self.ctl().wait.0;
        wait(
            || self.readable() > 0,
            &w.consumer_waiting,
            &w.data_signal,
            None,
        );
    }

    /// [`wait_readable`](Self::wait_readable) for at most about `timeout`: returns whether
    /// there is something to read.
    pub(crate) fn wait_readable_for(&self, timeout: std::time::Duration) -> bool {
        let w = &self.ctl().wait.0;
        wait(
            || self.readable() > 0,
            &w.consumer_waiting,
            &w.data_signal,
            Some(timeout),
        )
    }
}

/// The waking half of the protocol in the module docs: after publishing, wake the other side if
/// it said it sleeps on `signal`.
fn wake(waiting: &AtomicU32, signal: &AtomicU32) {
    fence(Ordering::SeqCst);
    if waiting.load(Ordering::Relaxed) != 0 {
        signal.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(signal);
    }
}

/// The sleeping half: spin a little, then raise `waiting`, check `ready` again, and sleep on
/// `signal` until `ready` holds — or, with a `timeout`, for at most one sleep of that length.
/// Returns whether `ready` holds.
fn wait(
    ready: impl Fn() -> bool,
    waiting: &AtomicU32,
    signal: &AtomicU32,
    timeout: Option<std::time::Duration>,
) -> bool {
    for i in 0..SPINS {
        if ready() {
            return true;
        }
        if i % 64 == 63 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    let mut is_ready;
    loop {
        let seen = signal.load(Ordering::SeqCst);
        waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        is_ready = ready();
        if is_ready {
            break;
        }
        sys::futex_wait_timeout(signal, seen, timeout);
        if timeout.is_some() {
            is_ready = ready();
            break;
        }
    }
    waiting.store(0, Ordering::Relaxed);
    is_ready
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::sys::SharedMapping;

    fn ring_in(map: &SharedMapping, cap: usize) -> SpscRing {
        assert!(map.len() >= 4096 + cap);
        let ctl = map.as_ptr().cast::<RingCtl>();
        // SAFETY: the mapping is zeroed (a valid RingCtl), large enough, and outlives the ring
        // within each test.
        unsafe { SpscRing::new(ctl, map.as_ptr().add(4096), cap) }
    }

    /// A deterministic pseudo-random sequence.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn wraps_around_and_preserves_bytes() {
        let map = SharedMapping::new(4096 + 64).unwrap();
        let ring = ring_in(&map, 64);
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..1000 {
            let chunk: Vec<u8> = (0..(round % 50 + 1))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            assert_eq!(ring.write(&chunk), chunk.len());
            let mut out = vec![0; chunk.len()];
            assert_eq!(ring.read(&mut out), chunk.len());
            for b in out {
                expect = expect.wrapping_add(1);
                assert_eq!(b, expect);
            }
        }
        assert_eq!(ring.write(&[1; 100]), 64, "only the capacity fits");
        assert_eq!(ring.writable(), 0);
        assert_eq!(ring.read(&mut [0; 100]), 64);
    }

    /// Frames read in place: only when whole and contiguous, and then consumed; otherwise
    /// nothing is consumed and the bytes read the ordinary way.
    #[test]
    fn frames_are_read_in_place_only_when_whole_and_contiguous() {
        let map = SharedMapping::new(4096 + 64).unwrap();
        let ring = ring_in(&map, 64);
        let frame: Vec<u8> = (1..=20).collect();
        assert_eq!(ring.write(&frame[..10]), 10);
        assert_eq!(ring.consume_in_place(20, |_| ()), None, "half a frame");
        assert_eq!(ring.write(&frame[10..]), 10);
        ring.wait_for(20);
        assert_eq!(
            ring.consume_in_place(20, |b| b.to_vec()),
            Some(frame.clone())
        );
        assert_eq!(ring.readable(), 0);
        // Head at 20: a 50-byte frame wraps around the end (at 64).
        let long: Vec<u8> = (100..150).collect();
        assert_eq!(ring.write(&long), 50);
        assert_eq!(ring.consume_in_place(50, |_| ()), None, "wraps around");
        let mut out = vec![0; 50];
        assert_eq!(ring.read(&mut out), 50);
        assert_eq!(out, long);
        // Head at 70 = 6: contiguous again.
        assert_eq!(ring.write(&frame), 20);
        assert_eq!(ring.consume_in_place(20, |b| b == &frame[..]), Some(true));
    }

    /// Two processes, millions of frames of random sizes, every byte checked.
    #[test]
    fn two_process_stress() {
        const CAP: usize = 1 << 12;
        let frames: u64 = if cfg!(debug_assertions) {
            300_000
        } else {
            3_000_000
        };
        let map = SharedMapping::new(4096 + CAP).unwrap();
        let ring = ring_in(&map, CAP);
        // SAFETY: the child only uses the ring, the allocator and `_exit`.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut seed = 7u64;
                let mut buf = Vec::new();
                for i in 0..frames {
                    let len = (xorshift(&mut seed) % 700) as usize;
                    buf.clear();
                    buf.extend_from_slice(&(len as u32).to_le_bytes());
                    buf.extend((0..len).map(|j| (i as usize + j) as u8));
                    let mut sent = 0;
                    while sent < buf.len() {
                        let n = ring.write(&buf[sent..]);
                        sent += n;
                        if n > 0 {
                            ring.wake_consumer();
                        } else {
                            ring.wait_writable();
                        }
                    }
                }
                // SAFETY: ends the child without running the test harness's code.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let mut seed = 7u64;
                let read_exact = |dst: &mut [u8]| {
                    let mut got = 0;
                    while got < dst.len() {
                        let n = ring.read(&mut dst[got..]);
                        got += n;
                        if n > 0 {
                            ring.wake_producer();
                        } else {
                            ring.wait_readable();
                        }
                    }
                };
                let mut body = Vec::new();
                for i in 0..frames {
                    let expected_len = (xorshift(&mut seed) % 700) as usize;
                    let mut len = [0u8; 4];
                    read_exact(&mut len);
                    assert_eq!(u32::from_le_bytes(len) as usize, expected_len, "frame {i}");
                    body.resize(expected_len, 0);
                    read_exact(&mut body);
                    for (j, &b) in body.iter().enumerate() {
                        assert_eq!(b, (i as usize + j) as u8, "frame {i} byte {j}");
                    }
                }
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)));
            }
        }
    }
}
