//! Reading result frames into values: checking a frame against the items it must answer, and
//! decoding its values (in tight loops for scalars).

use serde::de::DeserializeOwned;

use super::EncodedOutcomes;
use crate::wire::frame::{self, Outcome, ResultFrame};
use crate::Error;

/// Checks a result frame's structure and item count, and returns the first error it carries.
pub(crate) fn check_frame(frame: &ResultFrame, task: &str, expected: u32) -> Result<(), Error> {
    let results = frame.results().map_err(|e| frame_error(e, task))?;
    if results.remaining() != expected {
        return Err(Error::Protocol(format!(
            "expected {expected} results, the worker sent {}",
            results.remaining()
        )));
    }
    if results.errors() == 0 {
        // Items are checked one by one as they are decoded; a frame that lies about its
        // errors only makes the error surface there instead of here.
        return Ok(());
    }
    for outcome in results {
        if let Some(err) = outcome?.to_error(task) {
            return Err(err);
        }
    }
    Ok(())
}

/// Checks a result frame's structure and item count only (a result that keeps each item's own
/// outcome).
pub(crate) fn check_count(frame: &ResultFrame, task: &str, expected: u32) -> Result<(), Error> {
    let results = frame.results().map_err(|e| frame_error(e, task))?;
    if results.remaining() != expected {
        return Err(Error::Protocol(format!(
            "expected {expected} results, the worker sent {}",
            results.remaining()
        )));
    }
    Ok(())
}

/// The error for a result frame whose header does not parse (`None`: the task is unknown).
pub(crate) fn frame_error(err: Option<frame::FrameError>, task: &str) -> Error {
    match err {
        None => Error::UnknownTask {
            name: task.to_owned(),
        },
        Some(err) => err.into(),
    }
}

/// Decodes one MessagePack value of the task's return type.
#[inline]
pub(crate) fn decode_value<R: DeserializeOwned + 'static>(
    bytes: &[u8],
    task: &str,
) -> Result<R, Error> {
    crate::wire::codec::decode(bytes).map_err(|message| Error::ResultDecode {
        task: task.to_owned(),
        message,
    })
}

/// Every item of every part, in order, through `item` (the parts are checked already).
fn collect_items<R>(
    parts: &[ResultFrame],
    task: &str,
    mut item: impl FnMut(&[u8]) -> Result<R, Error>,
) -> Result<Vec<R>, Error> {
    let mut out = Vec::new();
    for part in parts {
        collect_into(part, task, &mut out, &mut item)?;
    }
    Ok(out)
}

/// Appends every item of one checked result frame to `out`, through `item`.
#[inline]
fn collect_into<R>(
    part: &ResultFrame,
    task: &str,
    out: &mut Vec<R>,
    mut item: impl FnMut(&[u8]) -> Result<R, Error>,
) -> Result<(), Error> {
    let results = part.results().map_err(|e| frame_error(e, task))?;
    out.reserve(results.remaining() as usize);
    for outcome in results {
        match outcome? {
            Outcome::Ok(bytes) => out.push(item(bytes)?),
            other => return Err(other.to_error(task).expect("not Ok")),
        }
    }
    Ok(())
}

/// Decodes every item of every part, in order (the parts are checked already).
pub(crate) fn decode_all<R: DeserializeOwned + 'static>(
    parts: &[ResultFrame],
    task: &str,
) -> Result<Vec<R>, Error> {
    collect_items(parts, task, |bytes| decode_value(bytes, task))
}

/// Decodes every item of one checked result frame onto the end of `out`.
pub(crate) fn decode_into<R: DeserializeOwned + 'static>(
    part: &ResultFrame,
    task: &str,
    out: &mut Vec<R>,
) -> Result<(), Error> {
    if crate::wire::codec::is_scalar::<R>() {
        return decode_scalars_into(part, task, out);
    }
    collect_into(part, task, out, |bytes| decode_value(bytes, task))
}

