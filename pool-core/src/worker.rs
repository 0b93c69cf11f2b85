//! The loop a worker process runs: receive a job, run it, send its results, repeat.
//!
//! A worker is single-threaded and owns nothing the parent or other workers need: its socket is
//! its own, so if it dies at any instruction the parent merely sees end-of-file on that socket.

use crate::frame::{self, Request, ResultsWriter};
use crate::registry;
use crate::transport::Channel;

/// Buffers that grew past this for one big job are given back afterwards.
const KEEP_BUFFER: usize = 16 << 20;

/// Serves jobs until the parent asks it to stop or goes away. Returns the exit code.
pub(crate) fn run(mut channel: Channel) -> i32 {
    let mut input = Vec::new();
    let mut output = Vec::new();
    loop {
        if channel.recv(&mut input).is_err() {
            return 0; // The parent closed our socket or died: nothing more to do.
        }
        match frame::parse_request(&input) {
            Ok(Request::Shutdown) => return 0,
            Ok(Request::Job { task, items }) => match registry::lookup(task) {
                None => ResultsWriter::unknown_task(&mut output),
                Some(entry) => {
                    let mut writer = ResultsWriter::new(&mut output);
                    (entry.run)(items, &mut writer);
                    writer.finish();
                }
            },
            // The parent only sends frames it built; garbage means the stream is out of step,
            // and exiting is the one answer the parent is sure to notice.
            Err(_) => return 3,
        }
        if channel.send(&output).is_err() {
            return 0;
        }
        for buf in [&mut input, &mut output] {
            if buf.capacity() > KEEP_BUFFER {
                *buf = Vec::new();
            }
        }
    }
}
