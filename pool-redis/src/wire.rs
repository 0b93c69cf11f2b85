//! What travels through Redis: the keys of a queue, a task entry's fields, and a result entry's
//! fields.
//!
//! ```text
//! pool:{Q}:tasks            stream     one entry per job: task, args, reply, id
//!                                      consumer group "workers"
//! pool:{Q}:results:{CLIENT} stream     one entry per answered job: id, then ok or err
//!                                      (expires after the result TTL)
//! pool:{Q}:workers          sorted set worker name -> last heartbeat (unix ms)
//! pool:{Q}:worker:{NAME}    hash       host, pid, processes, heartbeat_ms (expires)
//! pool:{Q}:progress         hash       task entry id -> the outcomes of the items of a long
//!                                      job that are done (expires after the result TTL)
//! pool:{Q}:control          stream     cancels for workers: client, ids (job ids, or `*`)
//! pool:{Q}:dead             stream     dead letters: the job's fields and dead.* (see `dead`)
//! ```
//!
//! `args` is a MessagePack array of `bin`, one per item, each the item's arguments encoded by
//! [`pool_core::wire::encode`]; `ok` is the same for the results. `err` is a MessagePack
//! [`WireError`]. The queue name sits in braces, a Redis Cluster hash tag, so every key of one
//! queue lives in one slot.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::Error;

/// The consumer group every worker of a queue reads through.
pub(crate) const GROUP: &str = "workers";

/// The keys of one queue.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) queue: String,
    pub(crate) tasks: String,
    pub(crate) heartbeats: String,
    /// Cancels for workers: entries `client` and `ids` (comma-separated job ids).
    pub(crate) control: String,
    /// Dead letters: jobs that gave up, failed, or could not be parsed (see `dead`).
    pub(crate) dead: String,
    /// What the worker running a long job of several items has done so far, by task entry id:
    /// a job redelivered after its worker machine died runs only the rest.
    pub(crate) progress: String,
}

impl Keys {
    pub(crate) fn new(queue: &str) -> Result<Self, Error> {
        if queue.is_empty() || queue.contains(['{', '}']) || queue.chars().any(char::is_whitespace)
        {
            return Err(Error::Config(format!(
                "queue names must be non-empty, without spaces or braces: {queue:?}"
            )));
        }
        Ok(Keys {
            queue: queue.to_owned(),
            tasks: format!("pool:{{{queue}}}:tasks"),
            heartbeats: format!("pool:{{{queue}}}:workers"),
            control: format!("pool:{{{queue}}}:control"),
            progress: format!("pool:{{{queue}}}:progress"),
            dead: format!("pool:{{{queue}}}:dead"),
        })
    }

    /// Adds to `pipe` the control entry that tells workers to cancel the jobs `ids` of `client`
    /// (comma-separated job ids, or `*` for all of them). The stream keeps about 10,000.
    pub(crate) fn tell_cancel(&self, pipe: &mut redis::Pipeline, client: &str, ids: &str) {
        pipe.cmd("XADD")
            .arg(&self.control)
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("client")
            .arg(client)
            .arg("ids")
            .arg(ids)
            .ignore();
    }

    pub(crate) fn results(&self, client: &str) -> String {
        format!("pool:{{{}}}:results:{client}", self.queue)
    }

    pub(crate) fn worker(&self, name: &str) -> String {
        format!("pool:{{{}}}:worker:{name}", self.queue)
    }
}

/// `XREAD` (or `XREADGROUP`, when `options` name a group) of one stream from `id`, on any kind
/// of connection.
pub(crate) fn xread(
    conn: &mut dyn redis::ConnectionLike,
    options: &redis::streams::StreamReadOptions,
    key: &str,
    id: &str,
) -> redis::RedisResult<redis::streams::StreamReadReply> {
    let command = if options.read_only() {
        "XREAD"
    } else {
        "XREADGROUP"
    };
    let reply: redis::Value = redis::cmd(command)
        .arg(options)
        .arg("STREAMS")
        .arg(key)
        .arg(id)
        .query(conn)?;
    Ok(stream_reply(reply)?)
}

