//! A parent process for tests that need to kill the parent: starts a pool, prints its worker
//! pids on one line, then waits forever (idle, or with every worker busy when given `busy`).

use std::io::Write;
use std::time::Duration;

use pool_core::{task, Pool};

#[task]
fn sleep_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let busy = std::env::args().any(|a| a == "busy");
    let pool = Pool::builder().processes(3).build().expect("pool starts");
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
