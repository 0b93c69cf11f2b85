//! Regression tests for the chaos issue: each defect a fault campaign found in the landed code,
//! reproduced as a user's program would meet it. Each test failed before its fix.
//!
//! Scenarios that depend on the start method, or change process-wide state (SIGCHLD, the fork
//! server), run in a program of their own (`chaos-helper`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pool_core::{task, Error, Pool, Process, Queue, Runnable};
use pool_tests::{deadline, eventually, is_alive};

/// Runs `chaos-helper ARGS` and returns its `key=value` lines.
fn helper(args: &[&str]) -> std::collections::HashMap<String, String> {
    pool_tests::run_helper(env!("CARGO_BIN_EXE_chaos-helper"), args, 290).values
}

// --- 1. nested pools (Fork used to segfault: stale entries in the inherited tables) ---------

#[task]
fn inner_sum(n: u64) -> Result<u64, String> {
    // A few pools in a row, of several sizes, each mapping: the address ranges freed in this
    // worker at its start get reused by the inner pools' regions and threads.
    let mut sum = 0;
    for processes in [3, 2, 4] {
        let pool = Pool::builder()
            .processes(processes)
            .build()
            .map_err(|e| e.to_string())?;
        let v = pool.map(square, 0..n).map_err(|e| e.to_string())?;
        sum = v.iter().sum();
    }
    Ok(sum)
}

#[test]
fn nested_pools_work_under_fork_in_process() {
    deadline(120, "nested pools (fork)", || {
        let pool = pool(4);
        let want: u64 = (0..1000u64).map(|x| x * x).sum();
        for round in 0..10 {
            let got = pool.apply(inner_sum, 1000);
            assert_eq!(got.ok(), Some(Ok(want)), "round {round}");
        }
        // Several inner pools at once, one per outer worker.
        let many = pool.map_chunked(inner_sum, vec![500u64; 6], 1).unwrap();
        assert!(many.iter().all(|r| r.is_ok()), "{many:?}");
        assert_eq!(pool.map(square, 0..100).unwrap()[99], 99 * 99);
    });
}

#[test]
fn nested_pools_work_under_every_start_method() {
    for method in ["fork", "forkserver", "spawn"] {
        let out = deadline(180, "nested pools", move || helper(&["nested", method]));
        assert_eq!(out["ok"], "20", "{method}: {out:?}");
        assert_eq!(out["bad"], "[]", "{method}");
        assert_eq!(out["outer_after"], (99 * 99).to_string(), "{method}");
    }
}

// --- 2. a pool used in a forked child fails at once ------------------------------------------

/// What a `Process` child reports back: the error of each call it tried, as text.
struct UsesParentPool {
    pool: Arc<Pool>,
    pending: pool_core::AsyncResult<u64>,
    out: Queue<Vec<String>>,
}

impl Runnable for UsesParentPool {
    fn run(&mut self) {
        let started = Instant::now();
        let mut seen = Vec::new();
        let wrong = |r: Result<String, Error>| match r {
            Err(Error::WrongProcess { owner, pid }) if owner != pid => "wrong".to_owned(),
            other => format!("{other:?}"),
        };
        seen.push(wrong(self.pool.apply(square, 3).map(|v| v.to_string())));
        seen.push(wrong(
            self.pool
                .apply_async(square, 3)
                .get()
                .map(|v| v.to_string()),
        ));
        seen.push(wrong(
            self.pool.map(square, 0..10).map(|v| v.len().to_string()),
        ));
        seen.push(wrong(
            self.pool
                .map_async(square, 0..10)
                .get()
                .map(|v| v.len().to_string()),
        ));
        seen.push(wrong(self.pending.get().map(|v| v.to_string())));
        let mut imap = self.pool.imap(square, 0..10);
        seen.push(wrong(imap.next().expect("one item").map(|v| v.to_string())));
        seen.push(format!("imap_then={:?}", imap.next().map(|r| r.is_ok())));
        seen.push(wrong(self.pool.join().map(|()| String::new())));
        self.pool.close(); // does nothing here
        self.pool.terminate(); // never kills the parent's workers from here
        seen.push(format!(
            "fast={}",
            started.elapsed() < Duration::from_secs(5)
        ));
        self.out.put(seen).unwrap();
        // Dropping the child's copy of the pool must leave the parent's alone.
    }
}

