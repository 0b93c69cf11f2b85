//! Awaiting pool work from async code: an `AsyncResult` is a `Future`, with no runtime of its
//! own, so it works under tokio (or any other executor).
//!
//! Run it with `cargo run -p pool-examples --bin async_tokio`.

use std::sync::Arc;

use pool_core::{task, Pool};

/// A CPU-heavy function that should not run on the async runtime's threads.
#[task]
fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), pool_core::Error> {
    // Build the pool before the runtime starts its threads: workers are forked from this
    // process, and forking a single-threaded program is the safe way (see the README).
    let pool = Arc::new(Pool::builder().processes(2).build()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        // Many requests at once, each awaiting its own result.
        let handles: Vec<_> = (1..=8u64)
            .map(|i| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let n = 1_000_000 + i;
                    let steps = pool.apply_async(collatz_steps, n).await?;
                    Ok::<_, pool_core::Error>((n, steps))
                })
            })
            .collect();
        for handle in handles {
            let (n, steps) = handle.await.expect("task joined")?;
            println!("collatz_steps({n}) = {steps}");
        }
        // A whole map, awaited.
        let all = pool.map_async(collatz_steps, 1..=10_000).await?;
        let (longest, at) = all
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i + 1))
            .max()
            .expect("non-empty");
        println!("longest chain below 10,001: {longest} steps, starting at {at}");
        Ok::<_, pool_core::Error>(())
    })?;
    pool.close();
    pool.join()
}
