//! Five processes each square a number and put the result on one shared queue.

use pool_core::{task, Process, Queue};

#[task]
fn square_into(q: Queue<(u64, u64)>, n: u64) {
    q.put((n, n * n)).unwrap();
}

#[pool_core::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let q = Queue::new()?;
    let workers: Vec<_> = (1..=5)
        .map(|n| Process::new(square_into, (q.clone(), n)).start())
        .collect::<Result<_, _>>()?;
    let mut results: Vec<(u64, u64)> = (0..5).map(|_| q.get()).collect::<Result<_, _>>()?;
    for w in &workers {
        w.join();
    }
    results.sort();
    for (n, sq) in results {
        println!("{n} squared is {sq}");
    }
    Ok(())
}
