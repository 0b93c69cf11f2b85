//! [`LockedRing`]: the byte queue under [`Queue`](crate::Queue), [`JoinableQueue`](crate::JoinableQueue) and
//! [`Pipe`](crate::Pipe): many producers and consumers in any processes, items as byte
//! strings in a ring in one shared segment, guarded by a robust mutex.
//!
//! # Surviving a death at any instruction
//!
//! Every change happens under the mutex, in this order: the item's bytes are copied, a journal
//! records the old positions and counters, the positions and counters change, the journal is
//! cleared. A process that dies holding the mutex leaves it owner-died; the next locker finds
//! the journal active and restores the old state. So a producer that dies mid-`put` loses only
//! its own item, and a consumer that dies mid-`get` loses at most the item it was taking (if it
//! died after taking it); every other item stays, in order.
//!
//! Sleepers wait on futex words that the other side bumps under the mutex and wakes after: no
//! busy-waiting, and no lost wake-up (a sleeper reads the word under the mutex before waiting).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::raw::{left, RawMutex, Taken};
use super::segment::Segment;
use crate::sys::{futex_wait_timeout, futex_wake};
use crate::Error;

/// Where the ring's bytes start in the payload.
const DATA: usize = 1024;
/// How many sending processes a pipe's ring keeps track of (see [`Senders`]).
const MAX_SENDERS: usize = 32;
/// Bytes of the length prefix of an item.
const PREFIX: u64 = 4;

#[repr(C)]
struct State {
    mutex: RawMutex,
    head: AtomicU64,
    tail: AtomicU64,
    count: AtomicU64,
    /// Items put and not yet marked done (`JoinableQueue`).
    unfinished: AtomicU64,
    capacity: AtomicU64,
    /// 0: no limit on the number of items.
    max_items: AtomicU64,
    closed: AtomicU32,
    journal_active: AtomicU32,
    j_head: AtomicU64,
    j_tail: AtomicU64,
    j_count: AtomicU64,
    j_unfinished: AtomicU64,
    /// Bumped when an item arrives (or the queue closes).
    not_empty: AtomicU32,
    /// Bumped when room is made (or the queue closes).
    not_full: AtomicU32,
    /// Bumped when `unfinished` reaches zero.
    all_done: AtomicU32,
    waiting_get: AtomicU32,
    waiting_put: AtomicU32,
    waiting_join: AtomicU32,
    /// For a pipe's ring: the processes that hold its sending end open.
    senders: Senders,
}

/// The processes that hold a pipe's sending end open, so that a reader of an empty pipe learns
/// that nothing can come any more once all of them have closed their end or died — as a
/// process's exit closes its descriptors, and a reader of an OS pipe sees end-of-file.
///
/// Each entry is a process id with its start time (from `/proc/PID/stat`), so a reused pid is
/// not taken for the holder. Changed only under the ring's mutex. A pipe with more holders
/// than there are entries stops tracking (`overflow`): its readers then wait as a queue's do.
#[repr(C)]
struct Senders {
    /// Non-zero for a pipe's ring; a queue's tracks nothing.
    tracked: AtomicU32,
    overflow: AtomicU32,
    pid: [AtomicU32; MAX_SENDERS],
    start: [AtomicU64; MAX_SENDERS],
}

const _: () = assert!(std::mem::size_of::<State>() <= DATA);

/// How often a reader waiting on an empty pipe looks whether any sender is still alive.
const SENDER_CHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// The start time of process `pid` (clock ticks since boot), or `None` if it is gone or a
/// zombie (a zombie's descriptors are closed already).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // starttime is field 22 of the line; `state` was field 3.
    fields.nth(18)?.parse().ok()
}

/// Why a put did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutFail {
    Full,
    Closed,
    Timeout,
    TooLarge,
}

/// Why a get returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GetFail {
    Empty,
    Closed,
    Timeout,
}

/// How long to wait: not at all, until a deadline, or for ever.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    No,
    Until(Instant),
    Forever,
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Until(d) => Some(d),
            _ => None,
        }
    }
}

/// A byte queue in a shared segment. Cheap to clone (the segment is shared).
#[derive(Clone, Debug)]
pub(crate) struct LockedRing {
    pub(crate) seg: Arc<Segment>,
}

/// The mutex, held; released on drop.
struct Held<'a> {
    s: &'a State,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.s.mutex.unlock();
    }
}

