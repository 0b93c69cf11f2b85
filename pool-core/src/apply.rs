//! The single calls of the local pool: `apply` and its forms (asynchronous, with a time limit,
//! by name, on encoded bytes).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::{Job, TaskName};
use crate::result::{decode_one, encoded_all, encoded_each, Counts, EncodedOutcomes, ResultCell};
use crate::wire::frame::JobBuilder;
use crate::{AsyncResult, Error, Pool, Task};

impl Pool {
    /// Runs `task(args)` in a worker and waits for the result.
    ///
    /// `args` is the bare value for a one-parameter task and a tuple for several.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn greet(name: String, times: usize) -> String {
    ///     format!("hello {name}! ").repeat(times)
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert_eq!(pool.apply(greet, ("Ada".to_string(), 2))?, "hello Ada! hello Ada! ");
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output, Error> {
        self.apply_async(task, args).get()
    }

    /// Submits `task(args)` and returns at once with a handle to the result.
    ///
    /// Callbacks can be attached to the handle with [`AsyncResult::on_success`] and
    /// [`AsyncResult::on_error`].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending: Vec<_> = (0..10).map(|i| pool.apply_async(square, i)).collect();
    /// let values: Vec<u64> = pending.iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(values[9], 81);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_async<T: Task>(&self, _task: T, args: T::Args) -> AsyncResult<T::Output> {
        self.apply_async_by_name(T::NAME.into(), None, move |name| {
            let mut b = JobBuilder::for_one(name, &args);
            b.push_owned(args)?;
            Ok(b)
        })
    }

    /// [`apply`](Self::apply) with a time limit for this call (overriding the pool's
    /// [`task_timeout`](crate::PoolBuilder::task_timeout)): past it, the worker is killed and replaced
    /// and the call fails with [`Error::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    /// use std::time::Duration;
    ///
    /// #[task]
    /// fn spin() {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// match pool.apply_timeout(spin, (), Duration::from_millis(100)) {
    ///     Err(Error::Timeout { limit, .. }) => assert_eq!(limit, Duration::from_millis(100)),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_timeout<T: Task>(
        &self,
        task: T,
        args: T::Args,
        limit: Duration,
    ) -> Result<T::Output, Error> {
        self.apply_async_timeout(task, args, limit).get()
    }

    /// [`apply_async`](Self::apply_async) with a time limit for this call; see
    /// [`apply_timeout`](Self::apply_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Pool};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let r = pool.apply_async_timeout(square, 5, std::time::Duration::from_secs(10));
    /// assert_eq!(r.get()?, 25);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_async_timeout<T: Task>(
        &self,
        _task: T,
        args: T::Args,
        limit: Duration,
    ) -> AsyncResult<T::Output> {
        self.apply_async_by_name(T::NAME.into(), Some(limit), move |name| {
            let mut b = JobBuilder::for_one(name, &args);
            b.push_owned(args)?;
            Ok(b)
        })
    }

    /// Runs the task registered as `name` with untyped arguments, and decodes its result as `R`.
    ///
    /// This is for names known only at run time (from a config file, a message, another
    /// language). Arguments that do not fit the task's parameters give [`Error::ArgsDecode`];
    /// a name no task has gives [`Error::UnknownTask`]. Prefer [`apply`](Self::apply), which
    /// checks types at compile time.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, Error, Pool};
    ///
    /// #[task(name = "math.square")]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert_eq!(pool.apply_named::<_, u64>("math.square", 4)?, 16);
    /// assert!(matches!(
    ///     pool.apply_named::<_, u64>("math.cube", 4),
    ///     Err(Error::UnknownTask { .. })
    /// ));
    /// assert!(matches!(
    ///     pool.apply_named::<_, u64>("math.square", "four"),
    ///     Err(Error::ArgsDecode { .. })
    /// ));
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_named<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        name: &str,
        args: A,
    ) -> Result<R, Error> {
        self.apply_async_by_name(TaskName::Owned(name.to_owned()), None, |name| {
            let mut b = JobBuilder::new(name);
            b.push_any(&args)?;
            Ok(b)
        })
        .get()
    }

    fn apply_async_by_name<R: DeserializeOwned + 'static>(
        &self,
        name: TaskName,
        limit: Option<Duration>,
        build: impl FnOnce(&str) -> Result<JobBuilder, String>,
    ) -> AsyncResult<R> {
        let slot = ResultCell::new(name.clone(), Counts::One(1), decode_one::<R>);
        if name.len() > usize::from(u16::MAX) {
            slot.complete_part(0, Err(Error::UnknownTask { name: name.into() }));
            return AsyncResult::new(slot);
        }
        let builder = match build(&name) {
            Ok(builder) => builder,
            Err(message) => {
                let task = name.into_owned();
                slot.complete_part(0, Err(Error::ArgsEncode { task, message }));
                return AsyncResult::new(slot);
            }
        };
        let mut job = Job::with_spliced(builder.finish_spliced(), name, slot.clone(), 0);
        job.limit = limit;
        self.shared.submit(job);
        AsyncResult::new(slot)
    }

    /// Runs the task registered as `name` once per item of `items`, as one job (like one chunk
    /// of a `map`), where each item is the task's arguments already encoded with
    /// [`wire::encode`](crate::wire::encode); the result holds each item's return value,
    /// encoded the same way, in order. It fails with the first item's error, as `map` does.
    ///
    /// For transports that carry tasks as bytes (such as `pool-redis`), which need no types:
    /// the worker decodes and encodes as the task's own signature says, so undecodable
    /// arguments are an [`Error::ArgsDecode`] and an unknown name an [`Error::UnknownTask`].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_core::{task, wire, Pool, Task};
    ///
    /// #[task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder().processes(1).build()?;
    /// let items = [wire::encode(&3u64).unwrap(), wire::encode(&4u64).unwrap()];
    /// let out = pool.apply_encoded(square::NAME, &items).get()?;
    /// let out: Vec<u64> = out.iter().map(|b| wire::decode(b).unwrap()).collect();
    /// assert_eq!(out, [9, 16]);
    /// # Ok::<(), pool_core::Error>(())
    /// ```
    pub fn apply_encoded<B: AsRef<[u8]>>(
        &self,
        name: &str,
        items: &[B],
    ) -> AsyncResult<Vec<Vec<u8>>> {
        self.submit_encoded(name, items, |name, counts| {
            ResultCell::new(name, counts, encoded_all)
        })
    }

    /// [`apply_encoded`](Self::apply_encoded) that keeps each item's own outcome: an item that
    /// panics, or whose worker dies under it, is an `Err` in its place and the other items keep
    /// their values. The result fails as a whole only for failures of the whole job (an
    /// unknown task, a broken frame, the pool terminated). For transports that answer item by
    /// item (`pool-redis`). The values share one buffer ([`EncodedOutcomes`]).
    pub fn apply_encoded_each<B: AsRef<[u8]>>(
        &self,
        name: &str,
        items: &[B],
    ) -> AsyncResult<EncodedOutcomes> {
        self.submit_encoded(name, items, |name, counts| {
            ResultCell::per_item(name, counts, encoded_each)
        })
    }

    /// Submits already-encoded items of the task `name` as one job, answered in the result
    /// cell `cell` makes.
    fn submit_encoded<B: AsRef<[u8]>, R: 'static>(
        &self,
        name: &str,
        items: &[B],
        cell: impl Fn(TaskName, Counts) -> std::sync::Arc<ResultCell<R>>,
    ) -> AsyncResult<R> {
        let name: TaskName = TaskName::Owned(name.to_owned());
        if items.is_empty() {
            return AsyncResult::new(cell(name, Counts::Many(Vec::new())));
        }
        let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
        let slot = cell(name.clone(), Counts::One(count));
        if name.len() > usize::from(u16::MAX) {
            slot.complete_part(0, Err(Error::UnknownTask { name: name.into() }));
            return AsyncResult::new(slot);
        }
        let mut builder = JobBuilder::new(&name);
        for item in items {
            if let Err(message) = builder.push_encoded(item.as_ref()) {
                let task = name.into_owned();
                slot.complete_part(0, Err(Error::ArgsEncode { task, message }));
                return AsyncResult::new(slot);
            }
        }
        self.shared
            .submit(Job::new(builder.finish(), name, slot.clone(), 0));
        AsyncResult::new(slot)
    }
}
