//! The three start methods side by side: how long each takes from `Pool::builder().build()` to
//! the first result, and to `join()` of the idle pool, with the median of several runs.
//!
//! ```text
//! cargo run --release -p pool-examples --bin start_methods [-- WORKERS [RUNS]]
//! ```
//!
//! `#[pool_core::main]` matters here: it starts the fork server (for `ForkServer`) and lets a
//! spawned worker (for `Spawn`) attach instead of running this `main`.

use std::time::{Duration, Instant};

use pool_core::{task, Pool, StartMethod};

#[task]
fn square(x: u64) -> u64 {
    x * x
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    println!(
        "{workers} workers, median of {runs} runs; default start method here: {:?}",
        StartMethod::default()
    );
    println!(
        "{:<12} {:>20} {:>16}",
        "method", "first result (ms)", "join idle (ms)"
    );
    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let (mut first, mut join) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let t = Instant::now();
            let pool = Pool::builder()
                .processes(workers)
                .start_method(method)
                .build()?;
            assert_eq!(pool.apply(square, i as u64)?, (i * i) as u64);
            first.push(t.elapsed());
            pool.close();
            let t = Instant::now();
            pool.join()?;
            join.push(t.elapsed());
        }
        println!(
            "{:<12} {:>20.2} {:>16.2}",
            format!("{method:?}"),
            median(first),
            median(join)
        );
    }
    Ok(())
}