impl<'a> Held<'a> {
    /// The other half of `sleep_on`: bumps `word`, unlocks, and wakes the sleepers on `word` if
    /// `waiting` says there are some (after the unlock, so that they can take the lock at once;
    /// an uncontended change makes no system call).
    fn signal(self, word: &'a AtomicU32, waiting: &'a AtomicU32) {
        word.fetch_add(1, Ordering::SeqCst);
        let wake = waiting.load(Ordering::Relaxed) > 0;
        drop(self);
        if wake {
            futex_wake(word);
        }
    }
}

impl LockedRing {
    /// A new ring of `capacity` bytes (at least 64), holding at most `max_items` items (0: no
    /// limit).
    pub(crate) fn create(capacity: usize, max_items: u64, kind: u64) -> Result<LockedRing, Error> {
        let capacity = capacity.max(64);
        let seg = super::handle::create(DATA + capacity, kind)?;
        // SAFETY: fresh zeroed shared memory, page-aligned, used by nothing yet.
        unsafe { RawMutex::init(seg.payload().cast()) };
        let ring = LockedRing { seg };
        let s = ring.state();
        s.capacity.store(capacity as u64, Ordering::Relaxed);
        s.max_items.store(max_items, Ordering::Relaxed);
        Ok(ring)
    }

    fn state(&self) -> &State {
        // SAFETY: the payload starts with a State initialized by `create`; the segment's kind
        // was checked when this handle was received.
        unsafe { &*self.seg.payload().cast::<State>() }
    }

    fn capacity(&self) -> u64 {
        // Never trust more than the mapping holds.
        self.state()
            .capacity
            .load(Ordering::Relaxed)
            .min((self.seg.payload_len() - DATA) as u64)
    }

