//! One crash, one failed item: a job of several items whose worker died part-way is split, so
//! that only the item it was running fails (or runs again, alone, under the retry policy) and
//! the other items run again on other workers. Their answers are put back together, in item
//! order, into the one frame the job's own sink is waiting for.
//!
//! The worker publishes the index of the item it takes (`Header::item`, one relaxed store per
//! item), so the parent knows which item was running when the worker died. Items of the job that
//! finished before it are run again with the rest: their results died with the worker.

use std::sync::{Arc, Mutex, PoisonError};

use crate::job::{Job, Sink};
use crate::wire::frame::split::{error_record, job_subset, merge, records};
use crate::wire::frame::ResultFrame;
use crate::Error;

/// The pieces of a split job coming together: part `k` of this sink answers the original
/// positions `pieces[k]`.
pub(super) struct Assemble {
    sink: Arc<dyn Sink>,
    part: usize,
    state: Mutex<State>,
}

struct State {
    /// Each original item's outcome record, once known.
    records: Vec<Option<Vec<u8>>>,
    pieces: Vec<Vec<u32>>,
    remaining: usize,
    /// The job's sink has its answer (an error of the whole job ended it early).
    done: bool,
}

impl Assemble {
    fn answer(&self, state: &mut State, outcome: Result<ResultFrame, Error>) {
        if !state.done {
            state.done = true;
            self.sink.deliver(self.part, outcome);
        }
    }
}

impl Sink for Assemble {
    fn deliver(&self, piece: usize, outcome: Result<ResultFrame, Error>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.done {
            return;
        }
        let positions = state.pieces.get(piece).cloned().unwrap_or_default();
        let recs = match &outcome {
            Ok(frame) => records(frame).filter(|r| r.len() == positions.len()),
            // An error of one item (its worker died, it ran out of time …) is that item's
            // outcome; an error of the whole call (terminated, cancelled …) ends the job.
            Err(err) => error_record(err).map(|r| vec![r; positions.len()]),
        };
        let Some(recs) = recs else {
            // Not readable item by item (an unknown task, a broken frame): the job's answer
            // as it is, which its sink checks.
            return self.answer(&mut state, outcome);
        };
        for (&pos, rec) in positions.iter().zip(recs) {
            state.records[pos as usize] = Some(rec);
        }
        state.remaining -= 1;
        if state.remaining == 0 {
            let all: Option<Vec<Vec<u8>>> = state.records.drain(..).collect();
            match all {
                Some(all) => self.answer(&mut state, Ok(merge(&all))),
                None => self.answer(
                    &mut state,
                    Err(Error::Protocol("a split job lost an item".into())),
                ),
            }
        }
    }

    fn is_cancelled(&self, _piece: usize) -> bool {
        self.sink.is_cancelled(self.part)
    }
}

/// Splits `job`, whose answer `frame` has panicked items and whose task retries panics: the
/// panicked items become one job, to run again; the other items keep their answers. `Err(job)`
/// when there is nothing to split (every item panicked, or the frame is not readable).
pub(super) fn retry_panicked(job: Job, frame: &ResultFrame) -> Result<Job, Job> {
    let Some(recs) = records(frame).filter(|r| r.len() == job.items as usize) else {
        return Err(job);
    };
    let panicked: Vec<u32> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.first() == Some(&crate::wire::frame::split::ITEM_PANIC_STATUS))
        .map(|(i, _)| i as u32)
        .collect();
    if panicked.is_empty() || panicked.len() == recs.len() || !job.spliced.is_empty() {
        return Err(job);
    }
    let Some(sub_frame) = job_subset(&job.frame, &panicked) else {
        return Err(job);
    };
    let items = job.items;
    let per_item = job.limit.map(|l| l / items);
    let (task, attempts) = (job.task.clone(), job.attempts);
    let Some((sink, part)) = job.into_sink() else {
        unreachable!("a job is answered once: it still has its sink here");
    };
    let mut records: Vec<Option<Vec<u8>>> = recs.into_iter().map(Some).collect();
    for &i in &panicked {
        records[i as usize] = None;
    }
    let n = panicked.len() as u32;
    let assemble = Arc::new(Assemble {
        sink,
        part,
        state: Mutex::new(State {
            records,
            remaining: 1,
            pieces: vec![panicked],
            done: false,
        }),
    });
    let mut sub = Job::new(sub_frame, task, assemble, 0);
    sub.limit = per_item.map(|l| l * n);
    sub.attempts = attempts;
    sub.keep_frame = true;
    Ok(sub)
}

