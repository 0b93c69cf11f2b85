//! Dead letters: jobs that will not run again by themselves, kept with why.
//!
//! A job goes to its queue's dead-letter stream, `pool:{QUEUE}:dead`, when a worker
//!
//! - could not parse its entry (fields missing or malformed): kind `malformed`;
//! - gave up on it after [`Worker::max_deliveries`](crate::Worker::max_deliveries) deliveries
//!   whose workers went silent: kind `gave_up`;
//! - answered it with a failure (after the task's retries, if it has any): kind `failed`.
//!   A cancelled job is not a dead letter.
//!
//! The caller is answered as before (when the entry says who it is); the dead letter is for
//! operators (`Admin::dead_letters`, `requeue_dead`, `purge_dead`). The stream keeps the newest
//! [`MAX_DEAD`] entries (`XADD … MAXLEN ~`).
//!
//! An entry holds the job's own fields as they came (`task`, `args`, `reply`, `id`, …) and the
//! dead letter's, prefixed `dead.`: `kind`, `reason`, `entry` (the job's entry id in the task
//! stream), `attempts`, `time_ms` and `worker`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::client::{field_bytes, field_string, field_u64};

/// How many dead letters a queue keeps, about (older ones are trimmed).
pub const MAX_DEAD: usize = 10_000;

/// Why a job is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadKind {
    /// Its entry could not be parsed.
    Malformed,
    /// It was delivered more than `max_deliveries` times and each worker went silent.
    GaveUp,
    /// It was answered with a failure.
    Failed,
}

impl DeadKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadKind::Malformed => "malformed",
            DeadKind::GaveUp => "gave_up",
            DeadKind::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<DeadKind> {
        Some(match s {
            "malformed" => DeadKind::Malformed,
            "gave_up" => DeadKind::GaveUp,
            "failed" => DeadKind::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dead letter, as [`Admin::dead_letters`](crate::Admin::dead_letters) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what `requeue_dead` takes).
    pub id: String,
    /// Why it is here.
    pub kind: DeadKind,
    /// The reason, in words (the error the caller got, or what was malformed).
    pub reason: String,
    /// The task's name (empty if the entry had none).
    pub task: String,
    /// How many times it was delivered or attempted, as far as the worker knew.
    pub attempts: u64,
    /// When it became a dead letter.
    pub time: SystemTime,
    /// The worker that wrote it.
    pub worker: String,
    /// The job's entry id in the task stream.
    pub entry: String,
    /// The client that submitted it and its job id there, if the entry said.
    pub client: Option<(String, u64)>,
    /// The job's own fields as they came, for a closer look (`args` is MessagePack).
    pub fields: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    pub(crate) fn parse(id: String, map: &HashMap<String, Value>) -> DeadLetter {
        let mut fields: Vec<(String, Vec<u8>)> = map
            .keys()
            .filter(|k| !k.starts_with("dead."))
            .filter_map(|k| Some((k.clone(), field_bytes(map, k)?)))
            .collect();
        fields.sort();
        DeadLetter {
            kind: field_string(map, "dead.kind")
                .and_then(|k| DeadKind::parse(&k))
                .unwrap_or(DeadKind::Malformed),
            reason: field_string(map, "dead.reason").unwrap_or_default(),
            task: field_string(map, "task").unwrap_or_default(),
            attempts: field_u64(map, "dead.attempts").unwrap_or(0),
            time: UNIX_EPOCH + Duration::from_millis(field_u64(map, "dead.time_ms").unwrap_or(0)),
            worker: field_string(map, "dead.worker").unwrap_or_default(),
            entry: field_string(map, "dead.entry").unwrap_or_default(),
            client: field_string(map, "reply").zip(field_u64(map, "id")),
            fields,
            id,
        }
    }
}

/// A dead letter on its way to Redis (written by a worker, in the transaction that answers the
/// job or removes its entry).
#[derive(Debug, Clone)]
pub(crate) struct Dead {
    pub(crate) kind: DeadKind,
    pub(crate) reason: String,
    pub(crate) attempts: u64,
}

impl Dead {
    /// Adds the `XADD` of this dead letter for `entry` (with the job's `fields`) to `pipe`.
    pub(crate) fn add_to(
        &self,
        pipe: &mut redis::Pipeline,
        dead_key: &str,
        entry: &str,
        fields: &[(String, Vec<u8>)],
        worker: &str,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let cmd = pipe
            .cmd("XADD")
            .arg(dead_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_DEAD)
            .arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v.as_slice());
        }
        cmd.arg("dead.kind")
            .arg(self.kind.as_str())
            .arg("dead.reason")
            .arg(&self.reason)
            .arg("dead.entry")
            .arg(entry)
            .arg("dead.attempts")
            .arg(self.attempts)
            .arg("dead.time_ms")
            .arg(now)
            .arg("dead.worker")
            .arg(worker)
            .ignore();
    }
}

/// The fields of a stream entry as bytes (those that are strings).
pub(crate) fn entry_fields(map: &HashMap<String, Value>) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = map
        .keys()
        .filter_map(|k| Some((k.clone(), field_bytes(map, k)?)))
        .collect();
    fields.sort();
    fields
}
