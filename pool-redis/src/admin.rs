//! What an operator does to a queue, without any user code: look at it, clean it, take work
//! back. The `pool-redis` command-line tool is a thin layer over [`Admin`].

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use redis::streams::StreamRangeReply;
use redis::Value;

use crate::conn::Link;
use crate::dead::{DeadLetter, MAX_DEAD};
use crate::status::{self, QueueStatus};
use crate::wire::{Keys, WireError, GROUP};
use crate::Error;

/// A consumer of the queue's group: a worker that read from it, alive or not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Consumer {
    /// Its name (a worker's `host-pid-random`).
    pub name: String,
    /// Jobs it took and has not answered.
    pub pending: u64,
    /// How long since it last read from the queue.
    pub idle: Duration,
}

/// An operator's handle on one queue: status, workers, dead letters, requeue, purge, cancel.
///
/// # Examples
///
/// ```no_run
/// let admin = pool_redis::Admin::connect("redis://127.0.0.1/", "jobs")?;
/// for letter in admin.dead_letters(10)? {
///     println!("{} {} {}: {}", letter.id, letter.kind, letter.task, letter.reason);
/// }
/// admin.requeue_all_dead()?;
/// # Ok::<(), pool_redis::Error>(())
/// ```
#[derive(Debug)]
pub struct Admin {
    link: std::sync::Mutex<Link>,
    keys: Keys,
}

/// Whole-command retries: never stop (commands here are all safe to repeat).
fn never() -> AtomicBool {
    AtomicBool::new(false)
}

impl Admin {
    /// Connects to the Redis at `url` (fails at once if it cannot be reached).
    pub fn connect(url: &str, queue: &str) -> Result<Admin, Error> {
        Admin::with_client(crate::conn::open(url)?, queue)
    }

    /// [`connect`](Self::connect) through a `redis::Client` built by the caller.
    pub fn with_client(client: redis::Client, queue: &str) -> Result<Admin, Error> {
        Admin::with_connector(client.into(), queue)
    }

    /// [`connect`](Self::connect) to a Redis Cluster through any of `nodes` (feature
    /// `cluster`).
    #[cfg(feature = "cluster")]
    pub fn connect_cluster(nodes: &[&str], queue: &str) -> Result<Admin, Error> {
        Admin::with_connector(crate::conn::Connector::cluster(nodes)?, queue)
    }

