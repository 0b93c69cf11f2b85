//! Retries with backoff on a local pool: worker deaths and timeouts run again up to the limit,
//! panics only when the task opts in, per-task overrides, and the attempts in the final error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pool_core::{task, Error, Pool};
use pool_tests::tasks::poison;
use pool_tests::{deadline, eventually};

/// Counts its runs in `marker`; aborts its worker while it has run fewer than `fail_first`
/// times before, then returns how many runs it took.
#[task]
fn dies_at_first(marker: String, fail_first: u32) -> u32 {
    let runs = bump(&marker);
    if runs <= fail_first {
        std::process::abort();
    }
    runs
}

/// The same, with a panic instead of a crash; retried only because it opts in.
#[task(retry_on_panic)]
fn panics_at_first(marker: String, fail_first: u32) -> u32 {
    let runs = bump(&marker);
    if runs <= fail_first {
        panic!("run {runs} fails");
    }
    runs
}

/// In a chunk: items 3 and 5 panic on their first run (counted per item in `dir`).
#[task(retry_on_panic)]
fn some_panic_once(dir: String, x: u64) -> u64 {
    let runs = bump(&format!("{dir}/{x}"));
    if (x == 3 || x == 5) && runs == 1 {
        panic!("item {x} fails once");
    }
    x * 10
}

/// A panic without the opt-in.
#[task]
fn panics_always(marker: String) -> u32 {
    bump(&marker);
    panic!("always")
}

/// Its own retry count, whatever the pool's.
#[task(retries = 1)]
fn dies_once_retried_by_itself(marker: String) -> u32 {
    let runs = bump(&marker);
    if runs == 1 {
        std::process::abort();
    }
    runs
}

#[task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Adds a run to the count in `marker`; returns the count with this run.
fn bump(marker: &str) -> u32 {
    let runs = std::fs::read_to_string(marker).map_or(0, |s| s.len()) as u32 + 1;
    std::fs::write(marker, "x".repeat(runs as usize)).expect("write the marker");
    runs
}

