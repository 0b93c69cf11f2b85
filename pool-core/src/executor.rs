//! [`Executor`]: the calls every engine serves, so that code written once runs on a local
//! [`Pool`] or on a cluster (`pool_redis::RedisPool`), chosen by configuration.

use crate::{AsyncResult, Error, Imap, Pool, Task};

/// What a local [`Pool`] and `pool_redis::RedisPool` both do: run `#[task]`s and hand back
/// their results, with one result type ([`AsyncResult`]), one iterator type ([`Imap`]) and one
/// error type ([`Error`]) for both.
///
/// Write parallel code once against `E: Executor` and choose where it runs at start-up: a
/// process pool on a laptop, Redis-fed workers on many machines. Each method does what the
/// engine's own method of the same name does (see [`Pool`] for the details); an engine's
/// errors of its own (Redis unreachable, say) arrive as [`Error::Engine`].
///
/// # Examples
///
/// ```
/// use pool_core::{task, Error, Executor, Pool};
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// /// Runs unchanged on any engine.
/// fn sum_of_squares<E: Executor>(engine: &E, n: u64) -> Result<u64, Error> {
///     let direct: u64 = engine.map(square, 0..n)?.into_iter().sum();
///     let lazy: u64 = engine.imap(square, 0..n).sum::<Result<u64, Error>>()?;
///     let one = engine.apply_async(square, 12);
///     assert_eq!(one.get()?, 144);
///     assert_eq!(direct, lazy);
///     Ok(direct)
/// }
///
/// let pool = Pool::builder().processes(2).build()?;
/// assert_eq!(sum_of_squares(&pool, 10)?, 285);
/// # Ok::<(), pool_core::Error>(())
/// ```
pub trait Executor {
    /// Runs `task(args)` and waits for its result. By default, [`apply_async`](Self::apply_async)
    /// and `get`; an engine with a faster way overrides it.
    fn apply<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output, Error> {
        self.apply_async(task, args).get()
    }

    /// Submits `task(args)` and returns at once with a handle to its result.
    fn apply_async<T: Task>(&self, task: T, args: T::Args) -> AsyncResult<T::Output>;

    /// Runs `task` over every item, in chunks of the engine's default size; results in order.
    /// By default, [`map_async`](Self::map_async) and `get`.
    fn map<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.map_async(task, items).get()
    }

    /// [`map`](Self::map) with `chunksize` items per job. By default,
    /// [`map_async_chunked`](Self::map_async_chunked) and `get`.
    fn map_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.map_async_chunked(task, items, chunksize).get()
    }

    /// [`map`](Self::map) that returns at once with a handle to the whole result.
    fn map_async<T, I>(&self, task: T, items: I) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>;

    /// [`map_async`](Self::map_async) with `chunksize` items per job.
    fn map_async_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>;

    /// The results in input order, lazily, one item per job.
    fn imap<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_chunked(task, items, 1)
    }

    /// [`imap`](Self::imap) with `chunksize` items per job.
    fn imap_chunked<T, I>(&self, task: T, items: I, chunksize: usize) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>;

    /// The results as they finish, lazily, one item per job.
    fn imap_unordered<T, I>(&self, task: T, items: I) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.imap_unordered_chunked(task, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) with `chunksize` items per job.
    fn imap_unordered_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>;

    /// Every item's own outcome, in order, `chunksize` items per job: one failed item (a
    /// panic, a process dying under it) is an `Err` in its place and the others keep their
    /// values; the outer `Err` is for failures of the whole call. See [`Pool::map_results`].
    fn map_results_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<Result<T::Output, Error>>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let mut out = Vec::new();
        for result in self.imap_chunked(task, items, chunksize.max(1)) {
            if let Err(err) = &result {
                if err.is_whole_call() {
                    return Err(err.clone());
                }
            }
            out.push(result);
        }
        Ok(out)
    }

    /// Takes no more work; work already submitted still runs.
    fn close(&self);

    /// After [`close`](Self::close), waits until the work submitted is done.
    fn join(&self) -> Result<(), Error>;
}

/// The local pool overrides the blocking calls with its own faster paths (a blocking `map`
/// decodes chunks as they arrive instead of waiting for all of them).
impl Executor for Pool {
    fn apply<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output, Error> {
        Pool::apply(self, task, args)
    }

    fn apply_async<T: Task>(&self, task: T, args: T::Args) -> AsyncResult<T::Output> {
        Pool::apply_async(self, task, args)
    }

    fn map<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Pool::map(self, task, items)
    }

    fn map_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Pool::map_chunked(self, task, items, chunksize)
    }

    fn map_async<T, I>(&self, task: T, items: I) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Pool::map_async(self, task, items)
    }

    fn map_async_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<T::Output>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Pool::map_async_chunked(self, task, items, chunksize)
    }

    fn imap_chunked<T, I>(&self, task: T, items: I, chunksize: usize) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Pool::imap_chunked(self, task, items, chunksize)
    }

    fn imap_unordered_chunked<T, I>(
        &self,
        task: T,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Pool::imap_unordered_chunked(self, task, items, chunksize)
    }

    fn close(&self) {
        Pool::close(self)
    }

    fn join(&self) -> Result<(), Error> {
        Pool::join(self)
    }
}
