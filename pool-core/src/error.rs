//! The one error type of the pool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong with a task or a pool.
///
/// Every failure of a task — a panic, a crash of its worker, arguments that do not decode — is
/// reported on the task that caused it, and the pool keeps serving the others. The enum is
/// `#[non_exhaustive]`: later versions add variants (for example for time limits).
///
/// `Error` is `Clone` so that one failure can be reported to every item it concerns (for example
/// each item of a `map` chunk whose worker died).
///
/// # Examples
///
/// ```
/// use pool_core::{task, Error, Pool};
///
/// #[task]
/// fn checked_div(a: i64, b: i64) -> i64 {
///     if b == 0 {
///         panic!("division by zero");
///     }
///     a / b
/// }
///
/// let pool = Pool::builder().processes(1).build()?;
/// match pool.apply(checked_div, (1, 0)) {
///     Err(Error::Panicked { message, .. }) => assert_eq!(message, "division by zero"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// assert_eq!(pool.apply(checked_div, (6, 3))?, 2); // the worker lives on
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked. The worker caught the panic and lives on.
    #[error("task `{task}` panicked{}: {message}", location_suffix(.location))]
    Panicked {
        /// The task's registered name.
        task: String,
        /// The panic message (`"Box<dyn Any>"` when the payload was not a string).
        message: String,
        /// Where the panic happened (`file:line:column`), when known.
        location: Option<String>,
    },

    /// The worker process running the task died (killed by a signal, aborted, crashed, or called
    /// `process::exit`). A replacement worker has been started.
    #[error("the worker (pid {pid}) running task `{task}` died: {cause}{}", after_attempts(*.attempts))]
    WorkerDied {
        /// The task's registered name.
        task: String,
        /// The process id of the worker that died (the last one, after retries).
        pid: i32,
        /// How it ended.
        cause: ExitCause,
        /// How many times the task was run, retries included (1 without retries).
        attempts: u32,
    },

    /// The task ran past its time limit; its worker was killed (SIGTERM, then SIGKILL after
    /// 100 ms) and replaced.
    #[error(
        "task `{task}` ran past its time limit of {limit:?} and its worker (pid {pid}) was killed{}",
        after_attempts(*.attempts)
    )]
    Timeout {
        /// The task's registered name.
        task: String,
        /// The limit it exceeded (for a chunk: the per-item limit times its items).
        limit: Duration,
        /// The process id of the worker that was killed (the last one, after retries).
        pid: i32,
        /// How many times the task was run, retries included (1 without retries).
        attempts: u32,
    },

    /// No task of this name is registered in the worker's binary.
    #[error("no task named `{name}` is registered (is the function marked #[task]?)")]
    UnknownTask {
        /// The name that was asked for.
        name: String,
    },

    /// The worker could not decode the arguments as the task's parameter types.
    #[error("task `{task}`: the arguments do not decode as its parameters: {message}")]
    ArgsDecode {
        /// The task's registered name.
        task: String,
        /// What the decoder said.
        message: String,
    },

    /// The caller's arguments could not be encoded as MessagePack.
    #[error("task `{task}`: the arguments could not be encoded: {message}")]
    ArgsEncode {
        /// The task's registered name.
        task: String,
        /// What the encoder said.
        message: String,
    },

    /// The worker could not encode the task's return value as MessagePack.
    #[error("task `{task}`: its result could not be encoded: {message}")]
    ResultEncode {
        /// The task's registered name.
        task: String,
        /// What the encoder said.
        message: String,
    },

    /// The caller could not decode the result as the task's return type.
    #[error("task `{task}`: its result does not decode as the return type: {message}")]
    ResultDecode {
        /// The task's registered name.
        task: String,
        /// What the decoder said.
        message: String,
    },

    /// Two tasks were registered under one name; the pool refuses to start.
    #[error(
        "two tasks are registered as `{name}`: `{first}` and `{second}`; \
         give one of them another name with #[task(name = \"…\")]"
    )]
    DuplicateTask {
        /// The name both tasks claim.
        name: String,
        /// The first function (path and source location).
        first: String,
        /// The second function (path and source location).
        second: String,
    },

    /// Work was submitted after [`Pool::close`](crate::Pool::close) or
    /// [`Pool::terminate`](crate::Pool::terminate).
    #[error("the pool is closed and accepts no new work")]
    Closed,

    /// The pool was terminated (or dropped) before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,

    /// [`Pool::join`](crate::Pool::join) was called before
    /// [`Pool::close`](crate::Pool::close) or [`Pool::terminate`](crate::Pool::terminate).
    #[error("join() needs close() or terminate() first")]
    NotClosed,

    /// A wait with a deadline ended before the result was ready. The task goes on; wait again
    /// to get its result.
    #[error("the result was not ready within {0:?}")]
    WaitTimeout(Duration),

    /// Workers kept failing outside any task (their initializer failed, or they died while
    /// idle) faster than the restart guard allows, so the pool stopped starting new ones instead
    /// of fork-looping; work that no live worker can take fails with this error.
    #[error("the pool stopped replacing workers: {0}")]
    PoolBroken(String),

    /// The input iterator of a `map` broke its contract: its `size_hint` promised an exact
    /// number of items and it yielded more or fewer. The map fails with this error instead of
    /// dropping or inventing items; nothing about the results is trusted to a size hint.
    #[error("the input iterator broke its contract: {0}")]
    BadIterator(String),

    /// The work was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel), or an
    /// [`Imap`](crate::Imap) cancelled or dropped) before it finished.
    #[error("the work was cancelled")]
    Cancelled,

    /// The pool was configured with values it cannot work with.
    #[error("invalid pool configuration: {0}")]
    Config(String),

    /// A worker process could not be started.
    #[error("could not start a worker process: {0}")]
    Spawn(#[source] Arc<std::io::Error>),

    /// A shared object (queue, lock, value, pipe, shared memory) could not be created or
    /// opened, or a process could not be started.
    #[error("shared object: {0}")]
    Shared(#[source] Arc<std::io::Error>),

    /// A send on a [`Connection`](crate::Connection) whose sending end this process closed
    /// (with `close()`), or whose pipe was closed as a whole.
    #[error("this end of the pipe is closed: it sends no more")]
    PipeClosed,

    /// A pool, or a result or iterator of one, was used in a process other than the one that
    /// built the pool — a child forked from it (a [`Process`](crate::Process), a worker, a
    /// program's own `fork`). The pool's collector thread, which feeds its workers and delivers
    /// every result, exists only in the process that built it, so the call fails at once
    /// instead of waiting forever. Build a new pool in the child instead. In such a process
    /// `close` and `terminate` do nothing, and dropping the handle leaves the parent's pool
    /// alone.
    #[error(
        "this pool belongs to process {owner} and cannot be used in process {pid}, which was \
         forked from it: build a pool in this process instead"
    )]
    WrongProcess {
        /// The process that built the pool.
        owner: u32,
        /// The process the call was made in.
        pid: u32,
    },

    /// The engine that runs the work failed outside any task: for `pool-redis`, Redis could not
    /// be reached, or a job was given up after its deliveries. The engine's own error is the
    /// source (a `pool_redis::Error` converts back from this losslessly). Seen by code written
    /// against [`Executor`](crate::Executor); a local pool never returns it.
    #[error(transparent)]
    Engine(Arc<dyn std::error::Error + Send + Sync>),

    /// A frame between the parent and a worker was malformed.
    #[error("malformed frame between pool and worker: {0}")]
    Protocol(String),
}

