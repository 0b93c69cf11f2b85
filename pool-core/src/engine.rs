//! The seam between the calls every engine serves ([`Executor`](crate::Executor)) and an engine
//! that runs jobs somewhere: this crate's [`Pool`](crate::Pool) (its workers), or `pool-redis`
//! (workers on other machines, fed through Redis Streams).
//!
//! An engine takes a job — a task's name and its items, as one job frame — and reports the
//! job's outcome exactly once to a [`JobSink`]: a result frame, or the error that ended the
//! job. The result handles, [`AsyncResult`](crate::AsyncResult) and [`Imap`](crate::Imap), are
//! built on that, once, for every engine. Public only so that `pool-redis` can implement it;
//! not part of the API.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::job::{Sink, TaskName};
use crate::owner::Owner;
use crate::result::{decode_all, decode_one, Counts, ResultCell};
use crate::wire::frame::{self, Request, ResultFrame, ResultsWriter};
use crate::wire::splice::Spliced;
use crate::{AsyncResult, Error};

/// An engine that runs jobs.
#[doc(hidden)]
pub trait Engine: Sync {
    /// Queues `job`; its outcome goes to `sink`, exactly once.
    fn submit_job(&self, job: JobFrame, sink: JobSink);

    /// How many `imap` chunks to keep in flight to keep the engine's workers busy.
    fn lookahead(&self) -> usize;

    /// The process the engine's handle belongs to.
    fn owner(&self) -> Owner;

    /// Whether the engine still takes work (not closed).
    fn accepts_work(&self) -> bool;
}

/// One job: a task's name and its items' arguments, as a job frame (with any byte buffers
/// spliced into it).
#[doc(hidden)]
#[derive(Debug)]
pub struct JobFrame {
    pub(crate) frame: Vec<u8>,
    pub(crate) spliced: Spliced,
    pub(crate) task: TaskName,
}

impl JobFrame {
    /// The task's registered name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The items' arguments, each as the MessagePack that `wire::encode` writes.
    pub fn into_items(self) -> Result<Vec<Vec<u8>>, Error> {
        let flat = self.spliced.flatten(self.frame);
        match frame::parse_request(&flat)? {
            Request::Job { items, .. } => items
                .map(|item| item.map(<[u8]>::to_vec).map_err(Error::from))
                .collect(),
            Request::Shutdown => Err(Error::Protocol("not a job frame".into())),
        }
    }
}

/// Where one job's outcome goes: a part of a result handle.
#[doc(hidden)]
#[derive(Clone)]
pub struct JobSink {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) part: usize,
}

impl std::fmt::Debug for JobSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSink").field("part", &self.part).finish()
    }
}

impl JobSink {
    /// The same handle's part `part`.
    pub fn part(&self, part: usize) -> JobSink {
        JobSink {
            sink: Arc::clone(&self.sink),
            part,
        }
    }

    /// Delivers the job's outcome as a result frame (as a local worker writes it).
    pub(crate) fn deliver(self, outcome: Result<Vec<u8>, Error>) {
        self.sink
            .deliver(self.part, outcome.map(ResultFrame::parse));
    }

    /// Delivers the job's outcome: every item's result (each the MessagePack of its value), or
    /// the error that ended the whole job.
    pub fn deliver_items(self, outcome: Result<Vec<Vec<u8>>, Error>) {
        let outcome = outcome.and_then(|items| {
            let mut frame =
                Vec::with_capacity(16 + items.iter().map(|i| i.len() + 5).sum::<usize>());
            let mut writer = ResultsWriter::new(&mut frame);
            for item in &items {
                writer.ok_encoded(item)?;
            }
            writer.finish();
            Ok(frame)
        });
        self.deliver(outcome)
    }
}

impl JobSink {
    /// A check of whether the caller cancelled this job, for an engine to keep while the job is
    /// out (see `cancel`).
    pub fn cancel_check(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (sink, part) = (self.sink.clone(), self.part);
        move || sink.is_cancelled(part)
    }

    /// Delivers the job's outcome item by item: each item's result (the MessagePack of its
    /// value) or its own error (a panic, its worker dying under it …). An item error that
    /// belongs to a whole call (termination, cancel …) ends the job with it.
    pub fn deliver_each(self, outcome: Result<Vec<Result<Vec<u8>, Error>>, Error>) {
        use crate::wire::frame::split::{error_record, merge, ok_record};
        let frame = outcome.and_then(|items| {
            items
                .iter()
                .map(|item| match item {
                    Ok(bytes) => Ok(ok_record(bytes)),
                    Err(err) => error_record(err).ok_or_else(|| err.clone()),
                })
                .collect::<Result<Vec<_>, Error>>()
        });
        match frame {
            Ok(records) => self.sink.deliver(self.part, Ok(merge(&records))),
            Err(err) => self.sink.deliver(self.part, Err(err)),
        }
    }
}

impl<T: DeserializeOwned + 'static> AsyncResult<T> {
    /// A result of one item of `task`, pending until its sink's part 0 is delivered.
    #[doc(hidden)]
    pub fn pending_one(task: impl Into<TaskName>) -> (Self, JobSink) {
        let slot = ResultCell::new(task.into(), Counts::One(1), decode_one::<T>);
        let sink = JobSink {
            sink: slot.clone(),
            part: 0,
        };
        (AsyncResult::new(slot), sink)
    }
}

impl<T: DeserializeOwned + 'static> AsyncResult<Vec<T>> {
    /// A result of `counts[i]` items of `task` in each part `i`, pending until every part is
    /// delivered (or one fails).
    #[doc(hidden)]
    pub fn pending_many(task: impl Into<TaskName>, counts: Vec<u32>) -> (Self, JobSink) {
        let slot = ResultCell::new(task.into(), Counts::Many(counts), decode_all::<T>);
        let sink = JobSink {
            sink: slot.clone(),
            part: 0,
        };
        (AsyncResult::new(slot), sink)
    }
}