    pub(crate) fn with_connector(
        client: crate::conn::Connector,
        queue: &str,
    ) -> Result<Admin, Error> {
        let keys = Keys::new(queue)?;
        let mut link = Link::new(client, Duration::from_secs(10));
        link.connect_once()?;
        Ok(Admin {
            link: std::sync::Mutex::new(link),
            keys,
        })
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run<T>(
        &self,
        f: impl FnMut(&mut dyn redis::ConnectionLike) -> Result<T, redis::RedisError>,
    ) -> Result<T, Error> {
        Ok(self.link().run(&never(), f)?)
    }

    /// Jobs waiting and in progress, and the workers that sent a heartbeat in the last minute
    /// (as [`status`](crate::status)).
    pub fn status(&self) -> Result<QueueStatus, Error> {
        status::read(&mut self.link(), &self.keys)
    }

    /// Every consumer of the queue's group, with the jobs it holds: live workers, and workers
    /// that died without saying goodbye (until [`remove_stale_consumers`] or a live worker's
    /// keeper removes them).
    ///
    /// [`remove_stale_consumers`]: Self::remove_stale_consumers
    pub fn consumers(&self) -> Result<Vec<Consumer>, Error> {
        consumers(&mut self.link(), &self.keys)
    }

    /// Removes from the group the consumers that hold no job, have not read for `idle` and send
    /// no heartbeat: workers that died uncleanly (their jobs, if they held any, are taken over
    /// first). Workers do this by themselves (each keeper, every minute, with `idle` = its
    /// `claim_idle`). Returns the names removed.
    pub fn remove_stale_consumers(&self, idle: Duration) -> Result<Vec<String>, Error> {
        remove_stale_consumers(&mut self.link(), &self.keys, idle)
    }

    /// The newest `count` dead letters, newest first (see the crate's *Dead letters*).
    pub fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, Error> {
        let reply: StreamRangeReply = self.run(|conn| {
            redis::cmd("XREVRANGE")
                .arg(&self.keys.dead)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count.max(1))
                .query(conn)
        })?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| DeadLetter::parse(e.id, &e.map))
            .collect())
    }

    /// One dead letter by its id, if it is there.
    pub fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, Error> {
        let reply: StreamRangeReply = self.run(|conn| {
            redis::cmd("XRANGE")
                .arg(&self.keys.dead)
                .arg(id)
                .arg(id)
                .query(conn)
        })?;
        Ok(reply
            .ids
            .into_iter()
            .next()
            .map(|e| DeadLetter::parse(e.id, &e.map)))
    }

    /// How many dead letters the queue holds.
    pub fn dead_count(&self) -> Result<u64, Error> {
        self.run(|conn| redis::cmd("XLEN").arg(&self.keys.dead).query(conn))
    }

    /// Puts the dead letters `ids` back in the queue as the jobs they were (each its own new
    /// entry; a worker answers the client that submitted it, if that client still listens),
    /// and removes them from the dead letters. Returns how many were requeued.
    pub fn requeue_dead(&self, ids: &[&str]) -> Result<usize, Error> {
        let mut done = 0;
        for id in ids {
            let Some(letter) = self.dead_letter(id)? else {
                continue;
            };
            self.run(|conn| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                let cmd = pipe.cmd("XADD").arg(&self.keys.tasks).arg("*");
                for (k, v) in &letter.fields {
                    cmd.arg(k).arg(v.as_slice());
                }
                cmd.ignore();
                pipe.cmd("XDEL").arg(&self.keys.dead).arg(*id).ignore();
                pipe.query::<()>(conn)
            })?;
            done += 1;
        }
        if done > 0 {
            status::ensure_group(&mut self.link(), &self.keys)?;
        }
        Ok(done)
    }

    /// Requeues every dead letter (see [`requeue_dead`](Self::requeue_dead)).
    pub fn requeue_all_dead(&self) -> Result<usize, Error> {
        let mut done = 0;
        loop {
            let letters = self.dead_letters(MAX_DEAD)?;
            if letters.is_empty() {
                return Ok(done);
            }
            let ids: Vec<&str> = letters.iter().rev().map(|l| l.id.as_str()).collect();
            done += self.requeue_dead(&ids)?;
        }
    }

    /// Deletes every dead letter. Returns how many there were.
    pub fn purge_dead(&self) -> Result<u64, Error> {
        let n = self.dead_count()?;
        self.run(|conn| redis::cmd("DEL").arg(&self.keys.dead).query::<()>(conn))?;
        Ok(n)
    }

    /// Removes every job no worker has taken yet, and answers each `Cancelled` to the client
    /// that submitted it. Jobs already running are not touched (cancel their clients' work
    /// with [`cancel_client`](Self::cancel_client)). Returns how many were removed.
    pub fn purge(&self) -> Result<u64, Error> {
        self.take_waiting(|_| true)
    }

    /// Cancels everything client `client` submitted (its id is in [`RedisPool::id`] and in
    /// [`DeadLetter::client`]): jobs not taken yet are removed and answered `Cancelled`, and
    /// workers running its jobs stop them (they answer `Cancelled` too). Returns how many
    /// waiting jobs were removed.
    ///
    /// [`RedisPool::id`]: crate::RedisPool::id
    pub fn cancel_client(&self, client: &str) -> Result<u64, Error> {
        let removed = self.take_waiting(|reply| reply.is_some_and(|(c, _)| c == client))?;
        self.tell_cancel(client, "*")?;
        Ok(removed)
    }

    /// Cancels job `job` of client `client`: removed and answered `Cancelled` if no worker has
    /// taken it, else stopped where it runs. Returns whether it was still waiting.
    pub fn cancel_job(&self, client: &str, job: u64) -> Result<bool, Error> {
        let removed =
            self.take_waiting(|reply| reply.is_some_and(|(c, j)| c == client && j == job))?;
        self.tell_cancel(client, &job.to_string())?;
        Ok(removed > 0)
    }

    /// Tells the workers to stop the jobs `ids` of `client` where they run.
    fn tell_cancel(&self, client: &str, ids: &str) -> Result<(), Error> {
        self.run(|conn| {
            let mut pipe = redis::pipe();
            self.keys.tell_cancel(&mut pipe, client, ids);
            pipe.query::<()>(conn)
        })
    }

    /// Removes the waiting jobs (after the group's last delivered entry) that `select` picks
    /// (given its client and job id), answering each `Cancelled`.
    fn take_waiting(&self, select: impl Fn(Option<(&str, u64)>) -> bool) -> Result<u64, Error> {
        let last = self.last_delivered()?;
        let mut start = match &last {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        let mut removed = 0;
        let answer = rmp_serde::to_vec(&WireError::Cancelled).expect("an error always encodes");
        loop {
            let page: StreamRangeReply = self.run(|conn| {
                redis::cmd("XRANGE")
                    .arg(&self.keys.tasks)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000)
                    .query(conn)
            })?;
            let Some(tail) = page.ids.last() else {
                return Ok(removed);
            };
            start = format!("({}", tail.id);
            let chosen: Vec<(String, Option<(String, u64)>)> = page
                .ids
                .iter()
                .filter_map(|e| {
                    let reply = crate::client::field_string(&e.map, "reply")
                        .zip(crate::client::field_u64(&e.map, "id"));
                    select(reply.as_ref().map(|(c, j)| (c.as_str(), *j)))
                        .then(|| (e.id.clone(), reply))
                })
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let deleted: Vec<i64> = self.run(|conn| {
                let mut pipe = redis::pipe();
                for (id, _) in &chosen {
                    pipe.cmd("XDEL").arg(&self.keys.tasks).arg(id);
                }
                pipe.query(conn)
            })?;
            // Answer only what this call deleted (a worker may have taken an entry meanwhile).
            let answered: Vec<&(String, u64)> = chosen
                .iter()
                .zip(&deleted)
                .filter(|(_, d)| **d > 0)
                .filter_map(|((_, reply), _)| reply.as_ref())
                .collect();
            removed += deleted.iter().filter(|d| **d > 0).count() as u64;
            if !answered.is_empty() {
                self.run(|conn| {
                    let mut pipe = redis::pipe();
                    for (client, job) in &answered {
                        pipe.cmd("XADD")
                            .arg(self.keys.results(client))
                            .arg("*")
                            .arg("id")
                            .arg(*job)
                            .arg("err")
                            .arg(answer.as_slice())
                            .ignore();
                    }
                    pipe.query::<()>(conn)
                })?;
            }
        }
    }

    /// The id of the last entry the group delivered, if any.
    fn last_delivered(&self) -> Result<Option<String>, Error> {
        let groups: Result<Vec<Value>, Error> = self.run(|conn| {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&self.keys.tasks)
                .query(conn)
        });
        let groups = match groups {
            Ok(g) => g,
            // No stream: nothing waits.
            Err(Error::Redis(e)) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(e),
        };
        for group in groups {
            let fields = pairs(group);
            if fields.get("name").and_then(value_string).as_deref() == Some(GROUP) {
                return Ok(fields.get("last-delivered-id").and_then(value_string));
            }
        }
        Ok(None)
    }
}