/// Parses an `XREAD`/`XREADGROUP` reply by taking its values apart. The redis crate's own
/// parser for it first copies the whole reply (job arguments and results included) to try a
/// second format with; on every read of every job that copy cost more than the parse.
fn stream_reply(
    reply: redis::Value,
) -> Result<redis::streams::StreamReadReply, redis::ParsingError> {
    use redis::streams::{StreamId, StreamKey, StreamReadReply};
    use redis::{from_redis_value, Value};
    fn wrong(what: &str) -> redis::ParsingError {
        redis::ParsingError::from(format!("a stream read reply with {what}"))
    }
    /// The two parts of a `[a, b]` pair.
    fn pair(v: Value) -> Result<(Value, Value), redis::ParsingError> {
        match v {
            Value::Array(two) if two.len() == 2 => {
                let mut two = two.into_iter();
                Ok((
                    two.next().unwrap_or(Value::Nil),
                    two.next().unwrap_or(Value::Nil),
                ))
            }
            _ => Err(wrong("a row that is not a pair")),
        }
    }
    let rows: Vec<(Value, Value)> = match reply {
        // The read timed out with nothing new.
        Value::Nil => Vec::new(),
        // RESP3 answers a map of stream to entries.
        Value::Map(rows) => rows,
        Value::Array(rows) => rows.into_iter().map(pair).collect::<Result<_, _>>()?,
        _ => return Err(wrong("an unexpected type")),
    };
    let mut keys = Vec::with_capacity(rows.len());
    for (key, entries) in rows {
        let key: String = from_redis_value(key)?;
        let entries = match entries {
            Value::Array(entries) => entries,
            Value::Nil => Vec::new(),
            _ => return Err(wrong("entries that are not a list")),
        };
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(parts) = entry else {
                return Err(wrong("an entry that is not a list"));
            };
            let mut parts = parts.into_iter();
            let id: String = from_redis_value(parts.next().unwrap_or(Value::Nil))?;
            let mut map = std::collections::HashMap::new();
            match parts.next().unwrap_or(Value::Nil) {
                Value::Array(fields) => {
                    map.reserve(fields.len() / 2);
                    let mut fields = fields.into_iter();
                    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                        map.insert(from_redis_value(name)?, value);
                    }
                }
                Value::Map(fields) => {
                    for (name, value) in fields {
                        map.insert(from_redis_value(name)?, value);
                    }
                }
                // An entry deleted while pending (a reread of a consumer's own history).
                Value::Nil => {}
                _ => return Err(wrong("fields that are not a list")),
            }
            ids.push(StreamId {
                id,
                map,
                ..StreamId::default()
            });
        }
        keys.push(StreamKey { key, ids });
    }
    Ok(StreamReadReply { keys })
}

/// Encodes a list of encoded items (arguments or results) as a MessagePack array of `bin`,
/// written straight from the slices into one buffer.
pub(crate) fn encode_items<'a, I>(items: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let mut out = Vec::with_capacity(8 + items.len() * 8);
    // Writing to a vector cannot fail; a length past u32::MAX is refused by Redis long before.
    let len = u32::try_from(items.len()).expect("fewer than 2^32 items");
    rmp::encode::write_array_len(&mut out, len).expect("writes to a vector");
    for item in items {
        let len = u32::try_from(item.len()).expect("an item under 4 GiB");
        rmp::encode::write_bin_len(&mut out, len).expect("writes to a vector");
        out.extend_from_slice(item);
    }
    out
}

/// Decodes what [`encode_items`] wrote.
pub(crate) fn decode_items(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    Ok(decode_slices(bytes)?
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect())
}

/// Decodes what [`encode_items`] wrote, each item borrowed from `bytes` (no copy).
pub(crate) fn decode_slices(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut rest = bytes;
    let n = rmp::decode::read_array_len(&mut rest).map_err(|e| e.to_string())? as usize;
    // Each item takes at least one byte: a length past what is left is a lie.
    let mut out = Vec::with_capacity(n.min(rest.len()));
    for i in 0..n {
        let len =
            rmp::decode::read_bin_len(&mut rest).map_err(|e| format!("item {i}: {e}"))? as usize;
        if len > rest.len() {
            return Err(format!(
                "item {i}: {len} bytes announced, {} left",
                rest.len()
            ));
        }
        let (item, after) = rest.split_at(len);
        out.push(item);
        rest = after;
    }
    Ok(out)
}

/// One item's outcome, for a job whose items did not all succeed (the `each` field).
#[derive(Debug, Serialize, Deserialize)]
enum ItemOutcome {
    Ok(ByteBuf),
    Err(WireError),
}

/// Encodes each item's outcome (a MessagePack list).
pub(crate) fn encode_each(items: &[Result<Vec<u8>, WireError>]) -> Vec<u8> {
    let list: Vec<ItemOutcome> = items
        .iter()
        .map(|i| match i {
            Ok(v) => ItemOutcome::Ok(ByteBuf::from(v.clone())),
            Err(e) => ItemOutcome::Err(e.clone()),
        })
        .collect();
    rmp_serde::to_vec(&list).expect("a list of outcomes always encodes")
}

/// Decodes what [`encode_each`] wrote.
pub(crate) fn decode_each(bytes: &[u8]) -> Result<Vec<Result<Vec<u8>, WireError>>, String> {
    let list: Vec<ItemOutcome> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .map(|i| match i {
            ItemOutcome::Ok(v) => Ok(v.into_vec()),
            ItemOutcome::Err(e) => Err(e),
        })
        .collect())
}

