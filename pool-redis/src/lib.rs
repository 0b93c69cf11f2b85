//! The same `#[task]` functions on workers on many machines, fed through Redis Streams.
//!
//! A [`RedisPool`] submits tasks to a named queue; [`Worker`]s — processes on any machine
//! that can reach the Redis server, built from a binary that links the same tasks — take them,
//! run them in a local [`pool_core::Pool`] (so a task that crashes is isolated on the worker
//! machine too), and send each result back to the client that asked. Redis is the engine: this
//! crate writes no cluster protocol of its own.
//!
//! ```no_run
//! use pool_core::task;
//! use pool_redis::{RedisPool, Worker};
//!
//! #[task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[pool_core::main]
//! fn main() -> Result<(), pool_redis::Error> {
//!     let url = "redis://127.0.0.1:6379/";
//!     if std::env::args().nth(1).as_deref() == Some("worker") {
//!         return Worker::new(url, "jobs")?.processes(4).run();
//!     }
//!     let pool = RedisPool::connect(url, "jobs")?;
//!     let squares = pool.map(square, 0..1000)?;
//!     assert_eq!(squares[999], 998_001);
//!     Ok(())
//! }
//! ```
//!
//! # How jobs travel
//!
//! - A job (one call, or one chunk of a `map`) is an entry in the queue's stream,
//!   `pool:{QUEUE}:tasks`, with the task's name, its MessagePack arguments, and where to answer.
//! - Workers read through one consumer group (`XREADGROUP`). A worker answers a job in one
//!   transaction (`MULTI`): the result goes to the caller's own result stream, the job is
//!   acknowledged (`XACK`) and removed.
//! - A worker refreshes the jobs it holds with every heartbeat; a job left idle longer than
//!   [`Worker::claim_idle`] (its worker died or lost Redis) is taken over by another worker
//!   (`XAUTOCLAIM`). A job delivered more than [`Worker::max_deliveries`] times is answered with
//!   [`Error::GaveUp`] instead of being run again.
//! - Clients and workers reconnect by themselves when Redis restarts, and resend what may not
//!   have arrived.
//!
//! # At-least-once
//!
//! Delivery is at-least-once: a job whose worker vanished is run again elsewhere, and a job
//! whose answer was lost in a reconnection may be run twice. The caller still gets exactly one
//! result per call (a client ignores answers to jobs it has already resolved). Tasks with side
//! effects should therefore be idempotent — keyed writes, upserts, checks before acting — or
//! accept being repeated.
//!
//! # Failures item by item, retries, cancel
//!
//! - **One failed item.** A worker answers each item of a chunk on its own: an item that
//!   panics, or whose local process crashes under it, is an `Err` in its place and the other
//!   items keep their values (the local pool runs the rest of the chunk again, as
//!   `pool_core::Pool` does). [`RedisPool::map_results_chunked`] returns them all; `map` fails
//!   with the first.
//! - **A worker machine that dies** (or goes silent) leaves its jobs to be redelivered after
//!   `claim_idle`. A worker runs a job of several items as up to 8 pieces in its local pool,
//!   and once a job has run for a heartbeat it writes the outcomes of the items done to the
//!   queue's progress hash (`pool:{QUEUE}:progress`) at every heartbeat. The worker that takes
//!   the job over runs only the items missing; only what the dead worker did after its last
//!   report runs again. Measured in the test: a job of 80 items of 100 ms whose worker was
//!   killed after 2.6 s ran 92 times in all (52 on the killed worker), where redelivery whole
//!   would have run 132.
//! - **Retries** run on the worker's machine, in its local pool: a task's
//!   `#[task(retries = N)]` and `#[task(retry_on_panic)]` apply there, and
//!   `Worker::pool(Pool::builder().retries(n))` sets a default. They retry a crashed local
//!   process or a time limit. [`Worker::max_deliveries`] is separate: it counts deliveries of
//!   a whole job to worker machines (a machine that dies is the case it guards), so a job can
//!   run up to `(retries + 1) × max_deliveries` times in all.
//! - **Cancel.** [`AsyncResult::cancel`](pool_core::AsyncResult::cancel) (and cancelling or
//!   dropping an [`Imap`]) resolves the call to `Cancelled` at once. The
//!   client's submitter then deletes the job's entry from the task stream if no worker has
//!   taken it yet (`XDEL`), and writes the job to the queue's control stream
//!   (`pool:{QUEUE}:control`), which every worker reads: a worker running it cancels it in its
//!   local pool, so the task sees `pool_core::cancelled()` and, if it does not return within
//!   the local pool's cancel grace, its process is stopped and replaced. Measured here: a
//!   polite task cleaned up 10 ms after the cancel, a spinning one's process was gone after
//!   64 ms. A client that dies leaves its jobs to run (their answers expire with its result
//!   stream).
//!
//! # Redis Cluster
//!
//! With the `cluster` feature, [`RedisPool::connect_cluster`], [`Worker::cluster`] and
//! [`Admin::connect_cluster`] work on a Redis Cluster through the `redis` crate's cluster
//! client (slots, redirections, failovers). A queue's keys share one hash tag, so a queue lives
//! on one master and its replicas; the client waits until a replica holds each submission
//! (`WAIT 1 100`). A failover loses what asynchronous replication loses — the master's last
//! writes: a lost answer or acknowledgement makes the job run again (at-least-once), and a
//! submission is safe once `WAIT` returned.
//!
//! # Big datasets
//!
//! `pool_core::SharedSlice` and `Shared` share memory between processes of one machine: their
//! handles name a descriptor of the creating process, so a worker on another machine cannot
//! map them (its task gets an argument error, never other memory). Across machines, put the
//! dataset where every worker can read it — a file on shared storage that each worker maps
//! (with `memmap2`, say) once per process, or an object store — and send its path and the
//! window each task reads as the task's arguments; keep what a task sends through Redis small.
//!
//! # Security
//!
//! A worker runs only tasks registered in its own binary, with arguments decoded as their typed
//! parameters: no code travels through Redis, so unlike pickle-based queues a compromised
//! broker cannot make a worker run arbitrary code (it can still call your tasks with arguments
//! of the right types). Use a password (`redis://:password@host/`) and, with the `tls` feature,
//! `rediss://` URLs, as the `redis` crate supports them. URLs are shown with the password
//! hidden in `Debug` output and messages.
//!
//! # Operations
//!
//! **Stopping a worker.** SIGTERM or SIGINT (Ctrl-C) drains a worker: it takes no new jobs,
//! puts the jobs it holds but has not begun back in the queue at once (other workers take them
//! within a read), finishes and answers the ones running, and exits 0; a second signal ends it
//! at once, and what it held is taken over after `claim_idle`. Measured in the test: with 16
//! jobs of 300 ms held, another worker began one 62 ms after the SIGTERM, the drained worker
//! exited 0 after 0.8 s, and the map ended 4.3 s after the signal (it waited for the 30 s
//! takeover before). [`Worker::handle_signals`]`(false)` leaves signals to the program, which
//! can drain through a [`ShutdownHandle`] instead.
//!
//! [`status`] (or [`RedisPool::status`]) reports the jobs waiting and in progress and the live
//! workers with their last heartbeat, jobs done, failures and rate. Results expire after
//! [`Worker::result_ttl`], and answered jobs are deleted from the stream, so Redis does not grow
//! without bound.
//!
//! **Nothing fails silently.** Lost connections, retries (with their backoff), reconnections
//! and refused passwords are `tracing` events naming the server and the user (never the
//! password). A worker that cannot serve for [`Worker::max_outage`] gives up with
//! [`Error::Unavailable`], so its process exits non-zero and a supervisor restarts it.
//!
//! **Dead letters.** A job whose entry could not be parsed, that was given up after
//! `max_deliveries`, or that was answered with a failure is also kept in the queue's
//! dead-letter stream, `pool:{QUEUE}:dead`, with the reason, the task, the attempts, the time
//! and the worker ([`DeadLetter`]). [`Admin`] lists, shows, requeues and purges them; it also
//! purges a queue's waiting jobs, cancels everything a client submitted, and lists and removes
//! the consumers of dead workers (each worker's keeper removes them by itself). The crate's
//! binary, `pool-redis`, does all of this from the command line, with tables or `--json`:
//!
//! ```text
//! pool-redis [--json] (status | workers | dead | requeue | purge | cancel) URL QUEUE [ARGS]
//! ```

