//! The shared test tasks (`pool_tests::tasks`), for `mod common; use common::*;` in each test
//! binary.
#![allow(unused_imports, unreachable_pub)]

pub use pool_tests::tasks::*;
