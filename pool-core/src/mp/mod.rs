//! Everything else a `multiprocessing` user reaches for: processes, queues, pipes, shared
//! values and arrays, locks and other synchronization, and named shared memory — all working
//! across processes, all passable to a child as a task argument.
//!
//! Every handle here (but [`SharedMemory`]) lives in a memfd that has no name in any file
//! system, so nothing is ever left in `/dev/shm`. A handle can be cloned, inherited across
//! `fork`, and serialized (it travels as a reference to its creator's descriptor): pass it to a
//! [`Process`] or to a pool task like any argument. The process that created an object must
//! keep a handle until every other process has received its own.

pub(crate) mod handle;
mod lock;
mod locked_ring;
pub(crate) mod pipe;
mod process;
mod queue;
mod raw;
mod segment;
mod shared_memory;
mod sync;
mod value;

pub use lock::{Lock, LockGuard, LockResult, OwnerDied, RLock, RLockGuard};
pub use pipe::{Connection, Pipe};
pub use process::{Process, ProcessHandle, Runnable};
pub use queue::{GetError, JoinableQueue, PutError, Queue, DEFAULT_BUFFER};
pub use shared_memory::SharedMemory;
pub use sync::{Barrier, BoundedSemaphore, Condition, Event, Semaphore};
pub use value::{Array, ArrayGuard, Value, ValueGuard};
