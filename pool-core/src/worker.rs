//! The loop a worker process runs: take a job from its ring, run it, put the results in the
//! other ring, repeat.
//!
//! A worker is single-threaded and owns nothing the parent or other workers need: its region is
//! its own, so if it dies at any instruction the parent simply discards the region (it learns of
//! the death from the worker's pidfd).
//!
//! Each frame on the rings is in an envelope (`transport::envelope`): on the result ring it
//! carries how long the job ran, which the parent uses to decide how much work to queue at
//! each worker. The frames themselves are `wire::frame`'s.

use std::sync::atomic::Ordering;

use crate::registry;
use crate::transport::envelope;
use crate::transport::region::{Bell, Region, EXIT_BELL_LOST, SKIP_SLOTS};
use crate::wire::frame::{self, Request, ResultsWriter};

/// Buffers that grew past this for one big job are given back afterwards.
const KEEP_BUFFER: usize = 256 << 20;

/// Serves jobs until the parent asks it to stop. Returns the exit code.
///
/// A frame that fits in half the job ring is run where it lies in the ring, once all of it
/// has arrived (the parent writes a frame in one go when there is room, and there always is:
/// everything before it has been read); larger ones, and the rare one that wraps around the
/// ring's end, are copied out first.
pub(crate) fn run(region: &Region, bell: i32) -> i32 {
    let bell = &Bell::new(bell);
    // SAFETY: the region is mapped for the rest of this process's life (a worker never
    // returns from serving but to exit), so its header may be taken as `'static`.
    let header: &'static crate::transport::region::Header =
        unsafe { &*(region.header() as *const crate::transport::region::Header) };
    crate::cancel::enter_worker(&header.stop.0);
    let mut state = State {
        output: Vec::new(),
        last: None,
        rss_sampled: crate::sys::monotonic_ns(),
    };
    let mut input = Vec::new();
    region
        .header()
        .rss_bytes
        .store(resident_bytes(), Ordering::Relaxed);
    loop {
        let mut head = [0u8; envelope::JOB_HEAD];
        read_exact(region, bell, &mut head);
        let Some(len) = envelope::read_job_head(head) else {
            return 3; // The stream is out of step; exiting is what the parent surely notices.
        };
        let jobs = region.jobs();
        let mut outcome = None;
        if len <= jobs.capacity() / 2 {
            jobs.wait_for(len);
            outcome = jobs.consume_in_place(len, |frame| state.serve(region, bell, frame));
            if outcome.is_some() {
                // Space was freed: the parent may be waiting to send the next frame.
                region.poke_parent(bell);
            }
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                // Every byte is overwritten by the read: only growth needs zeroing.
                input.resize(len, 0);
                read_exact(region, bell, &mut input);
                state.serve(region, bell, &input)
            }
        };
        if let Some(code) = outcome {
            return code;
        }
        if bell.is_lost() {
            // A task closed the bell: this job is answered, but the parent could not be woken
            // for the next one. Exit; the parent sees it through the pidfd and starts another.
            return EXIT_BELL_LOST;
        }
        for buf in [&mut input, &mut state.output] {
            if buf.capacity() > KEEP_BUFFER {
                *buf = Vec::new();
            }
        }
    }
}

/// What a worker keeps from one job to the next.
struct State {
    /// The result frame being written (a reused buffer).
    output: Vec<u8>,
    /// The last task run: jobs mostly repeat it, and comparing a name is cheaper than hashing.
    last: Option<&'static crate::task::TaskEntry>,
    /// When the resident memory was last read (monotonic ns).
    rss_sampled: u64,
}

