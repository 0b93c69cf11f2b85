//! A shared `Value` updated by one process and watched by another.

use std::time::Duration;

use pool_core::{task, Process, Value};

#[task]
fn updater(v: Value<i32>) {
    for i in 1..=5 {
        std::thread::sleep(Duration::from_millis(50));
        v.set(i);
    }
}

#[task]
fn watcher(v: Value<i32>) {
    let mut last = 0;
    while last < 5 {
        let now = v.get();
        if now != last {
            println!("watcher: the value is now {now}");
            last = now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let v = Value::new(0i32)?;
    let w = Process::new(watcher, v.clone()).start()?;
    let u = Process::new(updater, v.clone()).start()?;
    u.join();
    w.join();
    println!("parent: final value {}", v.get());
    Ok(())
}
