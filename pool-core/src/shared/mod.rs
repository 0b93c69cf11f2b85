//! Big read-only data shared with every worker instead of copied into each task:
//! [`SharedSlice`] for plain-old-data slices and, with the `rkyv` feature, `Shared` for
//! structured data read in place.
//!
//! How the memory is made, sealed, passed and released is in [`frozen`]'s notes.

#[cfg(feature = "rkyv")]
mod archived;
mod frozen;
mod slice;

#[cfg(feature = "rkyv")]
pub use archived::Shared;
pub(crate) use frozen::{keeps_any, sweep, sweep_if_due, IDLE_SWEEP};
pub use slice::{windows_of, SharedSlice};
