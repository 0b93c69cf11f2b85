//! The error type of the Redis client and worker.

use std::sync::Arc;
use std::time::Duration;

/// What can go wrong with a task run through Redis.
///
/// # Examples
///
/// ```
/// use pool_redis::Error;
///
/// let err = Error::from(pool_core::Error::UnknownTask { name: "nope".into() });
/// assert!(matches!(err, Error::Task(pool_core::Error::UnknownTask { .. })));
/// assert!(err.to_string().contains("nope"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task failed, exactly as it would have in a local [`pool_core::Pool`]: it panicked,
    /// its worker process died or ran past its time limit, its name is unknown to the workers,
    /// its arguments did not decode, or (on this side) its arguments did not encode or its
    /// result did not decode.
    #[error(transparent)]
    Task(pool_core::Error),

    /// Redis refused a command, or could not be reached (after retries, where retrying is safe).
    #[error("redis: {0}")]
    Redis(#[source] Arc<redis::RedisError>),

    /// The task was handed out `deliveries` times and each time the worker that took it went
    /// silent (its whole worker process died or lost Redis) before answering; it is not retried
    /// again.
    #[error(
        "task `{task}` was delivered {deliveries} times and each time its worker went silent \
         before answering; giving up"
    )]
    GaveUp {
        /// The task's name.
        task: String,
        /// How many times it was delivered.
        deliveries: u64,
    },

    /// No worker began the job before its expiry (see
    /// [`RedisPool::expire_jobs_after`](crate::RedisPool::expire_jobs_after)); it did not run.
    #[error("task `{task}` expired {late:?} before a worker could begin it; it did not run")]
    Expired {
        /// The task's name.
        task: String,
        /// How long past its expiry a worker took it.
        late: Duration,
    },

    /// The worker reported a failure that has no variant of its own here.
    #[error("the worker reported: {0}")]
    Remote(String),

    /// The client was closed (or dropped) before the task was submitted or answered.
    #[error("the client is closed")]
    Closed,

    /// [`RedisPool::join`](crate::RedisPool::join) needs [`close`](crate::RedisPool::close)
    /// first.
    #[error("join() needs close() first")]
    NotClosed,

    /// The result was not ready within the given time.
    #[error("the result was not ready within {0:?}")]
    WaitTimeout(Duration),

    /// Redis could not be used for `down`: unreachable, the credentials refused, or the queue
    /// unreadable (a worker gives up after [`Worker::max_outage`](crate::Worker::max_outage)).
    #[error("Redis at {server} could not be used for {down:?}; the last error: {last}")]
    Unavailable {
        /// The server (address and database; never credentials).
        server: String,
        /// How long it could not be used.
        down: Duration,
        /// The last error.
        last: String,
    },

    /// A message in Redis did not have the expected form.
    #[error("malformed message in Redis: {0}")]
    Protocol(String),

    /// An invalid setting.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Redis(Arc::new(err))
    }
}

/// A pool-core error, as this crate reports it: an engine error that came from this crate is
/// itself again (see [`pool_core::Error::Engine`]); any other is [`Error::Task`].
impl From<pool_core::Error> for Error {
    fn from(err: pool_core::Error) -> Self {
        if let pool_core::Error::Engine(source) = &err {
            if let Some(ours) = source.downcast_ref::<Error>() {
                return ours.clone();
            }
        }
        Error::Task(err)
    }
}

/// This crate's errors as the one error type of [`pool_core::Executor`]: a task's failure is
/// the pool-core error it carries; the rest (Redis, deliveries, the client closed …) are
/// [`pool_core::Error::Engine`], which converts back.
impl From<Error> for pool_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Task(inner) => inner,
            other => pool_core::Error::Engine(Arc::new(other)),
        }
    }
}