/// The consumers of the queue's group (`XINFO CONSUMERS`); none if there is no group yet.
pub(crate) fn consumers(link: &mut Link, keys: &Keys) -> Result<Vec<Consumer>, Error> {
    let rows: Result<Vec<Value>, _> = link.run(&never(), |conn| {
        redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&keys.tasks)
            .arg(GROUP)
            .query(conn)
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) if crate::conn::has_code(&e, "NOGROUP") => return Ok(Vec::new()),
        Err(e) if e.to_string().contains("no such key") => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(rows
        .into_iter()
        .map(|row| {
            let f = pairs(row);
            let int = |k: &str| match f.get(k) {
                Some(Value::Int(n)) => (*n).max(0) as u64,
                _ => 0,
            };
            Consumer {
                name: f.get("name").and_then(value_string).unwrap_or_default(),
                pending: int("pending"),
                idle: Duration::from_millis(int("idle")),
            }
        })
        .collect())
}

/// See [`Admin::remove_stale_consumers`].
pub(crate) fn remove_stale_consumers(
    link: &mut Link,
    keys: &Keys,
    idle: Duration,
) -> Result<Vec<String>, Error> {
    let since = status::now_ms().saturating_sub(idle.as_millis() as u64);
    let live: Vec<String> = link.run(&never(), |conn| {
        redis::cmd("ZRANGEBYSCORE")
            .arg(&keys.heartbeats)
            .arg(since)
            .arg("+inf")
            .query(conn)
    })?;
    let mut removed = Vec::new();
    for c in consumers(link, keys)? {
        if c.pending == 0 && c.idle >= idle && !live.contains(&c.name) {
            // Removes it only if it still holds nothing (a consumer that took a job since the
            // list was read keeps it: DELCONSUMER would drop its pending entries).
            let gone: i64 = link.run(&never(), |conn| {
                redis::cmd("EVAL")
                    .arg(STALE_SCRIPT)
                    .arg(1)
                    .arg(&keys.tasks)
                    .arg(GROUP)
                    .arg(&c.name)
                    .query(conn)
            })?;
            if gone == 1 {
                removed.push(c.name);
            }
        }
    }
    Ok(removed)
}

/// Deletes consumer ARGV[2] of group ARGV[1] of stream KEYS[1] if it holds no job (atomically:
/// `XGROUP DELCONSUMER` would drop the entries it holds).
const STALE_SCRIPT: &str = r"
                    local rows = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
                    for _, row in ipairs(rows) do
                        local name, pending = nil, nil
                        for i = 1, #row, 2 do
                            if row[i] == 'name' then name = row[i + 1] end
                            if row[i] == 'pending' then pending = row[i + 1] end
                        end
                        if name == ARGV[2] then
                            if pending == 0 then
                                redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
                                return 1
                            end
                            return 0
                        end
                    end
                    return 0
                    ";

/// A reply of field-value pairs (RESP2 flat array, or RESP3 map) as a map.
fn pairs(v: Value) -> HashMap<String, Value> {
    let items: Vec<(Value, Value)> = match v {
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|(k, v)| Some((value_string(&k)?, v)))
        .collect()
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}