#![deny(missing_docs)]

mod admin;
mod client;
mod conn;
mod dead;
mod error;
mod signals;
mod status;
mod wire;
mod worker;

pub use admin::{Admin, Consumer};
pub use client::RedisPool;
pub use dead::{DeadKind, DeadLetter, MAX_DEAD};
pub use error::Error;
/// The result and iterator types are pool-core's, for both engines.
pub use pool_core::{AsyncResult, Imap};
pub use status::{status, QueueStatus, WorkerInfo};
pub use wire::redact_url;
pub use worker::{ShutdownHandle, Worker};

/// The `redis` crate this one is built on, for [`RedisPool::with_client`] and
/// [`Worker::with_client`].
pub use redis;

/// A client for a `rediss://` URL that trusts the certificate authority `root_ca_pem` (PEM)
/// instead of the public roots: for a Redis server with a private certificate. Feature `tls`.
///
/// Clients built by hand for [`RedisPool::with_client`] should set `TCP_NODELAY`
/// (`ConnectionInfo::set_tcp_settings`), as this function and [`RedisPool::connect`] do: without
/// it each pipelined round trip can wait for a delayed acknowledgement.
///
/// # Examples
///
/// ```no_run
/// let ca = std::fs::read("ca.pem").unwrap();
/// let client = pool_redis::tls_client("rediss://:password@redis.internal:6380/", &ca)?;
/// let pool = pool_redis::RedisPool::with_client(client, "jobs")?;
/// # Ok::<(), pool_redis::Error>(())
/// ```
#[cfg(feature = "tls")]
pub fn tls_client(url: &str, root_ca_pem: &[u8]) -> Result<redis::Client, Error> {
    conn::open(url)?; // installs the crypto provider, and checks the URL
    Ok(redis::Client::build_with_tls(
        conn::info(url)?,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_ca_pem.to_vec()),
        },
    )?)
}
