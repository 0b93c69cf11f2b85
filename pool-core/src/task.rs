//! What a task is: the [`Task`] trait that `#[task]` implements, and the registry entry through
//! which a worker runs a task by name.

use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{Items, ResultsWriter};
use crate::panic_capture;

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
/// that item's outcome; the next item runs as usual.
fn run_batch<T: Task>(items: Items<'_>, out: &mut ResultsWriter<'_>) {
    for item in items {
        let bytes = match item {
            Ok(bytes) => bytes,
            Err(err) => {
                out.args_decode(err.0);
                continue;
            }
        };
        let mark = out.mark();
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            match crate::codec::decode::<T::Args>(bytes) {
                Ok(args) => {
                    let value = T::call(args);
                    out.ok(&value);
                }
                Err(err) => out.args_decode(&err),
            }
        }));
        if let Err(payload) = result {
            out.rollback(mark);
            let (message, location) = panic_capture::take(payload);
            out.panicked(&message, location.as_deref());
        }
    }
}
