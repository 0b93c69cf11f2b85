//! Every way a task can fail turns into an error on that task; the pool replaces dead workers
//! and keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pool_core::{Error, ExitCause, Pool, Task};
use pool_tests::{deadline, eventually, is_alive};

/// The pool serves a normal map of 10,000 items with the full number of workers.
fn assert_healthy(pool: &Pool) {
    let v = pool
        .map(square, 0..10_000)
        .expect("a normal map after the fault");
    assert_eq!(v[9_999], 9_999 * 9_999);
    assert!(
        eventually(10, || pool.worker_pids().len() == pool.processes()),
        "workers not back to full strength: {:?}",
        pool.worker_pids()
    );
}

#[test]
fn panics_are_errors_with_message_and_location() {
    deadline(30, "panics", || {
        let pool = pool(2);
        let pids = pool.worker_pids();
        match pool.apply(panics_on, (3, 3)) {
            Err(Error::Panicked {
                task,
                message,
                location,
            }) => {
                assert_eq!(task, panics_on::NAME);
                assert_eq!(message, "item 3 is bad");
                let location = location.expect("a location");
                assert!(location.contains("tests/src/tasks.rs:"), "{location}");
            }
            other => panic!("expected Panicked, got {other:?}"),
        }
        match pool.apply(panic_with, "a String payload".into()) {
            Err(Error::Panicked { message, .. }) => assert_eq!(message, "a String payload"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        let err = pool.apply(panics_on, (1, 1)).unwrap_err();
        assert!(err.to_string().contains("panicked at"), "{err}");
        // The workers lived on: same pids.
        for _ in 0..100 {
            assert!(pool.apply(panics_on, (2, 2)).is_err());
        }
        assert_eq!(pool.worker_pids(), pids);
        assert_healthy(&pool);
    });
}

fn expect_died(result: Result<impl std::fmt::Debug, Error>, task: &str) -> (i32, ExitCause) {
    match result {
        Err(Error::WorkerDied {
            task: t,
            pid,
            cause,
            attempts: 1,
        }) => {
            assert_eq!(t, task);
            (pid, cause)
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn abort_segfault_and_exit_are_worker_deaths() {
    deadline(60, "crashes", || {
        let pool = pool(2);
        for round in 0..5 {
            let before = pool.worker_pids();
            let (pid, cause) = expect_died(pool.apply(abort_now, ()), abort_now::NAME);
            assert_eq!(cause, ExitCause::Signal(libc::SIGABRT), "round {round}");
            assert!(before.contains(&pid));
            let (_, cause) = expect_died(pool.apply(segfault, ()), segfault::NAME);
            assert_eq!(cause, ExitCause::Signal(libc::SIGSEGV));
            let (_, cause) = expect_died(pool.apply(exit_with, 7), exit_with::NAME);
            assert_eq!(cause, ExitCause::Exited(7));
            let (_, cause) = expect_died(pool.apply(exit_with, 0), exit_with::NAME);
            assert_eq!(cause, ExitCause::Exited(0));
            assert!(!is_alive(pid));
            assert_healthy(&pool);
        }
        let err = pool.apply(abort_now, ()).unwrap_err().to_string();
        assert!(err.contains("SIGABRT"), "{err}");
    });
}

#[test]
fn death_is_noticed_even_when_a_grandchild_holds_the_socket() {
    deadline(30, "grandchild", || {
        let pool = pool(1);
        let started = Instant::now();
        let (_, cause) = expect_died(pool.apply(fork_then_abort, 20), fork_then_abort::NAME);
        assert_eq!(cause, ExitCause::Signal(libc::SIGABRT));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}: the pool waited for the grandchild",
            started.elapsed()
        );
        assert_healthy(&pool);
    });
}

#[test]
fn crashes_in_a_map_fail_the_map_and_the_next_map_works() {
    deadline(60, "crash in map", || {
        let pool = pool(2);
        let r = pool.map_chunked(exit_with, vec![0, 0, 0, 0], 1);
        assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
        assert_healthy(&pool);
        // With imap each chunk fails on its own; the others succeed.
        let out: Vec<_> = pool.imap(square, 0..1000).collect();
        assert!(out.iter().all(Result::is_ok));
    });
}

#[test]
fn worker_sigkilled_from_outside_mid_map() {
    deadline(120, "sigkill mid-map", || {
        let pool = std::sync::Arc::new(pool(2));
        for round in 0..10 {
            let p = std::sync::Arc::clone(&pool);
            let started = Instant::now();
            // About 2,000 × 2 ms over 2 workers: ~2 s of work in 16 chunks per worker.
            let mapper = std::thread::spawn(move || p.map_chunked(slow_square, 0..2_000, 25));
            std::thread::sleep(Duration::from_millis(100 + 37 * round));
            let victim = pool.worker_pids()[round as usize % 2];
            kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            let result = mapper.join().unwrap();
            assert!(started.elapsed() < Duration::from_secs(20));
            match result {
                Ok(v) => assert_eq!(v.len(), 2_000),
                Err(Error::WorkerDied { pid, cause, .. }) => {
                    assert_eq!(pid, victim);
                    assert_eq!(cause, ExitCause::Signal(libc::SIGKILL));
                }
                Err(other) => panic!("unexpected error {other:?}"),
            }
            assert!(!pool.worker_pids().contains(&victim));
            assert_healthy(&pool);
        }
    });
}

#[test]
fn idle_worker_killed_from_outside_is_replaced_and_no_task_is_blamed() {
    deadline(60, "idle kill", || {
        let pool = pool(2);
        for _ in 0..5 {
            let victim = pool.worker_pids()[0];
            kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            assert!(eventually(5, || !is_alive(victim)));
            // Work sent to the dead worker goes to its replacement.
            let v = pool.map_chunked(square, 0..1000, 1).unwrap();
            assert_eq!(v.len(), 1000);
        }
        assert_healthy(&pool);
    });
}

#[test]
fn imap_reports_each_crashed_item_and_goes_on() {
    deadline(60, "imap crash", || {
        let pool = pool(2);
        let codes = vec![1, 0, 1, 0, 1, 0];
        let items: Vec<_> = pool.imap(exit_with, codes.clone()).collect();
        assert_eq!(items.len(), codes.len());
        for r in items {
            assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
        }
        let ok: Vec<_> = pool.imap(square, 0..100).map(Result::unwrap).collect();
        assert_eq!(ok[10], 100);
    });
}

#[test]
fn many_threads_with_crashes_never_hang() {
    deadline(120, "threads and crashes", || {
        let pool = std::sync::Arc::new(pool(2));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = std::sync::Arc::clone(&pool);
                std::thread::spawn(move || {
                    for i in 0..30u64 {
                        if (i + t) % 7 == 0 {
                            assert!(pool.apply(abort_now, ()).is_err());
                        } else {
                            assert_eq!(pool.apply(square, i).unwrap(), i * i);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_healthy(&pool);
    });
}

#[test]
fn worker_killed_while_big_frames_stream_both_ways() {
    deadline(120, "kill during streaming", || {
        let pool = std::sync::Arc::new(pool(2));
        for round in 0..6u64 {
            let p = std::sync::Arc::clone(&pool);
            let blobs: Vec<Vec<u8>> = (0..12).map(|i| vec![i as u8; 6 << 20]).collect();
            let mapper = std::thread::spawn(move || p.map_chunked(echo_bytes, blobs, 1));
            std::thread::sleep(Duration::from_millis(5 + 7 * round));
            let victim = pool.worker_pids()[round as usize % 2];
            kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            match mapper.join().unwrap() {
                Ok(v) => {
                    assert_eq!(v.len(), 12);
                    for (i, b) in v.iter().enumerate() {
                        assert!(b.len() == 6 << 20 && b.iter().all(|&x| x == i as u8));
                    }
                }
                Err(Error::WorkerDied { pid, .. }) => assert_eq!(pid, victim),
                Err(other) => panic!("unexpected {other:?}"),
            }
            assert_healthy(&pool);
        }
    });
}
