//! What a task is: the [`Task`] trait that `#[task]` implements, and the registry entry through
//! which a worker runs a task by name.

use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::panic_capture;
use crate::wire::codec::Small;
use crate::wire::frame::{FrameError, Items, ResultsWriter};

/// A function that pool workers can run by name.
///
/// Do not implement this trait by hand: write `#[task]` on a function. The attribute turns the
/// function into a unit struct of the same name that implements `Task` and still calls like the
/// function (`square(3)`), and registers it so that worker processes can find it by [`NAME`].
///
/// Generic code over tasks names this trait:
///
/// ```
/// use pool_core::{task, Pool, Task};
///
/// #[task]
/// fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// fn run_twice<T: Task>(pool: &Pool, t: T, a: T::Args, b: T::Args) -> Vec<T::Output> {
///     pool.map(t, [a, b]).unwrap()
/// }
///
/// let pool = Pool::builder().processes(1).build()?;
/// assert_eq!(run_twice(&pool, double, 1, 2), vec![2, 4]);
/// assert!(double::NAME.ends_with("::double"));
/// # Ok::<(), pool_core::Error>(())
/// ```
///
/// [`NAME`]: Task::NAME
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task",
    label = "not a #[task] function",
    note = "mark the function with `#[pool_core::task]` so that workers can find it by name"
)]
pub trait Task: Copy + Send + Sync + 'static {
    /// The arguments: the bare value for a one-parameter function, a tuple for several, `()` for
    /// none.
    type Args: Serialize + DeserializeOwned + 'static;
    /// The return type.
    type Output: Serialize + DeserializeOwned + 'static;
    /// The name workers know the task by: the module path and function name, or the name given
    /// with `#[task(name = "…")]`.
    const NAME: &'static str;
    /// How many more times a call of this task runs after its worker died or it ran out of
    /// time (and, with [`RETRY_ON_PANIC`](Self::RETRY_ON_PANIC), after it panicked) before
    /// its error reaches the caller; `None` (the default) takes the pool's
    /// [`retries`](crate::PoolBuilder::retries). Set with `#[task(retries = N)]`.
    const RETRIES: Option<u32> = None;
    /// Whether a panic is retried too (by default it is not: a panic is usually a bug, not bad
    /// luck). Set with `#[task(retry_on_panic)]`.
    const RETRY_ON_PANIC: bool = false;
    /// Runs the function in this process.
    fn call(args: Self::Args) -> Self::Output;
}

/// A registered task, as `#[task]` submits it to the registry.
#[doc(hidden)]
#[derive(Debug)]
pub struct TaskEntry {
    pub(crate) name: &'static str,
    pub(crate) path: &'static str,
    pub(crate) file: &'static str,
    pub(crate) line: u32,
    pub(crate) run: fn(Items<'_>, &mut ResultsWriter<'_>),
    pub(crate) retries: Option<u32>,
    pub(crate) retry_on_panic: bool,
}

impl TaskEntry {
    /// The entry for `T`, defined at `path` (module path and function name), `file`:`line`.
    pub const fn new<T: Task>(path: &'static str, file: &'static str, line: u32) -> Self {
        TaskEntry {
            name: T::NAME,
            path,
            file,
            line,
            run: run_batch::<T>,
            retries: T::RETRIES,
            retry_on_panic: T::RETRY_ON_PANIC,
        }
    }

    /// `path (file:line)`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{} ({}:{})", self.path, self.file, self.line)
    }
}

/// Runs `T` on every item of a job, writing one outcome per item. Runs in the worker.
///
/// A panic in the task (or in its arguments' or result's serde code) is caught and written as
/// that item's outcome; the next item runs as usual. One `catch_unwind` covers a run of items
/// rather than each item, so the common case pays for none per item: after a panic the run
/// resumes with the next item.
fn run_batch<T: Task>(mut items: Items<'_>, out: &mut ResultsWriter<'_>) {
    if crate::wire::codec::is_scalar::<T::Args>() && crate::wire::codec::is_scalar::<T::Output>() {
        return run_scalars::<T>(items, out);
    }
    loop {
        // Where the current item's outcome starts: a panic discards what it half wrote.
        let mut start = out.mark();
        let run = panic::catch_unwind(AssertUnwindSafe(|| {
            for item in items.by_ref() {
                start = out.mark();
                run_one::<T>(item, out);
            }
        }));
        match run {
            Ok(()) => return,
            Err(payload) => {
                out.rollback(start);
                write_panic(payload, out);
            }
        }
    }
}

/// Runs `T` on one item and writes its outcome (a panic propagates).
#[inline(always)]
fn run_one<T: Task>(item: Result<&[u8], FrameError>, out: &mut ResultsWriter<'_>) {
    match item {
        Ok(bytes) => match crate::wire::codec::decode::<T::Args>(bytes) {
            Ok(args) => {
                let value = T::call(args);
                out.ok(&value);
            }
            Err(err) => out.args_decode(&err),
        },
        Err(err) => out.args_decode(err.0),
    }
}

/// Writes a caught panic as the current item's outcome.
#[cold]
fn write_panic(payload: Box<dyn std::any::Any + Send>, out: &mut ResultsWriter<'_>) {
    let (message, location) = panic_capture::take(payload);
    out.panicked(&message, location.as_deref());
}

/// [`run_batch`] for a task whose arguments and result are both scalars (a `map` of `u64`, say):
/// items are decoded, run and written in a tight loop (see `ResultsWriter::ok_small_run`). An
/// item whose arguments are not in a form the fast decoder reads goes through [`run_one`].
fn run_scalars<T: Task>(mut items: Items<'_>, out: &mut ResultsWriter<'_>) {
    let fixed_in = items.is_fixed();
    if fixed_in {
        // A `map` of scalars: answer in kind (see `wire::frame`).
        if let Some(width) = crate::wire::codec::fixed_width::<T::Output>() {
            out.set_fixed(width);
        }
    }
    while items.remaining() > 0 {
        let fixed = out.is_fixed();
        let mut odd = None;
        let (_, caught) = out.ok_small_run(items.remaining() as usize, || {
            let item = items.next()?;
            match item {
                Ok(bytes) => match fixed_in
                    .then(|| crate::wire::codec::decode_fixed::<T::Args>(bytes))
                    .flatten()
                    .or_else(|| crate::wire::codec::decode_scalar::<T::Args>(bytes))
                {
                    Some(args) => {
                        let value = T::call(args);
                        if fixed {
                            Small::fixed(&value)
                        } else {
                            Small::of(&value)
                        }
                    }
                    None => {
                        odd = Some(item);
                        None
                    }
                },
                Err(_) => {
                    odd = Some(item);
                    None
                }
            }
        });
        if let Some(payload) = caught {
            write_panic(payload, out);
        } else if let Some(item) = odd {
            // Marks do not survive a rewrite into the general form: rewrite first.
            out.demote();
            let mark = out.mark();
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| run_one::<T>(item, out)))
            {
                out.rollback(mark);
                write_panic(payload, out);
            }
        }
    }
}
