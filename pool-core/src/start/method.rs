//! [`StartMethod`]: how a pool starts its workers.

/// How a pool starts its workers.
///
/// The default is `ForkServer` when [`pool_core::init()`](crate::init) has run (put
/// `#[pool_core::main]` on `main`), and `Fork` otherwise.
///
/// | | `Fork` | `ForkServer` | `Spawn` |
/// |---|---|---|---|
/// | how | `fork()` of the program | `fork()` of a small server that `init()` forked from the program at the top of `main` | the program's binary run again |
/// | needs | nothing | `pool_core::init()` first in `main` | `pool_core::init()` first in `main` |
/// | start-up, 2 workers to the first result (measured, median) | 0.7–0.9 ms | 0.8–0.9 ms | 4–5 ms (an `exec` and the program's start-up per worker) |
/// | memory | the parent's, shared copy-on-write | the program's as it was when `main` began, shared copy-on-write | a fresh process |
/// | what a worker sees of the parent | everything, as at the fork | only what existed before `init()`: statics must be set up by an [initializer](crate::PoolBuilder::initializer) | only what existed before `init()` |
/// | threads in the parent | a task must not take a lock another thread held at the fork | safe: the server has one thread | safe: nothing is inherited but the pool's own channels |
///
/// # Examples
///
/// ```no_run
/// use pool_core::{task, Pool, StartMethod};
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[pool_core::main] // calls pool_core::init() first, which serves spawned workers
/// fn main() -> Result<(), pool_core::Error> {
///     let pool = Pool::builder().start_method(StartMethod::Spawn).build()?;
///     assert_eq!(pool.apply(square, 3)?, 9);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// Fork the program that builds the pool.
    Fork,
    /// Ask the fork server, started by `pool_core::init()` while the program was still
    /// single-threaded, to fork each worker.
    ForkServer,
    /// Run the program's binary again, which must call `pool_core::init()` first.
    Spawn,
}

impl Default for StartMethod {
    /// `ForkServer` when [`pool_core::init()`](crate::init) has started the fork server in this
    /// process, `Fork` otherwise.
    fn default() -> Self {
        if crate::start::forkserver::running() {
            StartMethod::ForkServer
        } else {
            StartMethod::Fork
        }
    }
}
