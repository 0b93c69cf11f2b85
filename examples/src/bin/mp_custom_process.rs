//! A process type of its own (the equivalent of subclassing Python's `Process` and overriding
//! `run`): a clock that prints the time five times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pool_core::{Process, Runnable};

struct Clock {
    interval: Duration,
    times: u32,
}

impl Runnable for Clock {
    fn run(&mut self) {
        for _ in 0..self.times {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
            println!("The time is {h:02}:{m:02}:{s:02} UTC");
            std::thread::sleep(self.interval);
        }
    }
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let clock = Clock {
        interval: Duration::from_millis(100),
        times: 5,
    };
    let p = Process::from_runnable(clock).name("clock").start()?;
    p.join();
    println!("{} exited with code {:?}", p.name(), p.exitcode());
    Ok(())
}