#[test]
fn a_pool_used_in_a_forked_child_fails_at_once_and_leaves_the_parent_alone() {
    deadline(60, "pool in a forked child", || {
        let pool = Arc::new(pool(2));
        let pids = pool.worker_pids();
        let out = Queue::new().unwrap();
        let pending = pool.apply_async(sleep_ms, 300);
        let child = Process::from_runnable(UsesParentPool {
            pool: Arc::clone(&pool),
            pending: pool.apply_async(sleep_ms, 2_000),
            out: out.clone(),
        })
        .start()
        .unwrap();
        let seen = out
            .get_timeout(Duration::from_secs(30))
            .expect("the child reports");
        child.join();
        assert_eq!(child.exitcode(), Some(0));
        let wrong = seen.iter().filter(|s| *s == "wrong").count();
        assert_eq!(wrong, 7, "{seen:?}");
        assert!(seen.contains(&"imap_then=None".to_owned()), "{seen:?}");
        assert!(seen.contains(&"fast=true".to_owned()), "{seen:?}");
        // The parent's pool is untouched: same workers, still serving, results still arrive.
        assert_eq!(pool.worker_pids(), pids);
        assert!(pids.iter().all(|&p| is_alive(p)));
        assert_eq!(pending.get().ok(), Some(300));
        assert_eq!(pool.map(square, 0..1000).unwrap()[999], 999 * 999);
        let err = Error::WrongProcess { owner: 1, pid: 2 }.to_string();
        assert!(err.contains("build a pool in this process"), "{err}");
    });
}

// --- 4. outside signals never break the pool for good ----------------------------------------

#[test]
fn sighup_to_idle_workers_never_breaks_the_pool() {
    deadline(120, "SIGHUP rounds", || {
        let pool = pool(2);
        for round in 0..12 {
            let pids = pool.worker_pids();
            for &p in &pids {
                // SAFETY: signals our own worker.
                unsafe { libc::kill(p, libc::SIGHUP) };
            }
            assert!(
                eventually(10, || {
                    let now = pool.worker_pids();
                    now.len() == 2 && now.iter().all(|p| !pids.contains(p))
                }),
                "round {round}: workers not replaced: {:?}",
                pool.worker_pids()
            );
            assert_eq!(
                pool.apply(square, round).unwrap(),
                round * round,
                "round {round}"
            );
        }
        let stats = pool.stats();
        assert_eq!(stats.degraded, None);
        assert!(stats.workers_replaced >= 24, "{stats:?}");
    });
}

static INIT_STARTED: AtomicU64 = AtomicU64::new(0);