/// Encodes the items of a job that are done (`Some`) and not done (`None`), for the progress
/// hash.
pub(crate) fn encode_progress(items: &[Option<Result<Vec<u8>, WireError>>]) -> Vec<u8> {
    let list: Vec<Option<ItemOutcome>> = items
        .iter()
        .map(|i| {
            i.as_ref().map(|o| match o {
                Ok(v) => ItemOutcome::Ok(ByteBuf::from(v.clone())),
                Err(e) => ItemOutcome::Err(e.clone()),
            })
        })
        .collect();
    rmp_serde::to_vec(&list).expect("a list of outcomes always encodes")
}

/// Each item's outcome where it is known.
pub(crate) type Progress = Vec<Option<Result<Vec<u8>, WireError>>>;

/// Decodes what [`encode_progress`] wrote.
pub(crate) fn decode_progress(bytes: &[u8]) -> Result<Progress, String> {
    let list: Vec<Option<ItemOutcome>> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .map(|i| {
            i.map(|o| match o {
                ItemOutcome::Ok(v) => Ok(v.into_vec()),
                ItemOutcome::Err(e) => Err(e),
            })
        })
        .collect())
}

/// A task's failure as it travels back to the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WireError {
    Panicked {
        task: String,
        message: String,
        location: Option<String>,
    },
    WorkerDied {
        task: String,
        pid: i32,
        signal: Option<i32>,
        code: Option<i32>,
        /// Absent from workers older than retries: one attempt.
        #[serde(default = "one")]
        attempts: u32,
    },
    Timeout {
        task: String,
        limit_ms: u64,
        pid: i32,
        #[serde(default = "one")]
        attempts: u32,
    },
    UnknownTask {
        name: String,
    },
    ArgsDecode {
        task: String,
        message: String,
    },
    ResultEncode {
        task: String,
        message: String,
    },
    GaveUp {
        task: String,
        deliveries: u64,
    },
    Other(String),
    /// Cancelled by the caller, or by an operator (`Admin::purge`, `cancel_client`).
    Cancelled,
    /// Not begun before its expiry (`RedisPool::expire_jobs_after`).
    Expired {
        task: String,
        late_ms: u64,
    },
}

fn one() -> u32 {
    1
}

impl WireError {
    pub(crate) fn from_pool(err: &pool_core::Error) -> Self {
        use pool_core::{Error as E, ExitCause};
        match err {
            E::Panicked {
                task,
                message,
                location,
            } => WireError::Panicked {
                task: task.clone(),
                message: message.clone(),
                location: location.clone(),
            },
            E::WorkerDied {
                task,
                pid,
                cause,
                attempts,
            } => {
                let (signal, code) = match cause {
                    ExitCause::Signal(s) => (Some(*s), None),
                    ExitCause::Exited(c) => (None, Some(*c)),
                    _ => (None, None),
                };
                WireError::WorkerDied {
                    task: task.clone(),
                    pid: *pid,
                    signal,
                    code,
                    attempts: *attempts,
                }
            }
            E::Timeout {
                task,
                limit,
                pid,
                attempts,
            } => WireError::Timeout {
                task: task.clone(),
                limit_ms: limit.as_millis() as u64,
                pid: *pid,
                attempts: *attempts,
            },
            E::UnknownTask { name } => WireError::UnknownTask { name: name.clone() },
            E::ArgsDecode { task, message } => WireError::ArgsDecode {
                task: task.clone(),
                message: message.clone(),
            },
            E::ResultEncode { task, message } => WireError::ResultEncode {
                task: task.clone(),
                message: message.clone(),
            },
            E::Cancelled => WireError::Cancelled,
            other => WireError::Other(other.to_string()),
        }
    }

    pub(crate) fn into_error(self) -> Error {
        use pool_core::{Error as E, ExitCause};
        match self {
            WireError::Panicked {
                task,
                message,
                location,
            } => E::Panicked {
                task,
                message,
                location,
            }
            .into(),
            WireError::WorkerDied {
                task,
                pid,
                signal,
                code,
                attempts,
            } => E::WorkerDied {
                task,
                pid,
                cause: match (signal, code) {
                    (Some(s), _) => ExitCause::Signal(s),
                    (None, Some(c)) => ExitCause::Exited(c),
                    _ => ExitCause::Unknown,
                },
                attempts,
            }
            .into(),
            WireError::Timeout {
                task,
                limit_ms,
                pid,
                attempts,
            } => E::Timeout {
                task,
                limit: std::time::Duration::from_millis(limit_ms),
                pid,
                attempts,
            }
            .into(),
            WireError::UnknownTask { name } => E::UnknownTask { name }.into(),
            WireError::ArgsDecode { task, message } => E::ArgsDecode { task, message }.into(),
            WireError::ResultEncode { task, message } => E::ResultEncode { task, message }.into(),
            WireError::GaveUp { task, deliveries } => Error::GaveUp { task, deliveries },
            WireError::Other(message) => Error::Remote(message),
            WireError::Cancelled => E::Cancelled.into(),
            WireError::Expired { task, late_ms } => Error::Expired {
                task,
                late: std::time::Duration::from_millis(late_ms),
            },
        }
    }
}