    fn lock(&self) -> Held<'_> {
        let s = self.state();
        if s.mutex.lock() == Taken::OwnerDied {
            repair(s);
        }
        Held { s }
    }

    fn copy_in(&self, pos: u64, src: &[u8]) {
        let cap = self.capacity();
        let at = (pos % cap) as usize;
        let first = src.len().min(cap as usize - at);
        // SAFETY: both ranges lie inside the ring's data area (at + first ≤ cap, and the rest
        // starts at 0); the mutex is held, so no other process touches these bytes.
        unsafe {
            let base = self.seg.payload().add(DATA);
            std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), base, src.len() - first);
        }
    }

    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let cap = self.capacity();
        let at = (pos % cap) as usize;
        let first = dst.len().min(cap as usize - at);
        // SAFETY: as in `copy_in`.
        unsafe {
            let base = self.seg.payload().add(DATA);
            std::ptr::copy_nonoverlapping(base.add(at), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(base, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    /// Sleeps until `word` moves on from its value now (read under the mutex, so no wake-up is
    /// lost), or until `wait` runs out; the mutex is released meanwhile and on return. False
    /// when the caller is not to wait (any more).
    fn sleep_on(&self, held: Held<'_>, word: &AtomicU32, waiting: &AtomicU32, wait: Wait) -> bool {
        let seq = word.load(Ordering::SeqCst);
        match wait {
            Wait::No => return false,
            Wait::Until(d) if Instant::now() >= d => return false,
            _ => {}
        }
        waiting.fetch_add(1, Ordering::Relaxed);
        drop(held);
        futex_wait_timeout(word, seq, left(wait.deadline()));
        let _held = self.lock();
        waiting.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Appends one item.
    pub(crate) fn put(&self, item: &[u8], wait: Wait) -> Result<(), PutFail> {
        let need = PREFIX + item.len() as u64;
        if need > self.capacity() || item.len() > u32::MAX as usize {
            return Err(PutFail::TooLarge);
        }
        loop {
            let held = self.lock();
            let s = held.s;
            if s.closed.load(Ordering::Relaxed) != 0 {
                return Err(PutFail::Closed);
            }
            let (head, tail) = (
                s.head.load(Ordering::Relaxed),
                s.tail.load(Ordering::Relaxed),
            );
            let count = s.count.load(Ordering::Relaxed);
            let max = s.max_items.load(Ordering::Relaxed);
            let room = self.capacity() - (tail - head);
            if room >= need && (max == 0 || count < max) {
                self.copy_in(tail, &(item.len() as u32).to_le_bytes());
                self.copy_in(tail + PREFIX, item);
                journal(s);
                s.tail.store(tail + need, Ordering::Relaxed);
                s.count.store(count + 1, Ordering::Relaxed);
                s.unfinished.fetch_add(1, Ordering::Relaxed);
                s.journal_active.store(0, Ordering::Release);
                held.signal(&s.not_empty, &s.waiting_get);
                return Ok(());
            }
            if !self.sleep_on(held, &s.not_full, &s.waiting_put, wait) {
                return Err(match wait {
                    Wait::No => PutFail::Full,
                    _ => PutFail::Timeout,
                });
            }
        }
    }

    /// Takes the oldest item.
    pub(crate) fn get(&self, wait: Wait) -> Result<Vec<u8>, GetFail> {
        loop {
            let held = self.lock();
            let s = held.s;
            let count = s.count.load(Ordering::Relaxed);
            if count > 0 {
                let head = s.head.load(Ordering::Relaxed);
                let tail = s.tail.load(Ordering::Relaxed);
                let mut len = [0u8; 4];
                self.copy_out(head, &mut len);
                let len = u64::from(u32::from_le_bytes(len));
                if PREFIX + len > tail - head {
                    // Cannot happen unless the segment was scribbled on: drop everything
                    // rather than read garbage.
                    journal(s);
                    s.head.store(tail, Ordering::Relaxed);
                    s.count.store(0, Ordering::Relaxed);
                    s.journal_active.store(0, Ordering::Release);
                    continue;
                }
                let mut item = vec![0u8; len as usize];
                self.copy_out(head + PREFIX, &mut item);
                journal(s);
                if count == 1 {
                    // Empty now: start again at the beginning, so a queue that keeps up uses
                    // only its first pages.
                    s.head.store(0, Ordering::Relaxed);
                    s.tail.store(0, Ordering::Relaxed);
                } else {
                    s.head.store(head + PREFIX + len, Ordering::Relaxed);
                }
                s.count.store(count - 1, Ordering::Relaxed);
                s.journal_active.store(0, Ordering::Release);
                held.signal(&s.not_full, &s.waiting_put);
                return Ok(item);
            }
            if s.closed.load(Ordering::Relaxed) != 0 || Self::senders_gone(s) {
                return Err(GetFail::Closed);
            }
            if !self.sleep_on(held, &s.not_empty, &s.waiting_get, Self::sliced(s, wait)) {
                if Self::sliced_out(wait) {
                    continue; // a slice ended: look at the senders again
                }
                return Err(match wait {
                    Wait::No => GetFail::Empty,
                    _ => GetFail::Timeout,
                });
            }
        }
    }

    /// Waits until an item is there (or the ring is closed and empty); whether one is.
    pub(crate) fn poll(&self, wait: Wait) -> bool {
        loop {
            let held = self.lock();
            let s = held.s;
            if s.count.load(Ordering::Relaxed) > 0 {
                return true;
            }
            if s.closed.load(Ordering::Relaxed) != 0 || Self::senders_gone(s) {
                return false;
            }
            if !self.sleep_on(held, &s.not_empty, &s.waiting_get, Self::sliced(s, wait))
                && !Self::sliced_out(wait)
            {
                return false;
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().s.count.load(Ordering::Relaxed) as usize
    }

    pub(crate) fn is_full(&self) -> bool {
        let held = self.lock();
        let s = held.s;
        let max = s.max_items.load(Ordering::Relaxed);
        let used = s.tail.load(Ordering::Relaxed) - s.head.load(Ordering::Relaxed);
        (max != 0 && s.count.load(Ordering::Relaxed) >= max) || used + PREFIX >= self.capacity()
    }

    /// A reader of a pipe sleeps in slices of [`SENDER_CHECK`], so that it sees the senders die
    /// (a dead process cannot wake it); a queue's reader sleeps as asked.
    fn sliced(s: &State, wait: Wait) -> Wait {
        if s.senders.tracked.load(Ordering::Relaxed) == 0 {
            return wait;
        }
        let slice = Instant::now() + SENDER_CHECK;
        match wait {
            Wait::No => Wait::No,
            Wait::Until(d) => Wait::Until(d.min(slice)),
            Wait::Forever => Wait::Until(slice),
        }
    }

    /// Whether a wait that `sleep_on` ended was only a slice of the caller's `wait`.
    fn sliced_out(wait: Wait) -> bool {
        match wait {
            Wait::No => false,
            Wait::Until(d) => Instant::now() < d,
            Wait::Forever => true,
        }
    }

    /// Makes this ring a pipe's: it tracks the processes that hold its sending end, starting
    /// with this one.
    pub(crate) fn track_senders(&self) {
        let held = self.lock();
        held.s.senders.tracked.store(1, Ordering::Relaxed);
        drop(held);
        self.add_sender(std::process::id());
    }

    /// Records that process `pid` holds the sending end (once).
    pub(crate) fn add_sender(&self, pid: u32) {
        let Some(start) = start_time(pid) else {
            return; // already gone: it holds nothing
        };
        let held = self.lock();
        let senders = &held.s.senders;
        if senders.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut free = None;
        for i in 0..MAX_SENDERS {
            let p = senders.pid[i].load(Ordering::Relaxed);
            if p == pid && senders.start[i].load(Ordering::Relaxed) == start {
                return;
            }
            let stale = p != 0
                && start_time(p).is_none_or(|t| t != senders.start[i].load(Ordering::Relaxed));
            if free.is_none() && (p == 0 || stale) {
                free = Some(i);
            }
        }
        match free {
            Some(i) => {
                senders.pid[i].store(pid, Ordering::Relaxed);
                senders.start[i].store(start, Ordering::Relaxed);
            }
            None => senders.overflow.store(1, Ordering::Relaxed),
        }
    }

    /// Records that process `pid` no longer holds the sending end, and wakes the readers so
    /// they look whether anyone still does.
    pub(crate) fn remove_sender(&self, pid: u32) {
        let held = self.lock();
        let s = held.s;
        for i in 0..MAX_SENDERS {
            if s.senders.pid[i].load(Ordering::Relaxed) == pid {
                s.senders.pid[i].store(0, Ordering::Relaxed);
            }
        }
        held.signal(&s.not_empty, &s.waiting_get);
    }

    /// For a pipe's ring: whether no process that holds the sending end is alive any more.
    fn senders_gone(s: &State) -> bool {
        let senders = &s.senders;
        if senders.tracked.load(Ordering::Relaxed) == 0
            || senders.overflow.load(Ordering::Relaxed) != 0
        {
            return false;
        }
        !(0..MAX_SENDERS).any(|i| {
            let p = senders.pid[i].load(Ordering::Relaxed);
            p != 0 && start_time(p) == Some(senders.start[i].load(Ordering::Relaxed))
        })
    }

    /// No more puts; gets drain what is left, then report `Closed`.
    pub(crate) fn close(&self) {
        let held = self.lock();
        let s = held.s;
        s.closed.store(1, Ordering::Relaxed);
        s.not_empty.fetch_add(1, Ordering::SeqCst);
        s.not_full.fetch_add(1, Ordering::SeqCst);
        drop(held);
        futex_wake(&s.not_empty);
        futex_wake(&s.not_full);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().s.closed.load(Ordering::Relaxed) != 0
    }

    /// Marks one item done; false if more were marked than were put.
    pub(crate) fn task_done(&self) -> bool {
        let held = self.lock();
        let s = held.s;
        let n = s.unfinished.load(Ordering::Relaxed);
        if n == 0 {
            return false;
        }
        s.unfinished.store(n - 1, Ordering::Relaxed);
        if n == 1 {
            held.signal(&s.all_done, &s.waiting_join);
        }
        true
    }

    /// Waits until every item put has been marked done; false on timeout.
    pub(crate) fn join(&self, wait: Wait) -> bool {
        loop {
            let held = self.lock();
            let s = held.s;
            if s.unfinished.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if !self.sleep_on(held, &s.all_done, &s.waiting_join, wait) {
                return false;
            }
        }
    }
}

/// Each field a change may touch, with its copy in the journal.
fn journalled(s: &State) -> [(&AtomicU64, &AtomicU64); 4] {
    [
        (&s.head, &s.j_head),
        (&s.tail, &s.j_tail),
        (&s.count, &s.j_count),
        (&s.unfinished, &s.j_unfinished),
    ]
}

/// Records the state about to change, so a death before the change completes can be undone.
fn journal(s: &State) {
    for (live, saved) in journalled(s) {
        saved.store(live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    s.journal_active.store(1, Ordering::Release);
}

/// After an owner died holding the mutex: undoes its unfinished change, if any.
fn repair(s: &State) {
    if s.journal_active.load(Ordering::Acquire) != 0 {
        for (live, saved) in journalled(s) {
            live.store(saved.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        s.journal_active.store(0, Ordering::Release);
    }
    // Wake everyone: a sleeper may have been waiting on the dead owner's change.
    s.not_empty.fetch_add(1, Ordering::SeqCst);
    s.not_full.fetch_add(1, Ordering::SeqCst);
    futex_wake(&s.not_empty);
    futex_wake(&s.not_full);
}