fn marker(name: &str) -> String {
    let p: PathBuf =
        std::env::temp_dir().join(format!("pool-retries-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p.to_string_lossy().into_owned()
}

fn runs(marker: &str) -> usize {
    std::fs::read_to_string(marker).map_or(0, |s| s.len())
}

fn pool(retries: u32) -> Pool {
    Pool::builder()
        .processes(1)
        .retries(retries)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .expect("pool")
}

#[test]
fn a_task_that_dies_twice_succeeds_on_its_third_attempt() {
    deadline(60, "dies twice", || {
        let pool = pool(2);
        let m = marker("twice");
        assert_eq!(
            pool.apply(dies_at_first, (m.clone(), 2))
                .expect("third run"),
            3
        );
        let stats = pool.stats();
        assert_eq!(stats.tasks_retried, 2);
        assert_eq!(stats.tasks_failed, 0);
        assert!(eventually(10, || pool.stats().workers_replaced == 2));
        assert_eq!(runs(&m), 3);
    });
}

#[test]
fn a_poison_call_costs_retries_plus_one_workers_and_says_so() {
    deadline(60, "poison call", || {
        let pool = pool(2);
        let m = marker("poison");
        match pool.apply(dies_at_first, (m.clone(), u32::MAX)) {
            Err(Error::WorkerDied { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("expected WorkerDied after 3 attempts, got {other:?}"),
        }
        assert_eq!(runs(&m), 3);
        assert!(eventually(10, || pool.stats().workers_replaced == 3));
        let err = pool
            .apply(dies_at_first, (marker("poison-msg"), u32::MAX))
            .unwrap_err();
        assert!(err.to_string().ends_with("after 3 attempts"), "{err}");
        assert_eq!(pool.apply(sleep_ms, 1).expect("the pool goes on"), 1);
    });
}

#[test]
fn a_poison_item_in_a_map_kills_exactly_retries_plus_one_workers() {
    deadline(60, "poison map", || {
        let pool = Pool::builder()
            .processes(2)
            .retries(2)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .build()
            .expect("pool");
        match pool.map_chunked(poison, 0..10_000u64, 100) {
            Err(Error::WorkerDied { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("expected WorkerDied, got {:?}", other.map(|v| v.len())),
        }
        assert!(eventually(10, || pool.stats().workers_replaced == 3));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            pool.stats().workers_replaced,
            3,
            "more workers died than attempts"
        );
        let good = pool
            .map_chunked(poison, 0..4000u64, 100)
            .expect("the pool goes on");
        assert_eq!(good[3999], 7998);
    });
}

#[test]
fn timeouts_are_retried_and_the_error_counts_the_attempts() {
    deadline(60, "timeouts", || {
        let pool = Pool::builder()
            .processes(1)
            .task_timeout(Duration::from_millis(100))
            .retries(1)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
            .build()
            .expect("pool");
        match pool.apply(sleep_ms, 5_000) {
            Err(Error::Timeout { attempts, .. }) => assert_eq!(attempts, 2),
            other => panic!("expected a timeout after 2 attempts, got {other:?}"),
        }
        assert_eq!(pool.stats().tasks_retried, 1);
    });
}

#[test]
fn panics_are_retried_only_when_the_task_opts_in() {
    deadline(60, "panics", || {
        let pool = pool(3);
        let m = marker("no-opt-in");
        assert!(matches!(
            pool.apply(panics_always, m.clone()),
            Err(Error::Panicked { .. })
        ));
        assert_eq!(runs(&m), 1, "a panic was retried without the opt-in");
        assert_eq!(pool.stats().tasks_retried, 0);
        let m = marker("opt-in");
        assert_eq!(
            pool.apply(panics_at_first, (m.clone(), 2))
                .expect("third run"),
            3
        );
        assert_eq!(pool.stats().tasks_retried, 2);
        assert_eq!(
            pool.stats().workers_replaced,
            0,
            "a panic does not cost a worker"
        );
    });
}

#[test]
fn a_task_s_own_retries_override_the_pool_s() {
    deadline(60, "override", || {
        let pool = pool(0);
        let m = marker("own");
        assert_eq!(
            pool.apply(dies_once_retried_by_itself, m.clone())
                .expect("second run"),
            2
        );
        assert_eq!(pool.stats().tasks_retried, 1);
        let m = marker("pool-default");
        assert!(matches!(
            pool.apply(dies_at_first, (m.clone(), 1)),
            Err(Error::WorkerDied { attempts: 1, .. })
        ));
    });
}

#[test]
fn the_backoff_grows_and_a_cancel_during_it_ends_the_retries() {
    deadline(60, "backoff", || {
        let pool = Pool::builder()
            .processes(1)
            .retries(5)
            .retry_backoff(Duration::from_millis(200), Duration::from_secs(5))
            .build()
            .expect("pool");
        let m = marker("backoff");
        let t = Instant::now();
        let r = pool.apply_async(dies_at_first, (m.clone(), u32::MAX));
        // First run, then a wait of 100–200 ms, then the second run, then 200–400 ms…
        assert!(eventually(10, || runs(&m) == 2));
        let two = t.elapsed();
        assert!(
            two >= Duration::from_millis(100),
            "second run after {two:?}"
        );
        assert!(r.cancel());
        assert!(matches!(r.get(), Err(Error::Cancelled)));
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(runs(&m), 2, "a cancelled call ran again");
        eprintln!("second attempt {two:?} after the first");
    });
}

#[test]
fn in_a_chunk_only_the_items_that_panicked_run_again() {
    deadline(60, "panicked items in a chunk", || {
        let pool = pool(1);
        let dir = std::env::temp_dir().join(format!("pool-retries-{}-chunk", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display().to_string();
        let out = pool
            .map_chunked(some_panic_once, (0..8u64).map(|x| (d.clone(), x)), 8)
            .expect("the panicked items succeed on their second run");
        assert_eq!(out, (0..8u64).map(|x| x * 10).collect::<Vec<_>>());
        for x in 0..8u64 {
            let want = if x == 3 || x == 5 { 2 } else { 1 };
            assert_eq!(runs(&format!("{d}/{x}")), want, "item {x}");
        }
        let stats = pool.stats();
        assert_eq!(stats.tasks_retried, 2);
        assert_eq!(stats.tasks_completed, 8, "{stats:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
