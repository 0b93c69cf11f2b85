//! Splitting a job whose worker died part-way, and putting its answer back together: a job
//! frame for some of its items, a result frame's outcomes one record each, an item-level error
//! as a record, and the records merged into one frame in item order. Used only on that failure
//! path (see `driver::split`), never on the way of a job that succeeds.

use super::*;
use crate::{Error, ExitCause};

/// A job frame with only the items at `keep` (ascending positions), in the same form. `None` if
/// the frame is not a job frame or a position is out of range.
pub(crate) fn job_subset(frame: &[u8], keep: &[u32]) -> Option<Vec<u8>> {
    let (task, items) = match parse_request(frame).ok()? {
        Request::Job { task, items } => (task, items),
        Request::Shutdown => return None,
    };
    let width = items.width;
    let all: Vec<&[u8]> = items.collect::<Result<_, _>>().ok()?;
    let mut out = Vec::with_capacity(frame.len());
    out.push(if width.is_some() {
        KIND_JOB_FIXED
    } else {
        KIND_JOB
    });
    out.extend_from_slice(&(task.len() as u16).to_le_bytes());
    out.extend_from_slice(task.as_bytes());
    out.extend_from_slice(&(keep.len() as u32).to_le_bytes());
    if let Some(width) = width {
        out.push(width);
    }
    for &i in keep {
        let item = all.get(i as usize)?;
        if width.is_none() {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(item);
    }
    Some(out)
}

/// Each outcome of a result frame as a general-form record (`status len bytes`), in item order.
pub(crate) fn records(frame: &ResultFrame) -> Option<Vec<Vec<u8>>> {
    let results = frame.results().ok()?;
    if let Some((width, values)) = results.fixed_values() {
        return Some(
            values
                .chunks_exact(width.into())
                .map(|v| record(ITEM_OK, v))
                .collect(),
        );
    }
    let mut c = results.c;
    let mut out = Vec::with_capacity(results.remaining as usize);
    for _ in 0..results.remaining {
        let status = c.u8("record").ok()?;
        let len = c.u32("record").ok()? as usize;
        out.push(record(status, c.take(len, "record").ok()?));
    }
    Some(out)
}

/// The status byte that opens the record of a panicked item.
pub(crate) const ITEM_PANIC_STATUS: u8 = ITEM_PANIC;

/// The record of a value (its MessagePack bytes).
pub(crate) fn ok_record(bytes: &[u8]) -> Vec<u8> {
    record(ITEM_OK, bytes)
}

fn record(status: u8, bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(5 + bytes.len());
    r.push(status);
    r.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    r.extend_from_slice(bytes);
    r
}

/// The record of an error that belongs to one item (a crash or time limit under it, a panic,
/// its arguments or result); `None` for errors of a whole call (termination, cancel …).
pub(crate) fn error_record(err: &Error) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    let status = match err {
        Error::WorkerDied {
            pid,
            cause,
            attempts,
            ..
        } => {
            let (kind, value) = match *cause {
                ExitCause::Signal(s) => (0u8, s),
                ExitCause::Exited(c) => (1, c),
                ExitCause::Unknown => (2, 0),
            };
            b.extend_from_slice(&pid.to_le_bytes());
            b.push(kind);
            b.extend_from_slice(&value.to_le_bytes());
            b.extend_from_slice(&attempts.to_le_bytes());
            ITEM_WORKER_DIED
        }
        Error::Timeout {
            limit,
            pid,
            attempts,
            ..
        } => {
            let ns = limit.as_nanos().min(u64::MAX as u128) as u64;
            b.extend_from_slice(&ns.to_le_bytes());
            b.extend_from_slice(&pid.to_le_bytes());
            b.extend_from_slice(&attempts.to_le_bytes());
            ITEM_TIMEOUT
        }
        Error::Panicked {
            message, location, ..
        } => {
            b.extend_from_slice(&(message.len() as u32).to_le_bytes());
            b.extend_from_slice(message.as_bytes());
            b.extend_from_slice(location.as_deref().unwrap_or("").as_bytes());
            ITEM_PANIC
        }
        Error::ArgsDecode { message, .. } => {
            b.extend_from_slice(message.as_bytes());
            ITEM_ARGS_DECODE
        }
        Error::ResultEncode { message, .. } => {
            b.extend_from_slice(message.as_bytes());
            ITEM_RESULT_ENCODE
        }
        _ => return None,
    };
    Some(record(status, &b))
}