impl State {
    /// Runs one request frame and sends its results. Returns the exit code if the worker is
    /// to exit.
    fn serve(&mut self, region: &Region, bell: &Bell, frame: &[u8]) -> Option<i32> {
        let header = region.header();
        // Two clock reads per job (this one and the one after it): a job may be a single tiny
        // task, and in a virtual machine a read can cost as much as the task.
        let started = crate::sys::monotonic_ns();
        // Shared data whose creator dropped it is unmapped here, between tasks (one atomic
        // load when this worker keeps none).
        crate::shared::sweep_if_due(started);
        header.job_started_ns.store(started, Ordering::Relaxed);
        let seq = header.jobs_started.0.fetch_add(1, Ordering::SeqCst);
        // After counting the job as begun (see `cancel`): a job cancelled before it began is
        // answered without running.
        let skip = &header.skip[seq as usize % SKIP_SLOTS];
        if skip.load(Ordering::SeqCst) == seq + 1 {
            ResultsWriter::skipped(&mut self.output);
            self.send(region, bell, started);
            return None;
        }
        crate::cancel::begin(seq);

        let output = &mut self.output;
        match frame::parse_request(frame) {
            Ok(Request::Shutdown) => return Some(0),
            Ok(Request::Job { task, mut items }) => match self
                .last
                .filter(|e| e.name == task)
                .or_else(|| registry::lookup(task))
            {
                None => ResultsWriter::unknown_task(output),
                Some(entry) => {
                    self.last = Some(entry);
                    let several = items.remaining() > 1;
                    items.report_to(&header.item.0);
                    // A long job of several items sends what it has done now and then, so that
                    // it survives this process (see `wire::frame::split`).
                    let mut send_partial = |frame: &[u8]| {
                        write_all(
                            region,
                            bell,
                            &envelope::result_head(frame.len(), envelope::PARTIAL),
                        );
                        write_all(region, bell, frame);
                        region.results().wake_consumer();
                        region.poke_parent(bell);
                    };
                    let mut writer = ResultsWriter::new(output);
                    if several {
                        writer.flush_to(&mut send_partial);
                    }
                    (entry.run)(items, &mut writer);
                    writer.finish();
                }
            },
            Err(_) => return Some(3),
        }
        crate::cancel::end();
        self.send(region, bell, started);
        None
    }

    /// Sends the result frame in `output` for a job begun at `started`.
    fn send(&mut self, region: &Region, bell: &Bell, started: u64) {
        let header = region.header();
        let output = &mut self.output;
        let ended = crate::sys::monotonic_ns();
        let busy = ended.saturating_sub(started);
        header.busy_ns.fetch_add(busy, Ordering::Relaxed);
        // Before the result is published, so the parent sees the memory this job left behind.
        if ended.saturating_sub(self.rss_sampled) >= RSS_SAMPLE_NS {
            header.rss_bytes.store(resident_bytes(), Ordering::Relaxed);
            self.rss_sampled = ended;
        }

        write_all(region, bell, &envelope::result_head(output.len(), busy));
        write_all(region, bell, output);
        region.results().wake_consumer();
        region.poke_parent(bell);
    }
}

/// How often a worker reads its resident memory (a read of `/proc/self/statm`), in ns.
const RSS_SAMPLE_NS: u64 = 10_000_000;

/// This process's resident memory in bytes (0 if `/proc` cannot be read).
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system setting.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// Reads exactly `dst.len()` bytes from the job ring, sleeping while it is empty.
fn read_exact(region: &Region, bell: &Bell, dst: &mut [u8]) {
    let ring = region.jobs();
    let mut got = 0;
    while got < dst.len() {
        let n = ring.read(&mut dst[got..]);
        if n == 0 {
            if crate::shared::keeps_any() {
                // Idle with shared data mapped: wake now and then to drop what its creator
                // has dropped, so the memory is freed without waiting for another job.
                if !ring.wait_readable_for(crate::shared::IDLE_SWEEP) {
                    crate::shared::sweep();
                }
            } else {
                ring.wait_readable();
            }
            continue;
        }
        got += n;
        // Space was freed: the parent may be waiting to send the rest of a big frame.
        region.poke_parent(bell);
    }
}

/// Writes all of `src` to the result ring, sleeping while it is full.
fn write_all(region: &Region, bell: &Bell, src: &[u8]) {
    let ring = region.results();
    let mut sent = 0;
    while sent < src.len() {
        let n = ring.write(&src[sent..]);
        if n == 0 {
            // Let the parent take what is there before waiting for space.
            ring.wake_consumer();
            region.poke_parent(bell);
            ring.wait_writable();
            continue;
        }
        sent += n;
    }
}
