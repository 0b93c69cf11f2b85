//! A failure costs exactly one item: a worker that dies in the middle of a chunk fails only the
//! item it was running; the chunk's other items are answered (run again elsewhere), for every
//! form of map on a local pool.

use std::time::Duration;

use pool_core::{task, Error, Pool};
use pool_tests::tasks::poison;
use pool_tests::{deadline, eventually};

/// The same, but slow enough that several items of a chunk finish before the crash.
#[task]
fn slow_poison(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    if x == 37 {
        std::process::abort();
    }
    x + 1
}

/// Counts its runs in `dir/x`, takes 10 ms, and aborts its worker on item 5's first run.
#[task]
fn counted(dir: String, x: u64) -> u64 {
    let path = format!("{dir}/{x}");
    let runs = std::fs::read_to_string(&path).map_or(0, |s| s.len()) + 1;
    std::fs::write(&path, "x".repeat(runs)).expect("count the run");
    std::thread::sleep(Duration::from_millis(10));
    if x == 5 && runs == 1 {
        std::process::abort();
    }
    x + 100
}

fn check(out: &[Result<u64, Error>], bad: usize, good: impl Fn(u64) -> u64) {
    let mut died = 0;
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, good(i as u64), "item {i}"),
            Err(Error::WorkerDied { attempts: 1, .. }) if i == bad => died += 1,
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert_eq!(died, 1);
}

#[test]
fn a_10000_item_map_in_chunks_of_100_loses_exactly_the_poison_item() {
    deadline(120, "map_results", || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        let out = pool
            .map_results_chunked(poison, 0..10_000u64, 100)
            .expect("no failure of the whole call");
        assert_eq!(out.len(), 10_000);
        check(&out, 4321, |x| x * 2);
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 9_999);
        let stats = pool.stats();
        assert_eq!(stats.tasks_failed, 1, "{stats:?}");
        assert!(eventually(10, || pool.stats().workers_replaced == 1));
        // The default chunking too.
        let out = pool.map_results(poison, 0..10_000u64).expect("whole call");
        check(&out, 4321, |x| x * 2);
    });
}

#[test]
fn items_before_the_crash_and_after_it_are_answered_in_every_map_form() {
    deadline(120, "forms", || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        // imap and imap_unordered yield every item's own result.
        let out: Vec<_> = pool.imap_chunked(slow_poison, 0..100u64, 50).collect();
        check(&out, 37, |x| x + 1);
        let mut seen: Vec<(u64, bool)> = pool
            .imap_unordered_chunked(slow_poison, 0..100u64, 50)
            .map(|r| match r {
                Ok(v) => (v - 1, true),
                Err(_) => (37, false),
            })
            .collect();
        seen.sort();
        assert_eq!(seen.len(), 100);
        assert_eq!(seen.iter().filter(|(_, ok)| !ok).count(), 1);
        // map and map_async fail with that item's error, as for any failed item.
        match pool.map_chunked(slow_poison, 0..100u64, 50) {
            Err(Error::WorkerDied { task, .. }) => assert!(task.ends_with("slow_poison")),
            other => panic!("{other:?}"),
        }
        match pool.map_async_chunked(slow_poison, 0..100u64, 50).get() {
            Err(Error::WorkerDied { .. }) => {}
            other => panic!("{other:?}"),
        }
        // One worker per crash: four maps, four crashes.
        assert!(eventually(10, || pool.stats().workers_replaced == 4));
        let stats = pool.stats();
        assert_eq!(stats.workers_replaced, 4, "{stats:?}");
    });
}

#[test]
fn items_a_worker_reported_before_it_died_are_not_run_again() {
    deadline(120, "partial results", || {
        let pool = Pool::builder().processes(1).build().expect("pool");
        let dir = std::env::temp_dir().join(format!("pool-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display().to_string();
        let out = pool
            .map_results_chunked(counted, (0..10u64).map(|x| (d.clone(), x)), 10)
            .expect("whole call");
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, i as u64 + 100),
                Err(Error::WorkerDied { .. }) if i == 5 => {}
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        let runs: Vec<usize> = (0..10)
            .map(|x| std::fs::read_to_string(dir.join(x.to_string())).map_or(0, |s| s.len()))
            .collect();
        eprintln!("runs per item: {runs:?}");
        // The worker sends what it has done every 20 ms: the first items were reported before
        // the crash at item 5 (about 60 ms in) and did not run again. Only items finished
        // since its last report (at most two at 10 ms each) ran twice.
        assert_eq!(runs[0], 1, "{runs:?}");
        assert_eq!(runs[1], 1, "{runs:?}");
        assert!(
            runs[..5].iter().filter(|&&r| r == 2).count() <= 2,
            "{runs:?}"
        );
        assert!(runs[6..].iter().all(|&r| r == 1), "{runs:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