/// [`decode_into`] for scalar results (a `map` of `u64`, say): values are written straight
/// into the spare capacity through a local slice and index, and the length is set once; pushing
/// would reload the vector's length and capacity after every value.
fn decode_scalars_into<R: DeserializeOwned + 'static>(
    part: &ResultFrame,
    task: &str,
    out: &mut Vec<R>,
) -> Result<(), Error> {
    let results = part.results().map_err(|e| frame_error(e, task))?;
    let count = results.remaining() as usize;
    out.reserve(count);
    let len = out.len();
    let mut done = 0;
    let result = fill_scalars(
        results,
        &mut out.spare_capacity_mut()[..count],
        &mut done,
        task,
    );
    // SAFETY: `fill_scalars` initialised the first `done` slots of the spare capacity.
    unsafe { out.set_len(len + done) };
    result
}

/// The loop of [`decode_scalars_into`]; `done` counts the slots written, also on an error.
#[inline(always)]
fn fill_scalars<R: DeserializeOwned + 'static>(
    results: frame::Results<'_>,
    spare: &mut [std::mem::MaybeUninit<R>],
    done: &mut usize,
    task: &str,
) -> Result<(), Error> {
    let mut i = 0;
    if let Some((width, values)) = results.fixed_values() {
        if Some(width) == crate::wire::codec::fixed_width::<R>() {
            // A fixed-width frame of values of this very type: the tightest loop.
            for (bytes, slot) in values.chunks_exact(width.into()).zip(spare.iter_mut()) {
                let value = match crate::wire::codec::decode_fixed::<R>(bytes) {
                    Some(value) => value,
                    None => match decode_value(bytes, task) {
                        Ok(value) => value,
                        Err(err) => {
                            *done = i;
                            return Err(err);
                        }
                    },
                };
                slot.write(value);
                i += 1;
            }
            *done = i;
            return Ok(());
        }
    }
    let result = (|| {
        for outcome in results {
            let value = match outcome? {
                Outcome::Ok(bytes) => match crate::wire::codec::decode_scalar::<R>(bytes) {
                    Some(value) => value,
                    None => decode_value(bytes, task)?,
                },
                other => return Err(other.to_error(task).expect("not Ok")),
            };
            let Some(slot) = spare.get_mut(i) else {
                return Err(Error::Protocol(
                    "more results than the frame counts".to_owned(),
                ));
            };
            slot.write(value);
            i += 1;
        }
        Ok(())
    })();
    *done = i;
    result
}

/// Every item of every part as its raw MessagePack bytes, in order (the parts are checked).
pub(crate) fn encoded_all(parts: &[ResultFrame], task: &str) -> Result<Vec<Vec<u8>>, Error> {
    collect_items(parts, task, |bytes| Ok(bytes.to_vec()))
}

/// Every item's own outcome, as MessagePack bytes or its error (for a per-item result), in
/// one buffer.
pub(crate) fn encoded_each(parts: &[ResultFrame], task: &str) -> Result<EncodedOutcomes, Error> {
    let mut out = EncodedOutcomes::default();
    for part in parts {
        let results = part.results().map_err(|e| frame_error(e, task))?;
        // The frame's size bounds its values' size.
        out.reserve(results.remaining() as usize, part.len_hint());
        for outcome in results {
            match outcome? {
                Outcome::Ok(bytes) => out.push_ok(bytes)?,
                other => out.push_err(other.to_error(task).expect("not Ok")),
            }
        }
    }
    Ok(out)
}

/// Decodes the single item of a single part.
pub(crate) fn decode_one<R: DeserializeOwned + 'static>(
    parts: &[ResultFrame],
    task: &str,
) -> Result<R, Error> {
    // Without collecting into a vector first: one allocation fewer per `apply`.
    let one = || Error::Protocol("expected exactly one result".to_owned());
    let [part] = parts else {
        return Err(one());
    };
    let mut results = part.results().map_err(|e| frame_error(e, task))?;
    if results.remaining() != 1 {
        return Err(one());
    }
    match results.next().ok_or_else(one)?? {
        Outcome::Ok(bytes) => decode_value(bytes, task),
        other => Err(other.to_error(task).expect("not Ok")),
    }
}
