//! A parent process for tests that need a program of their own:
//!
//! - `idle` / `busy`: starts a pool, prints its worker pids on one line, then waits forever
//!   (with every worker busy for `busy`), for tests that kill the parent.
//! - `spawn-busy`: the same with the spawn start method.
//! - `spawn`: exercises a pool with the spawn start method and prints what it saw.

use std::io::Write;
use std::time::Duration;

use pool_core::{task, Error, Pool, StartMethod};

#[task]
fn sleep_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

#[task]
fn whoami() -> (u32, u32) {
    (std::process::id(), std::os::unix::process::parent_id())
}

#[task]
fn boom(x: u64) -> u64 {
    if x == 7 {
        panic!("seven");
    }
    std::process::abort()
}

#[pool_core::main]
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "spawn" {
        return spawn_checks();
    }
    let method = if mode.starts_with("spawn") {
        StartMethod::Spawn
    } else {
        StartMethod::Fork
    };
    let pool = Pool::builder()
        .processes(3)
        .start_method(method)
        .build()
        .expect("pool starts");
    let _pending: Vec<_> = if mode.ends_with("busy") {
        (0..3)
            .map(|_| pool.apply_async(sleep_forever, ()))
            .collect()
    } else {
        Vec::new()
    };
    let pids: Vec<String> = pool.worker_pids().iter().map(|p| p.to_string()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", pids.join(" ")).unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Prints one `key=value` line per check, for the spawn tests to read.
fn spawn_checks() {
    for method in [StartMethod::Fork, StartMethod::Spawn] {
        let t = std::time::Instant::now();
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .expect("pool starts");
        pool.apply(square, 1).expect("first result");
        println!("start_{method:?}_ms={:.2}", t.elapsed().as_secs_f64() * 1e3);
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::Spawn)
        .build()
        .expect("spawn pool starts");
    let v = pool.map(square, 0..10_000).expect("map");
    println!("map_len={} map_last={}", v.len(), v[9_999]);
    let (pid, ppid) = pool.apply(whoami, ()).expect("whoami");
    println!(
        "worker_is_other={} worker_parent_is_me={}",
        pid != std::process::id(),
        ppid == std::process::id()
    );
    match pool.apply(boom, 7) {
        Err(Error::Panicked { message, .. }) => println!("panic={message}"),
        other => println!("panic=unexpected {other:?}"),
    }
    match pool.apply(boom, 1) {
        Err(Error::WorkerDied { cause, .. }) => println!("died={cause}"),
        other => println!("died=unexpected {other:?}"),
    }
    let after = pool.map(square, 0..100).expect("map after a death");
    println!("after_death={}", after.len());
    println!("workers={}", pool.worker_pids().len());
    pool.close();
    pool.join().expect("join");
    println!("joined=true");
}
