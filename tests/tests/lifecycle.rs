//! close / join / terminate / drop semantics.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pool_core::Error;
use pool_tests::{deadline, is_alive};

#[test]
fn close_lets_queued_work_finish_and_refuses_new_work() {
    deadline(30, "close", || {
        let pool = pool(2);
        let pids = pool.worker_pids();
        let queued: Vec<_> = (0..20).map(|_| pool.apply_async(sleep_ms, 20)).collect();
        let map = pool.map_async(square, 0..10_000);
        pool.close();
        // New work is refused, clearly and at once.
        assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
        assert!(matches!(pool.map(square, 0..10), Err(Error::Closed)));
        let r: Vec<_> = pool.imap(square, 0..3).collect();
        assert!(r.iter().all(|x| matches!(x, Err(Error::Closed))), "{r:?}");
        // Queued work still finishes.
        pool.join().unwrap();
        for q in &queued {
            assert_eq!(q.get().unwrap(), 20);
        }
        assert_eq!(map.get().unwrap().len(), 10_000);
        // The workers have exited and were reaped.
        assert!(pool.worker_pids().is_empty());
        for pid in pids {
            assert!(!is_alive(pid), "worker {pid} still alive after join");
        }
        // join and close again are harmless.
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn join_before_close_is_an_error() {
    deadline(30, "join early", || {
        let pool = pool(1);
        assert!(matches!(pool.join(), Err(Error::NotClosed)));
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
    });
}

#[test]
fn terminate_resolves_pending_work_and_kills_workers_at_once() {
    deadline(30, "terminate", || {
        let pool = pool(2);
        let pids = pool.worker_pids();
        let stuck: Vec<_> = (0..2)
            .map(|_| pool.apply_async(sleep_forever, ()))
            .collect();
        let queued: Vec<_> = (0..50).map(|i| pool.apply_async(square, i)).collect();
        let map = pool.map_async(sleep_ms, vec![10; 100]);
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        pool.terminate();
        pool.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        for r in &queued {
            match r.get() {
                Err(Error::Terminated) | Ok(_) => {}
                other => panic!("expected Terminated, got {other:?}"),
            }
        }
        for r in &stuck {
            assert!(matches!(r.get(), Err(Error::Terminated)));
        }
        assert!(matches!(map.get(), Err(Error::Terminated)));
        for pid in pids {
            assert!(!is_alive(pid), "worker {pid} survived terminate");
        }
        assert!(matches!(pool.apply(square, 1), Err(Error::Terminated)));
    });
}

#[test]
fn drop_terminates_within_a_second_even_with_stuck_tasks() {
    deadline(30, "drop", || {
        let pool = pool(2);
        let pids = pool.worker_pids();
        let stuck = pool.apply_async(sleep_forever, ());
        let queued = pool.apply_async(square, 5);
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        drop(pool);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(stuck.get(), Err(Error::Terminated)));
        assert!(matches!(queued.get(), Ok(25) | Err(Error::Terminated)));
        for pid in pids {
            assert!(!is_alive(pid), "worker {pid} survived drop");
        }
    });
}

#[test]
fn pool_can_be_closed_from_another_thread_while_mapping() {
    deadline(30, "close race", || {
        let pool = std::sync::Arc::new(pool(2));
        let p = std::sync::Arc::clone(&pool);
        let mapper = std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            for _ in 0..200 {
                outcomes.push(p.map(square, 0..100).map(|v| v.len()));
            }
            outcomes
        });
        std::thread::sleep(Duration::from_millis(20));
        pool.close();
        let outcomes = mapper.join().unwrap();
        // Every call either completed in full or was refused; none hung or lost items.
        for o in outcomes {
            assert!(matches!(o, Ok(100) | Err(Error::Closed)), "{o:?}");
        }
        pool.join().unwrap();
    });
}
