//! A parent process for tests that need a program of their own (its `main` carries
//! `#[pool_core::main]`, so the fork server runs and spawned workers attach):
//!
//! - `METHOD-idle` / `METHOD-busy` (METHOD: `fork`, `forkserver`, `spawn`): starts a pool,
//!   prints its worker pids on one line, then waits forever (with every worker busy for
//!   `busy`), for tests that kill the parent.
//! - `checks METHOD`: exercises a pool with that start method and prints what it saw, one
//!   `key=value` per line.
//! - `daemon`: starts a daemon and a non-daemon `Process`, prints their pids, waits.
//! - `threads METHOD`: creates and drops 200 pools while 8 threads allocate, print and hold
//!   mutexes; prints `pools=200` and the time taken.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{task, Error, Pool, StartMethod};
use pool_tests::start_method;
use pool_tests::tasks::{sleep_forever, square};

#[task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
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

/// Puts `x * x` on `q`: a queue handle received as a task argument.
#[task]
fn put_square(q: pool_core::Queue<u64>, x: u64) {
    q.put(x * x).unwrap();
}

/// How many threads this worker runs (from `/proc/self/status`).
#[task]
fn thread_count() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[pool_core::main]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["checks", m] => checks(start_method(m)),
        ["threads", m] => busy_threads(start_method(m)),
        ["daemon"] => daemon_and_not(),
        [mode] => {
            let (m, state) = mode.split_once('-').expect("METHOD-idle or METHOD-busy");
            serve_until_killed(start_method(m), state == "busy")
        }
        _ => panic!(
            "usage: pool-helper (METHOD-idle | METHOD-busy | checks METHOD | threads METHOD)"
        ),
    }
}

/// Starts a daemon and a non-daemon `Process`, prints their pids, and waits to be killed.
fn daemon_and_not() {
    let daemon = pool_core::Process::new(sleep_forever, ())
        .daemon(true)
        .start()
        .expect("daemon starts");
    let other = pool_core::Process::new(sleep_forever, ())
        .start()
        .expect("process starts");
    println!("{} {}", daemon.pid(), other.pid());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn serve_until_killed(method: StartMethod, busy: bool) {
    let pool = Pool::builder()
        .processes(3)
        .start_method(method)
        .build()
        .expect("pool starts");
    let _pending: Vec<_> = if busy {
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

/// The parent of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    pool_tests::stat(pid as i32).map(|s| s.ppid as u32)
}

/// Prints one `key=value` line per check, for the tests to read.
fn checks(method: StartMethod) {
    println!("default={:?}", StartMethod::default());
    let t = Instant::now();
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .expect("pool starts");
    pool.apply(square, 1).expect("first result");
    println!("start_ms={:.2}", t.elapsed().as_secs_f64() * 1e3);
    let v = pool.map(square, 0..10_000).expect("map");
    println!("map_len={} map_last={}", v.len(), v[9_999]);
    let me = std::process::id();
    let (pid, ppid) = pool.apply(whoami, ()).expect("whoami");
    let parent = match (ppid == me, parent_of(ppid) == Some(me)) {
        (true, _) => "me",
        (false, true) => "my-child",
        _ => "other",
    };
    println!("worker_is_other={} worker_parent={parent}", pid != me);
    // A thread running in the program: a worker runs one thread, whatever the program runs.
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    println!(
        "worker_threads={}",
        pool.apply(thread_count, ()).expect("threads")
    );
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
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
    match pool.apply_timeout(nap, 10_000, Duration::from_millis(100)) {
        Err(Error::Timeout { .. }) => println!("timeout=ok"),
        other => println!("timeout=unexpected {other:?}"),
    }
    println!(
        "after_timeout={}",
        pool.apply(square, 12).expect("after timeout")
    );
    // A queue created here, handed to workers that were not forked from this process (fork
    // server, spawn): they open it through this process's descriptor.
    let q = pool_core::Queue::<u64>::new().expect("queue");
    pool.map(put_square, (0..10u64).map(|x| (q.clone(), x)))
        .expect("queue through workers");
    let total: u64 = (0..10).map(|_| q.get().expect("an item")).sum();
    println!("queue_from_workers={total}");
    println!("workers={}", pool.worker_pids().len());
    pool.close();
    pool.join().expect("join");
    println!("joined=true");
    // Every worker reaped: none is left, not even as a zombie, under this process or another.
    let mine: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p == pid || parent_of(p) == Some(pid))
        .map(|p| p.to_string())
        .collect();
    println!("left_over=[{}]", mine.join(","));
}

/// 200 pools created and dropped beside 8 threads that allocate, print and hold mutexes.
fn busy_threads(method: StartMethod) {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(Vec::<u64>::new()));
    let noise: Vec<_> = (0..8u64)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<u64> = (0..(i % 512)).collect(); // allocate
                    let mut guard = shared.lock().unwrap(); // hold a mutex
                    guard.push(v.len() as u64);
                    if guard.len() > 10_000 {
                        guard.clear();
                    }
                    drop(guard);
                    if i % 64 == t {
                        // print, through the real stdout lock, as a logger would
                        let _ = write!(std::io::stdout().lock(), "");
                        let _ = writeln!(std::io::sink(), "{t}:{i}");
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..200u64 {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .expect("pool starts");
        assert_eq!(pool.apply(square, i).expect("apply"), i * i);
        if i % 2 == 0 {
            pool.close();
            pool.join().expect("join");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in noise {
        t.join().unwrap();
    }
    println!("pools=200 took_ms={}", started.elapsed().as_millis());
}
