//! Feeds arbitrary bytes to every decoder of the parent/worker wire format.
//! Run with `cargo +nightly fuzz run frames` (needs cargo-fuzz and a nightly toolchain).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pool_core::__bench::decode_any_frame(data);
});
