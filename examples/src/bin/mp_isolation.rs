//! Data isolation: each child process gets its own copy of the program's memory. Ten children
//! each decrement a global counter; the parent's counter is still 100 afterwards.

use std::sync::atomic::{AtomicI64, Ordering};

use pool_core::{task, Process};

static COUNTER: AtomicI64 = AtomicI64::new(100);

#[task]
fn decrement(child: u32) {
    let now = COUNTER.fetch_sub(1, Ordering::SeqCst) - 1;
    println!("child {child}: counter = {now}");
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let children: Vec<_> = (1..=10)
        .map(|i| Process::new(decrement, i).start())
        .collect::<Result<_, _>>()?;
    for child in &children {
        child.join();
    }
    println!(
        "parent: counter = {} (each child changed its own copy)",
        COUNTER.load(Ordering::SeqCst)
    );
    Ok(())
}