/// One result frame of the outcomes of `frames`, in order: a job's partial frames and its last
/// one. Fixed-width frames of one width join into a fixed-width frame (a copy of their values);
/// anything else into the general form. A frame that does not parse is returned as it is.
pub(crate) fn join(mut frames: Vec<ResultFrame>) -> ResultFrame {
    if frames.len() == 1 {
        return frames.pop().expect("one frame");
    }
    if let Some(bad) = frames.iter().position(|f| f.results().is_err()) {
        return frames.swap_remove(bad);
    }
    let parts: Vec<Results<'_>> = frames.iter().filter_map(|f| f.results().ok()).collect();
    let count: u32 = parts.iter().map(|r| r.remaining).sum();
    let errors: u32 = parts.iter().map(|r| r.errors()).sum();
    let fixed: Option<Vec<(u8, &[u8])>> = parts.iter().map(Results::fixed_values).collect();
    let mut out = Vec::with_capacity(frames.iter().map(|f| f.len_hint()).sum::<usize>() + 16);
    out.push(KIND_RESULTS);
    match fixed.filter(|f| f.windows(2).all(|w| w[0].0 == w[1].0)) {
        Some(values) if !values.is_empty() => {
            out.push(RESULTS_FIXED);
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&errors.to_le_bytes());
            out.push(values[0].0);
            for (_, v) in values {
                out.extend_from_slice(v);
            }
        }
        _ => {
            out.push(RESULTS_OK);
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&errors.to_le_bytes());
            for r in &parts {
                match r.fixed_values() {
                    Some((width, values)) => {
                        for v in values.chunks_exact(width.into()) {
                            out.push(ITEM_OK);
                            out.extend_from_slice(&u32::from(width).to_le_bytes());
                            out.extend_from_slice(v);
                        }
                    }
                    None => out.extend_from_slice(r.c.rest),
                }
            }
        }
    }
    drop(parts);
    ResultFrame::parse(out)
}

/// One general-form result frame of `records`, in order.
pub(crate) fn merge(records: &[Vec<u8>]) -> ResultFrame {
    let errors = records
        .iter()
        .filter(|r| r.first() != Some(&ITEM_OK))
        .count() as u32;
    let mut out = Vec::with_capacity(10 + records.iter().map(Vec::len).sum::<usize>());
    out.push(KIND_RESULTS);
    out.push(RESULTS_OK);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&errors.to_le_bytes());
    for r in records {
        out.extend_from_slice(r);
    }
    ResultFrame::parse(out)
}

/// Reads the payload of an `ITEM_WORKER_DIED` record.
pub(super) fn worker_died(bytes: &[u8]) -> Result<(i32, ExitCause, u32), FrameError> {
    let mut c = Cursor { rest: bytes };
    let what = "worker died: truncated";
    let pid = i32::from_le_bytes(c.take(4, what)?.try_into().map_err(|_| FrameError(what))?);
    let kind = c.u8(what)?;
    let value = i32::from_le_bytes(c.take(4, what)?.try_into().map_err(|_| FrameError(what))?);
    let attempts = c.u32(what)?;
    let cause = match kind {
        0 => ExitCause::Signal(value),
        1 => ExitCause::Exited(value),
        _ => ExitCause::Unknown,
    };
    Ok((pid, cause, attempts))
}