#[task]
fn slow_init(ms: u64) {
    INIT_STARTED.fetch_add(1, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn sigkill_during_the_initializer_is_not_an_initializer_failure() {
    deadline(120, "SIGKILL during init", || {
        let pool = Pool::builder()
            .processes(2)
            .initializer(slow_init, 200)
            .build()
            .unwrap();
        for _ in 0..15 {
            // Kill whatever runs now: a new worker is in its initializer for 200 ms.
            for p in pool.worker_pids() {
                // SAFETY: signals our own worker.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            eventually(10, || pool.worker_pids().len() == 2),
            "the pool stayed short: {:?}",
            pool.stats()
        );
        assert_eq!(pool.map(square, 0..100).unwrap()[99], 99 * 99);
        assert_eq!(pool.stats().degraded, None);
    });
}

#[task]
fn init_unless_file_gone(path: String) {
    if std::path::Path::new(&path).exists() {
        panic!("the blocker {path} is still there");
    }
}

#[test]
fn a_broken_pool_heals_once_the_cause_has_passed() {
    deadline(120, "backoff and heal", || {
        let blocker = std::env::temp_dir().join(format!("pool-chaos-block-{}", std::process::id()));
        std::fs::write(&blocker, b"x").unwrap();
        let pool = Pool::builder()
            .processes(2)
            .initializer(init_unless_file_gone, blocker.display().to_string())
            .build()
            .unwrap();
        match pool.apply(square, 2) {
            Err(Error::PoolBroken(reason)) => {
                assert!(reason.contains("still there"), "{reason}");
                assert!(reason.contains("trying again"), "{reason}");
            }
            other => panic!("expected PoolBroken, got {other:?}"),
        }
        let degraded = pool.stats().degraded;
        assert!(
            degraded
                .as_deref()
                .is_some_and(|d| d.contains("still there")),
            "{degraded:?}"
        );
        // The cause passes: the pool tries again after its backoff and serves.
        std::fs::remove_file(&blocker).unwrap();
        let started = Instant::now();
        let healed = eventually(60, || pool.apply(square, 3).ok() == Some(9));
        assert!(healed, "not healed: {:?}", pool.stats());
        assert!(started.elapsed() < Duration::from_secs(40));
        assert!(eventually(10, || pool.worker_pids().len() == 2));
        assert_eq!(pool.stats().degraded, None);
    });
}

// --- 3. a task that closes every descriptor of its worker ------------------------------------

#[test]
fn tasks_that_close_all_descriptors_get_answers_under_every_start_method() {
    for method in ["fork", "forkserver", "spawn"] {
        let out = deadline(300, "close all fds", move || helper(&["closefds", method]));
        assert_eq!(out["ok"], "30", "{method}: {out:?}");
        assert_eq!(out["bad"], "[]", "{method}");
        assert_eq!(out["after"], (999 * 999).to_string(), "{method}");
        assert_eq!(out["workers"], "2", "{method}");
    }
}

// --- 5. an input iterator that lies about its length -----------------------------------------

/// Yields `yields` items while its size hint says exactly `says`.
struct Liar {
    says: usize,
    yields: u64,
    next: u64,
}

impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        (self.next < self.yields).then(|| {
            self.next += 1;
            self.next
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.says, Some(self.says))
    }
}

fn liar(says: usize, yields: u64) -> Liar {
    Liar {
        says,
        yields,
        next: 0,
    }
}

#[test]
fn a_lying_size_hint_fails_the_map_instead_of_dropping_items() {
    deadline(60, "lying size hints", || {
        let pool = pool(2);
        let bad = |r: Result<Vec<u64>, Error>| matches!(r, Err(Error::BadIterator(_)));
        for (says, yields) in [(3, 6), (6, 3), (0, 2), (1000, 1001), (1001, 1000)] {
            assert!(
                bad(pool.map(square, liar(says, yields))),
                "map {says}/{yields}"
            );
            assert!(
                bad(pool.map_chunked(square, liar(says, yields), 2)),
                "map_chunked"
            );
            assert!(
                bad(pool.map_async(square, liar(says, yields)).get()),
                "map_async"
            );
            assert!(bad(pool
                .map_async_chunked(square, liar(says, yields), 1)
                .get()));
            // imap does not rely on the hint at all: every item, in order.
            let all: Vec<u64> = pool
                .imap(square, liar(says, yields))
                .map(Result::unwrap)
                .collect();
            assert_eq!(all, (1..=yields).map(|x| x * x).collect::<Vec<_>>());
        }
        // Honest hints are untouched.
        assert_eq!(pool.map(square, liar(3, 3)).unwrap(), [1, 4, 9]);
        assert_eq!(
            pool.map_async(square, liar(0, 0)).get().unwrap(),
            Vec::<u64>::new()
        );
    });
}

// --- 8. SharedMemory of size 0 ----------------------------------------------------------------

#[test]
fn shared_memory_of_size_zero_is_an_error() {
    let name = format!("pool-chaos-zero-{}", std::process::id());
    assert!(matches!(
        pool_core::SharedMemory::create(&name, 0),
        Err(Error::Config(_))
    ));
    assert!(
        pool_core::SharedMemory::open(&name).is_err(),
        "nothing was created"
    );
    let one = pool_core::SharedMemory::create(&name, 1).unwrap();
    assert_eq!(one.len(), 1);
}

// --- 9. imap over an input that panics -------------------------------------------------------

#[test]
fn imap_yields_every_result_before_the_inputs_panic_then_the_panic() {
    deadline(60, "panicking input", || {
        let pool = pool(2);
        for chunksize in [1, 3, 7, 100] {
            for ordered in [true, false] {
                let input = (0..20u64).inspect(|&i| {
                    if i == 7 {
                        panic!("the input broke at 7");
                    }
                });
                let mut it = if ordered {
                    pool.imap_chunked(square, input, chunksize)
                } else {
                    pool.imap_unordered_chunked(square, input, chunksize)
                };
                let mut got: Vec<u64> = (0..7).map(|_| it.next().unwrap().unwrap()).collect();
                let then = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
                let payload = then.expect_err("the panic comes after the results");
                assert_eq!(
                    payload.downcast_ref::<&str>(),
                    Some(&"the input broke at 7")
                );
                got.sort();
                assert_eq!(got, [0, 1, 4, 9, 16, 25, 36], "chunks of {chunksize}");
            }
        }
        assert_eq!(pool.map(square, 0..10).unwrap()[9], 81);
    });
}

// --- 10. a dead fork server is replaced -------------------------------------------------------

#[test]
fn a_killed_fork_server_is_replaced_and_pools_go_on() {
    let out = deadline(120, "fork server killed", || helper(&["forkserver-killed"]));
    assert_eq!(out["server_was_child"], "true", "{out:?}");
    // At most the tasks running on the two workers the server took down with it fail, each
    // with WorkerDied, as when any worker is killed.
    let failed: u32 = out["failed_after_kill"].parse().unwrap();
    assert!(failed <= 2, "{out:?}");
    assert_eq!(out["failures_all_worker_died"], "true", "{out:?}");
    assert_eq!(out["pool_serves"], "true", "{out:?}");
    assert_eq!(out["fresh"], "Ok(Ok(9801))", "{out:?}");
    assert_eq!(out["new_server_differs"], "true", "{out:?}");
    assert_eq!(out["new_server_parent_is_program"], "true", "{out:?}");
}

// --- 6. exit codes when the program ignores SIGCHLD --------------------------------------------

/// Whether this kernel keeps a reaped child's exit status in its pidfd (Linux 6.15 and later).
fn kernel_keeps_exit_status() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 15)
}

