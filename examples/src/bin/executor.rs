//! One function, two engines: `work` is written once against `pool_core::Executor` and runs on
//! whichever engine the command line names.
//!
//! ```text
//! executor local               a local process pool (one worker per CPU)
//! executor redis://HOST/ [Q]   Redis-fed workers serving queue Q (default "executor"); start
//!                              them with `executor worker redis://HOST/ [Q]` on any machine
//! executor demo                both, on this machine: its own redis-server and a worker
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pool_core::{task, Error, Executor, Pool};
use pool_redis::{RedisPool, Worker};

/// How many steps the Collatz sequence from `n` takes to reach 1.
#[task]
fn collatz_steps(n: u64) -> u32 {
    let (mut n, mut steps) = (n.max(1), 0);
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// The parallel part of a program, written once: it neither knows nor cares where it runs.
fn work<E: Executor>(engine: &E) -> Result<(u32, u64, u32), Error> {
    let n = 100_000u64;
    // A blocking map: every result, in order.
    let steps = engine.map(collatz_steps, 1..=n)?;
    let longest = *steps.iter().max().unwrap_or(&0);
    // A lazy, ordered imap with chunks of 100.
    let total: u64 = engine
        .imap_chunked(collatz_steps, 1..=1_000u64, 100)
        .map(|r| r.map(u64::from))
        .sum::<Result<u64, Error>>()?;
    // A result handle: the same `AsyncResult` on both engines (also a `Future`).
    let one = engine.apply_async(collatz_steps, 27);
    let _ = one.wait_timeout(Duration::from_secs(60));
    assert_eq!(one.successful(), Some(true));
    Ok((longest, total, one.get()?))
}

fn report(engine: &str, outcome: Result<(u32, u64, u32), Error>, took: Duration) {
    match outcome {
        Ok((longest, total, of_27)) => println!(
            "{engine:>6}: longest sequence below 100,001 takes {longest} steps; \
             steps of 1..=1000 sum to {total}; 27 takes {of_27} ({took:.2?})"
        ),
        Err(err) => println!("{engine:>6}: failed: {err}"),
    }
}

fn run_local() -> Result<(), Error> {
    let started = Instant::now();
    let pool = Pool::new()?;
    report("local", work(&pool), started.elapsed());
    Ok(())
}

fn run_redis(url: &str, queue: &str) -> Result<(), Error> {
    let started = Instant::now();
    let pool = RedisPool::connect(url, queue)?;
    report("redis", work(&pool), started.elapsed());
    Ok(())
}

/// Serves `queue` until stopped.
fn worker(url: &str, queue: &str) -> Result<(), Error> {
    Worker::new(url, queue)?.processes(2).run()?;
    Ok(())
}

/// Both engines on this machine: a private redis-server and one worker process.
fn demo() -> Result<(), Error> {
    run_local()?;
    let server = pool_testkit::RedisServer::try_start().map_err(Error::Config)?;
    let exe = std::env::current_exe().map_err(|e| Error::Config(e.to_string()))?;
    let mut child = Command::new(exe)
        .args(["worker", &server.url(), "executor"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| Error::Config(e.to_string()))?;
    // Wait for the worker's first heartbeat, so that `map` sizes its chunks for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool_redis::status(&server.url(), "executor")
        .map(|s| s.workers.iter().all(|w| !w.alive))
        .unwrap_or(true)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = run_redis(&server.url(), "executor");
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

#[pool_core::main]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let outcome = match (arg(0), arg(1)) {
        (Some("local"), _) => run_local(),
        (Some("demo"), _) => demo(),
        (Some("worker"), Some(url)) => worker(url, arg(2).unwrap_or("executor")),
        (Some(url), queue) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            run_redis(url, queue.unwrap_or("executor"))
        }
        _ => {
            eprintln!("usage: executor (local | redis://HOST[:PORT]/ [QUEUE] | worker URL [QUEUE] | demo)");
            std::process::exit(2);
        }
    };
    if let Err(err) = outcome {
        eprintln!("executor: {err}");
        std::process::exit(1);
    }
}
