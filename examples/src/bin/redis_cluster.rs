//! The same `#[task]` functions on many machines, through Redis: one binary that is both the
//! client and, with the `worker` subcommand, the worker.
//!
//! ```text
//! redis_cluster worker URL QUEUE [PROCESSES]   serve QUEUE until SIGTERM or Ctrl-C, which drain it
//!                                              (a second one stops it at once)
//! redis_cluster submit URL QUEUE [N [CHUNK]]   map `collatz_steps` over 1..=N, print a summary
//! redis_cluster status URL QUEUE               jobs waiting and in progress, live workers
//! redis_cluster demo                           all of it on this machine: its own
//!                                              redis-server, two workers, a map, the status
//! ```
//!
//! On a real cluster, start `redis_cluster worker redis://:PASSWORD@redis-host:6379/ jobs` on
//! every worker machine (under systemd, say), and run the client anywhere that reaches Redis.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pool_core::task;
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

/// The host and pid of the worker process that ran it.
#[task]
fn where_am_i() -> String {
    format!("pid {}", std::process::id())
}

#[pool_core::main]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let result = match (arg(0), arg(1), arg(2)) {
        (Some("worker"), Some(url), Some(queue)) => {
            let processes = arg(3).and_then(|p| p.parse().ok()).unwrap_or(2);
            worker(url, queue, processes)
        }
        (Some("submit"), Some(url), Some(queue)) => {
            let n = arg(3).and_then(|p| p.parse().ok()).unwrap_or(100_000);
            let chunk = arg(4).and_then(|p| p.parse().ok());
            submit(url, queue, n, chunk)
        }
        (Some("status"), Some(url), Some(queue)) => status(url, queue),
        (Some("demo"), _, _) => demo(),
        _ => {
            eprintln!(
                "usage: redis_cluster (worker URL QUEUE [PROCESSES] | submit URL QUEUE [N [CHUNK]] \
                 | status URL QUEUE | demo)"
            );
            std::process::exit(2);
        }
    };
    if let Err(err) = result {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

fn worker(url: &str, queue: &str, processes: usize) -> Result<(), pool_redis::Error> {
    eprintln!(
        "worker: serving queue {queue:?} on {} with {processes} processes",
        pool_redis::redact_url(url) // never print a password
    );
    Worker::new(url, queue)?.processes(processes).run()
}

fn submit(url: &str, queue: &str, n: u64, chunk: Option<usize>) -> Result<(), pool_redis::Error> {
    let pool = RedisPool::connect(url, queue)?;
    let t = Instant::now();
    let steps = match chunk {
        Some(c) => pool.map_chunked(collatz_steps, 1..=n, c)?,
        None => pool.map(collatz_steps, 1..=n)?,
    };
    let took = t.elapsed();
    let (best, most) = steps
        .iter()
        .enumerate()
        .max_by_key(|&(_, s)| *s)
        .map(|(i, s)| (i as u64 + 1, *s))
        .unwrap_or((0, 0));
    println!(
        "{n} tasks in {took:.2?} ({:.0} tasks/s); the longest Collatz sequence below {} starts at {best} ({most} steps)",
        n as f64 / took.as_secs_f64(),
        n + 1
    );
    let mut seen: Vec<String> = pool.map_chunked(where_am_i, vec![(); 64], 1)?;
    seen.sort();
    seen.dedup();
    println!("served by {} worker processes", seen.len());
    Ok(())
}

fn status(url: &str, queue: &str) -> Result<(), pool_redis::Error> {
    let s = pool_redis::status(url, queue)?;
    println!(
        "queue {:?}: {} waiting, {} in progress",
        s.queue, s.waiting, s.pending
    );
    for w in &s.workers {
        println!(
            "  {} ({} processes, pid {} on {}): last seen {:.1?} ago{}",
            w.name,
            w.processes,
            w.pid,
            w.host,
            w.last_seen,
            if w.alive { "" } else { " — silent" }
        );
    }
    Ok(())
}

/// Everything on this machine: a private redis-server, two worker processes (this binary with
/// `worker`), a map through them, the status, then everything stopped.
fn demo() -> Result<(), pool_redis::Error> {
    let server = pool_testkit::RedisServer::try_start().map_err(pool_redis::Error::Config)?;
    let exe = std::env::current_exe().map_err(|e| pool_redis::Error::Config(e.to_string()))?;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let child = Command::new(&exe)
            .args(["worker", &server.url(), "demo", "1"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| pool_redis::Error::Config(e.to_string()))?;
        workers.push(child);
    }
    // Wait for both workers' first heartbeat.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool_redis::status(&server.url(), "demo")?
        .workers
        .iter()
        .filter(|w| w.alive)
        .count()
        < 2
    {
        if Instant::now() > deadline {
            return Err(pool_redis::Error::Config(
                "the workers did not start".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome =
        submit(&server.url(), "demo", 100_000, None).and_then(|()| status(&server.url(), "demo"));
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    outcome
}
