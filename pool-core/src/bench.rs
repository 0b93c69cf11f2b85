//! Entry points for the criterion benches in `pool-core/benches/`. Not a public API.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A ring in a shared mapping, used from one thread (producer and consumer in turn).
#[derive(Debug)]
pub struct LoopbackRing {
    region: crate::transport::region::Region,
}

impl LoopbackRing {
    /// A new region; only its job ring is used.
    pub fn new() -> Self {
        LoopbackRing {
            region: crate::transport::region::Region::new().expect("shared mapping"),
        }
    }

    /// Writes `frame` into the ring and reads it back into `out` (same length), in pieces
    /// when it is larger than the ring.
    pub fn round_trip(&self, frame: &[u8], out: &mut [u8]) {
        let ring = self.region.jobs();
        let (mut sent, mut got) = (0, 0);
        while got < out.len() {
            sent += ring.write(&frame[sent..]);
            got += ring.read(&mut out[got..]);
        }
    }
}

impl Default for LoopbackRing {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes `items` as one job frame, as `map` does for a chunk.
pub fn encode_job<A: Serialize + 'static>(task: &str, items: &[A]) -> Vec<u8> {
    let mut b = crate::wire::frame::JobBuilder::new(task);
    for item in items {
        b.push(item).expect("encodes");
    }
    b.finish()
}

/// Encodes `count` items from `iter` as one job frame of a `map` of `T`, as `map` does for a
/// chunk (in `buf`, a recycled buffer).
pub fn encode_map_chunk<T: crate::Task>(
    buf: Vec<u8>,
    iter: &mut impl Iterator<Item = T::Args>,
    count: u32,
) -> Vec<u8> {
    let (frame, spliced, _) =
        crate::map::encode_chunk::<T>(buf, iter, count, count as usize, None).expect("encodes");
    spliced.flatten(frame)
}

/// Runs a job frame as a worker does, writing the result frame into `out`.
pub fn run_job(frame: &[u8], out: &mut Vec<u8>) {
    let Ok(crate::wire::frame::Request::Job { task, items }) =
        crate::wire::frame::parse_request(frame)
    else {
        panic!("not a job frame")
    };
    let entry = crate::registry::lookup(task).expect("a registered task");
    let mut writer = crate::wire::frame::ResultsWriter::new(out);
    (entry.run)(items, &mut writer);
    writer.finish();
}

/// A result frame with its header parsed, as the collector hands it on.
#[derive(Debug)]
pub struct ParsedResults(crate::wire::frame::ResultFrame);

impl ParsedResults {
    /// Parses `frame`'s header once.
    pub fn new(frame: Vec<u8>) -> Self {
        ParsedResults(crate::wire::frame::ResultFrame::parse(frame))
    }
}

/// Decodes a result frame of `count` items onto the end of `out`, as `map` does.
pub fn decode_map_results<R: DeserializeOwned + 'static>(
    frame: &ParsedResults,
    count: u32,
    out: &mut Vec<R>,
) {
    crate::result::check_frame(&frame.0, "bench", count).expect("a good frame");
    crate::result::decode_into(&frame.0, "bench", out).expect("decodes");
}

/// Decodes every item of a job frame as `A`, as a worker does, and counts them.
pub fn decode_job<A: DeserializeOwned + 'static>(frame: &[u8]) -> usize {
    let Ok(crate::wire::frame::Request::Job { items, .. }) =
        crate::wire::frame::parse_request(frame)
    else {
        panic!("not a job frame")
    };
    let mut count = 0;
    for item in items {
        let value: A = crate::wire::codec::decode(item.expect("whole")).expect("decodes");
        std::hint::black_box(value);
        count += 1;
    }
    count
}

/// Encodes one value as the pool does (MessagePack, byte buffers as `bin`).
pub fn encode_value<T: Serialize + 'static>(buf: &mut Vec<u8>, value: &T) {
    crate::wire::codec::encode(buf, value).expect("encodes");
}

/// Runs every decoder of the wire format over `bytes`, as the fuzz target does: each must
/// return a value or an error, never panic, hang or read out of bounds.
pub fn decode_any_frame(bytes: &[u8]) {
    if let Ok(crate::wire::frame::Request::Job { items, .. }) =
        crate::wire::frame::parse_request(bytes)
    {
        for item in items.flatten() {
            let _ = crate::wire::codec::decode::<u64>(item);
            let _ = crate::wire::codec::decode_fixed::<u64>(item);
            let _ = crate::wire::codec::decode_fixed::<f32>(item);
            let _ = crate::wire::codec::decode::<Vec<u8>>(item);
            let _ = crate::wire::codec::decode::<(String, Vec<i64>)>(item);
        }
    }
    if let Ok(results) = crate::wire::frame::parse_results(bytes) {
        if let Some((width, values)) = results.fixed_values() {
            for value in values.chunks_exact(width.into()) {
                let _ = crate::wire::codec::decode_fixed::<i64>(value);
            }
        }
        for outcome in results.flatten() {
            let _ = outcome.to_error("fuzz");
        }
    }
    let _ = crate::wire::frame::job_item_count(bytes);
    let parsed = crate::wire::frame::ResultFrame::parse(bytes.to_vec());
    let _ = crate::result::check_frame(&parsed, "fuzz", 3);
}

/// Decodes one value as the pool does.
pub fn decode_value<T: DeserializeOwned + 'static>(bytes: &[u8]) -> T {
    crate::wire::codec::decode(bytes).expect("decodes")
}