/// Reads the payload of an `ITEM_TIMEOUT` record.
pub(super) fn timeout(bytes: &[u8]) -> Result<(std::time::Duration, i32, u32), FrameError> {
    let mut c = Cursor { rest: bytes };
    let what = "timeout: truncated";
    let ns = u64::from_le_bytes(c.take(8, what)?.try_into().map_err(|_| FrameError(what))?);
    let pid = i32::from_le_bytes(c.take(4, what)?.try_into().map_err(|_| FrameError(what))?);
    let attempts = c.u32(what)?;
    Ok((std::time::Duration::from_nanos(ns), pid, attempts))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::codec::Small;

    #[test]
    fn a_subset_keeps_the_form_and_the_chosen_items() {
        let mut b = JobBuilder::for_one("t", &0u64);
        for x in [10u64, 20, 30, 40] {
            b.push_owned(x).unwrap();
        }
        let (frame, _) = b.finish_spliced();
        let sub = job_subset(&frame, &[0, 2, 3]).unwrap();
        let Ok(Request::Job { task, items }) = parse_request(&sub) else {
            panic!("not a job")
        };
        assert_eq!(task, "t");
        let got: Vec<u64> = items
            .map(|i| crate::wire::codec::decode(i.unwrap()).unwrap())
            .collect();
        assert_eq!(got, [10, 30, 40]);
        assert!(job_subset(&frame, &[9]).is_none());
    }

    #[test]
    fn partial_frames_join_in_order_in_either_form() {
        let frame = |values: &[u64], fixed: bool| {
            let mut buf = Vec::new();
            let mut w = ResultsWriter::new(&mut buf);
            if fixed {
                w.set_fixed(9);
                let mut it = values.iter();
                w.ok_small_run(values.len(), || it.next().and_then(Small::fixed));
            } else {
                for v in values {
                    w.ok(v);
                }
            }
            w.finish();
            ResultFrame::parse(buf)
        };
        let decode = |f: &ResultFrame| -> Vec<u64> {
            f.results()
                .unwrap()
                .map(|o| match o.unwrap() {
                    Outcome::Ok(b) => crate::wire::codec::decode(b).unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let fixed = join(vec![frame(&[1, 2], true), frame(&[3], true)]);
        assert!(fixed.results().unwrap().fixed_values().is_some());
        assert_eq!(decode(&fixed), [1, 2, 3]);
        let mixed = join(vec![frame(&[1, 2], true), frame(&[3, 4], false)]);
        assert_eq!(decode(&mixed), [1, 2, 3, 4]);
        assert_eq!(mixed.failed(4), 0);
    }

    #[test]
    fn records_and_errors_merge_into_one_frame_in_order() {
        let mut buf = Vec::new();
        let mut w = ResultsWriter::new(&mut buf);
        w.ok(&1u64);
        w.ok(&3u64);
        w.finish();
        let frame = ResultFrame::parse(buf);
        let mut recs = records(&frame).unwrap();
        let died = Error::WorkerDied {
            task: "t".into(),
            pid: 42,
            cause: ExitCause::Signal(6),
            attempts: 3,
        };
        recs.insert(1, error_record(&died).unwrap());
        let merged = merge(&recs);
        assert_eq!(merged.failed(3), 1);
        let outcomes: Vec<_> = merged.results().unwrap().map(|o| o.unwrap()).collect();
        assert_eq!(outcomes.len(), 3);
        assert!(matches!(
            outcomes[1].to_error("t"),
            Some(Error::WorkerDied {
                pid: 42,
                cause: ExitCause::Signal(6),
                attempts: 3,
                ..
            })
        ));
        assert!(outcomes[0].to_error("t").is_none());
        let limit = Error::Timeout {
            task: "t".into(),
            limit: std::time::Duration::from_millis(5),
            pid: 1,
            attempts: 1,
        };
        let merged = merge(&[error_record(&limit).unwrap()]);
        let o = merged.results().unwrap().next().unwrap().unwrap();
        assert_eq!(
            o.to_error("t").map(|e| e.to_string()),
            Some(limit.to_string())
        );
        assert!(error_record(&Error::Terminated).is_none());
    }
}
