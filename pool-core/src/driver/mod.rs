//! The parent's side of a pool's workers: one thread per pool (the collector) that takes jobs
//! from the pool's queue, feeds them to the workers, delivers their results, and replaces the
//! ones that die. Split by the data each part owns:
//!
//! - `collector`: the loop, and nothing else it need not own;
//! - `supervise`: starting workers, and their deaths, time limits, quotas and initializers;
//! - `seat`: one worker's place — its process, the jobs out at it, the frame being sent, the
//!   result being read;
//! - `schedule`: how much work to queue at a worker, from what its tasks took before (pure);
//! - `guard`: the restart guard and its backoff, and what counts as a failure (pure);
//! - `shared`: what the pool's handle and the collector share (the queue's sending end, the
//!   worker pids, the bell, the counters);
//! - `jobqueue`: the queue itself;
//! - `settings`: what the collector is told of the pool's configuration;
//! - `split`: a job whose worker died part-way, split so that one item fails (or runs again)
//!   and the others run again elsewhere, and its answer put back together.

pub(crate) mod collector;
mod guard;
pub(crate) mod jobqueue;
mod schedule;
mod seat;
pub(crate) mod settings;
pub(crate) mod shared;
mod split;
mod supervise;
