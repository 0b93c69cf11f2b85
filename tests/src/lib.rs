//! Helpers shared by the pool-tests test binaries.
