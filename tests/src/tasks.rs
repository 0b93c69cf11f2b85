//! The tasks the tests and the helper binaries share, in one place: every test binary uses
//! them through `tests/common/mod.rs`, and the helper binaries import the ones they need.

use std::time::Duration;

use pool_core::{task, Pool};

/// A pool of `n` workers, for tests.
pub fn pool(n: usize) -> Pool {
    Pool::builder().processes(n).build().expect("pool starts")
}
use serde::{Deserialize, Serialize};

#[task]
pub fn square(x: u64) -> u64 {
    x * x
}

#[task]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[task]
pub fn nothing() {}

#[task]
pub fn concat(parts: Vec<String>, sep: String) -> String {
    parts.join(&sep)
}

#[task]
pub fn worker_pid() -> i32 {
    std::process::id() as i32
}

#[task]
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sleeps, then returns its input: a slow task for "kill it mid-run" tests.
#[task]
pub fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x
}

/// A scalar task (the fast path) that panics on every item ending in 999.
#[task]
pub fn square_unless_999(x: u64) -> u64 {
    if x % 1000 == 999 {
        panic!("{x} ends in 999");
    }
    x * x
}

/// A scalar argument and a result that is not one: fixed-width jobs, general results.
#[task]
pub fn describe(x: u64) -> String {
    format!("#{x}")
}

#[task]
pub fn half(x: i32) -> f64 {
    x as f64 / 2.0
}

#[task]
pub fn is_even(x: u8) -> bool {
    x % 2 == 0
}

#[task]
pub fn panics_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("item {x} is bad");
    }
    x
}

#[task]
pub fn panic_with(message: String) -> u64 {
    std::panic::panic_any(message)
}

#[task]
pub fn abort_now() {
    std::process::abort()
}

#[task]
pub fn segfault() {
    // A real invalid write, as a faulty native library makes (raising SIGSEGV by hand would only
    // reach the handler std installs for stack overflows, which returns).
    let address = std::hint::black_box(8usize) as *mut u64;
    // SAFETY: none; this deliberately crashes the worker.
    unsafe { address.write_volatile(1) };
}

#[task]
pub fn exit_with(code: i32) {
    std::process::exit(code)
}

#[task]
pub fn sleep_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[task]
pub fn checksum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| b as u64).sum::<u64>() + bytes.len() as u64
}

/// A value whose serialization always fails.
#[derive(Debug, Deserialize)]
pub struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unencodable refuses to be encoded",
        ))
    }
}

#[task]
pub fn make_unencodable() -> Unencodable {
    Unencodable
}

#[task]
pub fn take_unencodable(_x: Unencodable) -> u64 {
    1
}

/// A task returning its own `Result`.
#[task]
pub fn parse_number(s: String) -> Result<i64, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// Forks a grandchild that keeps the worker's descriptors (its socket too) open for a while,
/// then kills the worker: the pool must notice the death without waiting for the grandchild.
#[task]
pub fn fork_then_abort(grandchild_secs: u32) {
    // SAFETY: the grandchild only sleeps and `_exit`s, both async-signal-safe.
    unsafe {
        if libc::fork() == 0 {
            libc::sleep(grandchild_secs);
            libc::_exit(0);
        }
    }
    std::process::abort()
}

#[task]
pub fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Ignores SIGTERM, then sleeps: only SIGKILL stops it.
#[task]
pub fn stubborn_sleep(ms: u64) -> u64 {
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[task]
pub fn spin_forever() {
    loop {
        std::hint::spin_loop();
    }
}

/// Recurses without bound: the worker dies of a stack overflow (SIGSEGV caught by std, which
/// aborts).
#[task]
pub fn overflow_stack(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return pad[0];
    }
    overflow_stack(depth + 1).wrapping_add(pad[1])
}

/// Returns its input after a pseudo-random pause of 0-2 ms.
#[task]
pub fn jitter(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(x.wrapping_mul(2654435761) % 2000));
    x
}

pub static SCALE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[task]
pub fn set_scale(factor: u64) {
    if factor == 0 {
        panic!("a scale of 0 is refused");
    }
    SCALE.store(factor, std::sync::atomic::Ordering::Relaxed);
}

#[task]
pub fn scaled(x: u64) -> u64 {
    x * SCALE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Leaks `mib` MiB (touched, so it is resident) and returns the worker's pid.
#[task]
pub fn leak_mib(mib: usize) -> i32 {
    let v = vec![1u8; mib << 20];
    std::mem::forget(std::hint::black_box(v));
    std::process::id() as i32
}

/// Allocates (and touches) 16 MiB at a time without bound.
#[task]
pub fn allocate_forever() -> usize {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// Aborts the worker when the buffer starts with `0xAB`; otherwise [`checksum`].
#[task]
pub fn checksum_or_abort(bytes: Vec<u8>) -> u64 {
    if bytes.first() == Some(&0xAB) {
        std::process::abort();
    }
    checksum(bytes)
}

/// Aborts the worker when the buffer starts with `0xAB`; otherwise its length and last byte.
/// Quick, so the pool queues several of these at each worker.
#[task]
pub fn len_or_abort(bytes: Vec<u8>) -> (usize, Option<u8>) {
    if bytes.first() == Some(&0xAB) {
        std::process::abort();
    }
    (bytes.len(), bytes.last().copied())
}

/// Aborts its worker on item 4321 (a poison item); doubles every other.
#[task]
pub fn poison(x: u64) -> u64 {
    if x == 4321 {
        std::process::abort();
    }
    x * 2
}