/// Hides the password of a Redis URL, for logs and messages.
///
/// # Examples
///
/// ```
/// assert_eq!(
///     pool_redis::redact_url("redis://user:s3cret@host:6379/0"),
///     "redis://user:***@host:6379/0"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let hidden = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        "***".to_owned()
    };
    format!("{}{hidden}{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:s3cret@host/"), "rediss://:***@host/");
        assert_eq!(redact_url("redis://s3cret@host/"), "redis://***@host/");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }

    #[test]
    fn stream_replies_parse_as_the_redis_crate_parses_them() {
        use redis::Value;
        let bulk = |s: &[u8]| Value::BulkString(s.to_vec());
        let entry = |id: &str, fields: Vec<Value>| {
            Value::Array(vec![bulk(id.as_bytes()), Value::Array(fields)])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"pool:{q}:tasks"),
            Value::Array(vec![
                entry(
                    "1-0",
                    vec![
                        bulk(b"task"),
                        bulk(b"sq"),
                        bulk(b"args"),
                        bulk(b"\x91\xc4\x01\x07"),
                    ],
                ),
                entry("1-1", vec![bulk(b"id"), bulk(b"9")]),
            ]),
        ])]);
        let ours = stream_reply(reply.clone()).unwrap();
        let theirs: redis::streams::StreamReadReply = redis::from_redis_value(reply).unwrap();
        assert_eq!(ours.keys.len(), theirs.keys.len());
        assert_eq!(ours.keys[0].key, theirs.keys[0].key);
        assert_eq!(ours.keys[0].ids, theirs.keys[0].ids);
        assert_eq!(ours.keys[0].ids.len(), 2);
        assert!(stream_reply(Value::Nil).unwrap().keys.is_empty());
        // An entry deleted while pending has no fields.
        let gone = Value::Array(vec![Value::Array(vec![
            bulk(b"k"),
            Value::Array(vec![Value::Array(vec![bulk(b"2-0"), Value::Nil])]),
        ])]);
        let gone = stream_reply(gone).unwrap();
        assert_eq!(gone.keys[0].ids[0].id, "2-0");
        assert!(gone.keys[0].ids[0].map.is_empty());
        assert!(stream_reply(Value::Int(3)).is_err());
        assert!(stream_reply(Value::Array(vec![Value::Int(3)])).is_err());
    }

    #[test]
    fn items_and_errors_round_trip() {
        let items = vec![vec![1u8, 2], vec![], vec![0xc4; 300]];
        assert_eq!(
            decode_items(&encode_items(items.iter().map(Vec::as_slice))).unwrap(),
            items
        );
        assert!(decode_items(b"\x93garbage").is_err());
        // The encoding is the one serde writes for a list of byte strings (what older clients
        // and workers read and wrote).
        let list: Vec<serde_bytes::ByteBuf> = items.iter().cloned().map(Into::into).collect();
        let by_serde = rmp_serde::to_vec(&list).unwrap();
        assert_eq!(encode_items(items.iter().map(Vec::as_slice)), by_serde);
        // Items are borrowed in place; a length past the end is refused, not read past.
        let slices = decode_slices(&by_serde).unwrap();
        assert_eq!(
            slices[2].as_ptr(),
            by_serde[by_serde.len() - 300..].as_ptr()
        );
        assert!(decode_slices(&by_serde[..by_serde.len() - 1]).is_err());
        assert!(decode_slices(b"\x91\xc4\xff").is_err());
        let err = pool_core::Error::WorkerDied {
            task: "t".into(),
            pid: 7,
            cause: pool_core::ExitCause::Signal(9),
            attempts: 3,
        };
        let wire = WireError::from_pool(&err);
        let bytes = rmp_serde::to_vec(&wire).unwrap();
        let back: WireError = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.into_error().to_string(), err.to_string());
    }

    #[test]
    fn progress_round_trips() {
        let items: Progress = vec![
            Some(Ok(vec![1, 2])),
            None,
            Some(Err(WireError::Other("x".into()))),
        ];
        assert_eq!(decode_progress(&encode_progress(&items)).unwrap(), items);
        assert!(decode_progress(b"\x93garbage").is_err());
    }

    #[test]
    fn keys_share_a_hash_tag() {
        let k = Keys::new("jobs").unwrap();
        assert_eq!(k.tasks, "pool:{jobs}:tasks");
        assert_eq!(k.results("c1"), "pool:{jobs}:results:c1");
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a b").is_err());
    }
}
