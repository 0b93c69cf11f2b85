//! The quick start from the README: every call of the pool's API, with its results printed.
//!
//! Run it with `cargo run -p pool-examples --bin quickstart`.

use std::time::Instant;

use pool_core::{task, Pool};

/// Squares a number.
#[task]
fn square(x: u64) -> u64 {
    x * x
}

/// Squares a number, slowly enough (0.5 ms) for a progress bar to show.
#[task]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_micros(500));
    x * x
}

/// Adds two numbers.
#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() -> Result<(), pool_core::Error> {
    let started = Instant::now();
    let pool = Pool::new()?; // one worker per CPU (num_cpus), forked now
    println!(
        "Pool::new(): {} workers {:?} in {:.2?}",
        pool.processes(),
        pool.worker_pids(),
        started.elapsed()
    );
    let pool4 = Pool::builder().processes(4).build()?;
    println!(
        "Pool::builder().processes(4): {} workers",
        pool4.processes()
    );

    let v = pool.apply(square, 7)?;
    assert_eq!(v, 49);
    println!("apply(square, 7) = {v}");

    let v = pool.apply(add, (2, 3))?;
    assert_eq!(v, 5);
    println!("apply(add, (2, 3)) = {v}");

    let r = pool.apply_async(square, 9);
    let v = r.get()?;
    assert!(v == 81);
    println!(
        "apply_async(square, 9).get() = {v} (ready: {}, successful: {:?})",
        r.ready(),
        r.successful()
    );

    let t = Instant::now();
    let v: Vec<u64> = pool.map(square, 0..10_000)?;
    println!(
        "map(square, 0..10_000): {} results, v[9_999] = {}, in {:.2?}",
        v.len(),
        v[9_999],
        t.elapsed()
    );

    let mut sum = 0;
    for x in pool.imap(square, 0..100) {
        sum += x?;
    }
    println!("imap(square, 0..100): sum = {sum}");

    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..10)
        .collect::<Result<_, _>>()?;
    unordered.sort();
    println!("imap_unordered(square, 0..10), sorted: {unordered:?}");

    // With the `progress` feature: the same map with a progress bar (rate, ETA) on stderr.
    let v = pool.map_with_progress(slow_square, 0..2_000)?;
    println!(
        "map_with_progress(slow_square, 0..2_000): {} results",
        v.len()
    );

    assert_eq!(square(3), 9);
    println!("square(3) in-process = {}", square(3));

    pool.close(); // no new work; queued work still finishes
    pool.join()?; // waits for the workers to exit
    pool4.close();
    pool4.join()?;
    println!("closed and joined in {:.2?} in all", started.elapsed());
    Ok(())
}