#[test]
fn process_exit_codes_are_documented_values_when_sigchld_is_ignored() {
    let out = deadline(60, "SIGCHLD ignored", || helper(&["sigchld-ignored"]));
    let codes = if kernel_keeps_exit_status() {
        "[Some(0), Some(7), Some(-6)]"
    } else {
        "[Some(0), None, None]" // what the children could report themselves (see exitcode)
    };
    assert_eq!(out["codes"], codes, "{out:?}");
    assert_eq!(out["pool"], "Ok(9801)");
    assert_eq!(out["died"], "Err(true)");
    assert_eq!(out["pool_after"], "Ok(9801)");
}

// --- 7. pipes: end-of-file when the writers are gone; close acts on this process only ---------

#[task]
fn send_then_exit(tx: pool_core::Connection<u64>, n: u64, how: u8) {
    for i in 0..n {
        tx.send(&i).unwrap();
    }
    match how {
        0 => std::process::exit(0), // no close, no drop: the exit lets go
        1 => {
            // SAFETY: kills this very process, as an outside SIGKILL would.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        _ => {} // returns: the handle is dropped
    }
}

/// Receives until the pipe says it is closed; the items, and how long the end took to come.
fn drain(rx: &pool_core::Connection<u64>) -> (Vec<u64>, Duration) {
    let mut got = Vec::new();
    loop {
        let started = Instant::now();
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(v) => got.push(v),
            Err(pool_core::GetError::Closed) => return (got, started.elapsed()),
            Err(other) => panic!("expected Closed after {got:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_reader_gets_closed_once_every_writer_is_gone() {
    deadline(120, "pipe end-of-file", || {
        for how in [0u8, 1, 2] {
            // Simplex and duplex; the parent closes its copy of the child's end right after
            // start, as Python programs do: the child's own copy stays open.
            let (rx, tx) = pool_core::Pipe::simplex::<u64>().unwrap();
            let child = Process::new(send_then_exit, (tx.clone(), 5, how))
                .start()
                .unwrap();
            tx.close();
            drop(tx);
            let (got, eof_after) = drain(&rx);
            assert_eq!(got, [0, 1, 2, 3, 4], "how={how}");
            assert!(
                eof_after < Duration::from_secs(5),
                "how={how}: {eof_after:?}"
            );
            child.join();

            let (a, b) = pool_core::Pipe::new::<u64>().unwrap();
            let child = Process::new(send_then_exit, (b.clone(), 3, how))
                .start()
                .unwrap();
            b.close();
            let (got, _) = drain(&a);
            assert_eq!(got, [0, 1, 2], "duplex how={how}");
            child.join();
        }
    });
}

#[task]
fn echo_once(end: pool_core::Connection<u64>) {
    let v = end.recv().unwrap();
    end.send(&(v * 10)).unwrap();
}

#[test]
fn close_acts_on_this_process_only_and_a_closed_end_says_so() {
    deadline(60, "pipe close", || {
        let (parent_end, child_end) = pool_core::Pipe::new::<u64>().unwrap();
        let child = Process::new(echo_once, child_end.clone()).start().unwrap();
        child_end.close(); // Python: close the child's end in the parent after start()
        parent_end.send(&7).unwrap();
        assert_eq!(
            parent_end.recv_timeout(Duration::from_secs(20)).unwrap(),
            70
        );
        child.join();
        assert_eq!(child.exitcode(), Some(0));
        // Sending on a closed end: an error about the pipe, not about a pool.
        let err = child_end.send(&1).unwrap_err();
        assert!(matches!(err, Error::PipeClosed), "{err:?}");
        assert!(!err.to_string().contains("pool"), "{err}");
        // The child is gone and this process closed its copy: end-of-file.
        assert!(matches!(
            parent_end.recv_timeout(Duration::from_secs(20)),
            Err(pool_core::GetError::Closed)
        ));
    });
}

#[test]
fn a_pool_task_holds_a_received_end_while_it_runs() {
    deadline(60, "pipe through a pool", || {
        let pool = pool(2);
        let (rx, tx) = pool_core::Pipe::simplex::<u64>().unwrap();
        let r = pool.apply_async(send_then_exit, (tx.clone(), 4, 2));
        drop(tx); // this process's last handle: only the task holds the end now
        r.get().unwrap();
        let (got, eof_after) = drain(&rx);
        assert_eq!(got, [0, 1, 2, 3]);
        assert!(eof_after < Duration::from_secs(5));
    });
}