/// What a split gives back: the other items as a job to run now, and the running item as a
/// job of its own when it is to run again (else its error is in the answer already).
pub(super) struct Split {
    pub(super) rest: Option<Job>,
    pub(super) running: Option<Job>,
}

/// Splits `job`, whose worker died while running item `running` with `err`; `again` says
/// whether that item runs again. Items the worker reported in partial frames keep their
/// outcomes. `Err(job)` when the job cannot be split (one item, or its frame is gone), for the
/// caller to fail or retry whole.
pub(super) fn split(
    mut job: Job,
    partials: Vec<ResultFrame>,
    running: u32,
    err: &Error,
    again: bool,
) -> Result<Split, Job> {
    if job.items < 2 || running >= job.items || job.frame.is_empty() {
        return Err(job);
    }
    // What the worker reported before it died: the outcomes of the first `known` items.
    let known: Vec<Vec<u8>> = partials
        .iter()
        .map(records)
        .collect::<Option<Vec<_>>>()
        .map(|r| r.into_iter().flatten().collect())
        .filter(|r: &Vec<Vec<u8>>| (r.len() as u32) <= running)
        .unwrap_or_default();
    let frame: Vec<u8> = if job.spliced.is_empty() {
        std::mem::take(&mut job.frame)
    } else {
        job.wire_pieces().flat_map(|p| p.iter().copied()).collect()
    };
    let others: Vec<u32> = (known.len() as u32..job.items)
        .filter(|&i| i != running)
        .collect();
    let rest_frame = if others.is_empty() {
        None
    } else {
        match job_subset(&frame, &others) {
            Some(f) => Some(f),
            None => {
                job.frame = frame;
                return Err(job);
            }
        }
    };
    let (Some(running_frame), Some(error)) = (job_subset(&frame, &[running]), error_record(err))
    else {
        job.frame = frame;
        return Err(job);
    };
    let items = job.items;
    let per_item = job.limit.map(|l| l / items);
    let (task, attempts, internal) = (job.task.clone(), job.attempts, job.internal);
    let Some((sink, part)) = job.into_sink() else {
        return Ok(Split {
            rest: None,
            running: None,
        });
    };
    let mut records: Vec<Option<Vec<u8>>> = vec![None; items as usize];
    for (i, r) in known.into_iter().enumerate() {
        records[i] = Some(r);
    }
    let mut pieces = Vec::new();
    let rest_piece = rest_frame.map(|f| {
        pieces.push(others.clone());
        (f, pieces.len() - 1, others.len() as u32)
    });
    let running_piece = if again {
        pieces.push(vec![running]);
        Some((running_frame, pieces.len() - 1))
    } else {
        records[running as usize] = Some(error);
        None
    };
    let assemble = Arc::new(Assemble {
        sink,
        part,
        state: Mutex::new(State {
            records,
            remaining: pieces.len(),
            pieces,
            done: false,
        }),
    });
    if rest_piece.is_none() && running_piece.is_none() {
        // Every other item was reported, and the running one failed: answered now.
        let mut state = assemble
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let all: Option<Vec<Vec<u8>>> = state.records.drain(..).collect();
        let outcome = all
            .map(|all| merge(&all))
            .ok_or_else(|| Error::Protocol("a split job lost an item".into()));
        assemble.answer(&mut state, outcome);
    }
    let piece = |frame: Vec<u8>, index: usize, n: u32| {
        let mut job = Job::new(frame, task.clone(), assemble.clone(), index);
        job.limit = per_item.map(|l| l * n);
        job.attempts = attempts;
        job.internal = internal;
        job
    };
    Ok(Split {
        rest: rest_piece.map(|(f, i, n)| piece(f, i, n)),
        running: running_piece.map(|(f, i)| piece(f, i, 1)),
    })
}
