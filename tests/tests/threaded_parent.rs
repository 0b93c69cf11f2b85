//! Pools created and dropped while 8 other threads allocate, print and hold mutexes: forking a
//! busy multi-threaded program must not hang the pool (the worker takes no lock those threads
//! could hold). Its own binary: the noisy threads would slow other tests.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pool_core::Pool;
use pool_tests::deadline;

#[test]
fn two_hundred_pools_beside_eight_busy_threads() {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(Vec::<u64>::new()));
    let noise: Vec<_> = (0..8u64)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut sink = std::io::sink();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<u64> = (0..(i % 512)).collect(); // allocate
                    let mut guard = shared.lock().unwrap(); // hold a mutex
                    guard.push(v.len() as u64);
                    if guard.len() > 10_000 {
                        guard.clear();
                    }
                    drop(guard);
                    if i % 64 == t {
                        // print (through the real stdout lock, as a logger would)
                        let _ = write!(std::io::stdout().lock(), "");
                        let _ = writeln!(sink, "{i}");
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    deadline(240, "200 pools beside busy threads", || {
        for i in 0..200u64 {
            let pool = Pool::builder().processes(2).build().unwrap();
            assert_eq!(pool.apply(square, i).unwrap(), i * i);
            if i % 2 == 0 {
                pool.close();
                pool.join().unwrap();
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    for t in noise {
        t.join().unwrap();
    }
    let took = started.elapsed();
    eprintln!("200 pools beside 8 busy threads: {took:?}");
    assert!(took < Duration::from_secs(120), "{took:?}");
}
