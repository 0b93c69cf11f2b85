//! What an operator wants to see: queue depth, jobs being worked on, live workers.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::conn::Link;
use crate::wire::{Keys, GROUP};
use crate::Error;

/// A queue as Redis sees it, from [`status`] or [`RedisPool::status`](crate::RedisPool::status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The queue's name.
    pub queue: String,
    /// Jobs no worker has taken yet.
    pub waiting: u64,
    /// Jobs a worker has taken and not answered yet.
    pub pending: u64,
    /// The workers that have sent a heartbeat in the last minute, newest first.
    pub workers: Vec<WorkerInfo>,
}

/// One worker, as its heartbeats describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its consumer name in the group: `host-pid-random`.
    pub name: String,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// How many processes its local pool runs.
    pub processes: usize,
    /// How long ago its last heartbeat was.
    pub last_seen: Duration,
    /// Whether it is alive: its last heartbeat is less than three heartbeat intervals old.
    pub alive: bool,
    /// Jobs it has answered since it started.
    pub jobs_done: u64,
    /// Of those, jobs answered with a failure.
    pub failures: u64,
    /// Jobs it answered per minute, over its last heartbeat interval.
    pub jobs_per_minute: u64,
    /// Jobs it holds now (running, or taken and waiting for a local process).
    pub held: u64,
    /// Whether it is draining (stopping: finishing what it runs, taking nothing new).
    pub draining: bool,
    /// How long it has been running.
    pub uptime: Duration,
}

/// Reads the status of `queue` on the Redis at `url`.
///
/// # Examples
///
/// ```no_run
/// let s = pool_redis::status("redis://127.0.0.1/", "jobs")?;
/// println!("{} waiting, {} pending, {} workers", s.waiting, s.pending, s.workers.len());
/// # Ok::<(), pool_redis::Error>(())
/// ```
pub fn status(url: &str, queue: &str) -> Result<QueueStatus, Error> {
    let keys = Keys::new(queue)?;
    let mut link = Link::new(crate::conn::open(url)?, Duration::from_secs(5));
    link.connect_once()?;
    read(&mut link, &keys)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Creates the queue's stream and consumer group if they do not exist. The group starts at the
/// stream's beginning, so jobs added before any worker existed are delivered.
pub(crate) fn ensure_group(link: &mut Link, keys: &Keys) -> Result<(), Error> {
    let stop = AtomicBool::new(false);
    let created = link.run(&stop, |conn| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&keys.tasks)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(conn)
    });
    match created {
        Ok(()) => Ok(()),
        Err(err) if crate::conn::has_code(&err, "BUSYGROUP") => Ok(()),
        Err(err) => Err(err.into()),
    }
}

pub(crate) fn read(link: &mut Link, keys: &Keys) -> Result<QueueStatus, Error> {
    let stop = AtomicBool::new(false);
    let since = now_ms().saturating_sub(60_000);
    let (len, pending, names): (u64, Value, Vec<(String, u64)>) = link
        .run(&stop, |conn| {
            redis::pipe()
                .cmd("XLEN")
                .arg(&keys.tasks)
                .cmd("XPENDING")
                .arg(&keys.tasks)
                .arg(GROUP)
                .cmd("ZRANGEBYSCORE")
                .arg(&keys.heartbeats)
                .arg(since)
                .arg("+inf")
                .arg("WITHSCORES")
                .query(conn)
        })
        .or_else(|err| {
            // No group yet (nothing was ever submitted or served): an empty queue.
            if crate::conn::has_code(&err, "NOGROUP") {
                Ok((0, Value::Nil, Vec::new()))
            } else {
                Err(err)
            }
        })?;
    let pending = match pending {
        Value::Array(fields) => match fields.first() {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    let now = now_ms();
    let mut workers = Vec::new();
    for (name, seen) in names {
        let info: Vec<(String, String)> = link.run(&stop, |conn| {
            redis::cmd("HGETALL").arg(keys.worker(&name)).query(conn)
        })?;
        let get = |k: &str| {
            info.iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let heartbeat_ms: u64 = get("heartbeat_ms").parse().unwrap_or(1000);
        let last_seen = Duration::from_millis(now.saturating_sub(seen));
        workers.push(WorkerInfo {
            host: get("host"),
            pid: get("pid").parse().unwrap_or(0),
            processes: get("processes").parse().unwrap_or(0),
            alive: last_seen < Duration::from_millis(3 * heartbeat_ms),
            jobs_done: get("done").parse().unwrap_or(0),
            failures: get("failed").parse().unwrap_or(0),
            jobs_per_minute: get("per_minute").parse().unwrap_or(0),
            held: get("held").parse().unwrap_or(0),
            draining: get("draining") == "1",
            uptime: Duration::from_millis(
                now.saturating_sub(get("started_ms").parse().unwrap_or(now)),
            ),
            last_seen,
            name,
        });
    }
    workers.sort_by_key(|w| w.last_seen);
    Ok(QueueStatus {
        queue: keys.queue.clone(),
        waiting: len.saturating_sub(pending),
        pending,
        workers,
    })
}