fn location_suffix(location: &Option<String>) -> String {
    match location {
        Some(loc) => format!(" at {loc}"),
        None => String::new(),
    }
}

/// ", after N attempts" when a task was retried; nothing otherwise.
fn after_attempts(attempts: u32) -> String {
    if attempts > 1 {
        format!(", after {attempts} attempts")
    } else {
        String::new()
    }
}

impl Error {
    /// Whether this error ends a whole call rather than one item of it (the pool terminated or
    /// closed, used from another process, broken, the call cancelled).
    pub(crate) fn is_whole_call(&self) -> bool {
        matches!(
            self,
            Error::Terminated
                | Error::Closed
                | Error::Cancelled
                | Error::WrongProcess { .. }
                | Error::PoolBroken(_)
        )
    }

    pub(crate) fn spawn(err: impl Into<std::io::Error>) -> Self {
        Error::Spawn(Arc::new(err.into()))
    }

    pub(crate) fn shared(err: impl Into<std::io::Error>) -> Self {
        Error::Shared(Arc::new(err.into()))
    }
}

/// How a worker process ended.
///
/// # Examples
///
/// ```
/// use pool_core::ExitCause;
///
/// assert_eq!(ExitCause::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
/// assert_eq!(ExitCause::Exited(3).to_string(), "exited with code 3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitCause {
    /// Killed by this signal number (9 for SIGKILL, 6 for SIGABRT, 11 for SIGSEGV, …).
    Signal(i32),
    /// Exited with this status code (for example through `std::process::exit`).
    Exited(i32),
    /// The worker disappeared and its status could not be read.
    Unknown,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Signal(sig) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(s) => write!(f, "killed by signal {sig} ({})", s.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            ExitCause::Exited(code) => write!(f, "exited with code {code}"),
            ExitCause::Unknown => f.write_str("ended for an unknown reason"),
        }
    }
}
