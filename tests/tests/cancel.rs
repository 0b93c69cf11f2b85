//! Cancel and soft time limits on a local pool: a queued job never starts, a running one is
//! stopped (cooperatively through `cancelled()`, or by stopping its worker), a `map_async` or
//! an `Imap` stops part-way, and no process is left behind. Each test prints its timings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pool_core::{task, Error, Pool};
use pool_tests::{deadline, eventually, is_alive};

/// Sleeps `ms`, then creates `path` (if not empty): a mark that the task ran to its end.
#[task]
fn nap_then_mark(ms: u64, path: String) {
    std::thread::sleep(Duration::from_millis(ms));
    if !path.is_empty() {
        std::fs::write(&path, b"ran").expect("write the mark");
    }
}

/// Never returns and never looks at `cancelled()`.
#[task]
fn spin() {
    loop {
        std::hint::spin_loop();
    }
}

/// Works until asked to stop, then leaves a mark and returns.
#[task]
fn until_cancelled(path: String) -> u64 {
    let mut n = 0;
    while !pool_core::cancelled() {
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(&path, b"cleaned up").expect("write the mark");
    n
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pool-cancel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn mark(dir: &Path, i: usize) -> String {
    dir.join(format!("{i}")).to_string_lossy().into_owned()
}

fn marks(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn one_worker() -> Pool {
    Pool::builder().processes(1).build().expect("pool")
}

#[test]
fn a_queued_job_never_starts() {
    deadline(60, "a_queued_job_never_starts", || {
        let dir = scratch("queued");
        let pool = one_worker();
        // A task never measured waits in the pool's queue while the worker is busy.
        let busy = pool.apply_async(nap_then_mark, (300, String::new()));
        let queued = pool.apply_async(nap_then_mark, (0, mark(&dir, 0)));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        assert!(queued.cancel());
        assert!(matches!(queued.get(), Err(Error::Cancelled)));
        let to_err = t.elapsed();
        assert!(!queued.cancel(), "a second cancel finds it finished");
        busy.get().expect("the busy job is not touched");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(marks(&dir), 0, "the cancelled job ran");
        let stats = pool.stats();
        assert_eq!(stats.tasks_cancelled, 1);
        assert_eq!(stats.workers_replaced, 0);
        eprintln!("queued: cancel to Err(Cancelled) {to_err:?}");
    });
}

#[test]
fn a_job_sent_to_a_worker_but_not_begun_never_starts() {
    deadline(
        60,
        "a_job_sent_to_a_worker_but_not_begun_never_starts",
        || {
            let dir = scratch("sent");
            let pool = one_worker();
            // Known to be short, the task's jobs queue at the worker behind the running one.
            for _ in 0..50 {
                pool.apply(nap_then_mark, (0, String::new()))
                    .expect("warm-up");
            }
            let running = pool.apply_async(nap_then_mark, (300, String::new()));
            let behind: Vec<_> = (0..5)
                .map(|i| pool.apply_async(nap_then_mark, (0, mark(&dir, i))))
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            for r in &behind {
                assert!(r.cancel());
            }
            running.get().expect("the running job is not touched");
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(marks(&dir), 0, "a cancelled job ran");
            assert_eq!(pool.stats().workers_replaced, 0, "no worker was stopped");
            assert_eq!(pool.apply(square, 7).expect("the pool goes on"), 49);
        },
    );
}

#[test]
fn a_running_job_in_a_busy_loop_is_stopped_and_its_worker_replaced() {
    deadline(
        60,
        "a_running_job_in_a_busy_loop_is_stopped_and_its_worker_replaced",
        || {
            let pool = one_worker();
            let old = pool.worker_pids();
            let r = pool.apply_async(spin, ());
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            assert!(r.cancel());
            assert!(matches!(r.get(), Err(Error::Cancelled)));
            let to_err = t.elapsed();
            assert!(
                eventually(10, || {
                    let s = pool.stats();
                    s.workers_replaced == 1 && s.workers_alive == 1
                }),
                "no replacement worker: {:?}",
                pool.stats()
            );
            let to_replacement = t.elapsed();
            assert!(
                old.iter().all(|&pid| !is_alive(pid)),
                "the stopped worker {old:?} is still there"
            );
            assert_eq!(pool.apply(square, 9).expect("the new worker serves"), 81);
            eprintln!("busy loop: cancel to Err(Cancelled) {to_err:?}, to a replacement worker {to_replacement:?}");
            assert!(to_err < Duration::from_millis(500), "{to_err:?}");
        },
    );
}

#[test]
fn a_running_job_that_polls_cancelled_cleans_up_and_its_worker_stays() {
    deadline(
        60,
        "a_running_job_that_polls_cancelled_cleans_up_and_its_worker_stays",
        || {
            let dir = scratch("polls");
            let pool = one_worker();
            let old = pool.worker_pids();
            let path = mark(&dir, 0);
            let r = pool.apply_async(until_cancelled, path.clone());
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            assert!(r.cancel());
            assert!(matches!(r.get(), Err(Error::Cancelled)));
            assert!(
                eventually(10, || Path::new(&path).exists()),
                "the task never saw cancelled()"
            );
            let to_cleanup = t.elapsed();
            std::thread::sleep(Duration::from_millis(300)); // past the grace
            assert_eq!(
                pool.stats().workers_replaced,
                0,
                "a cooperative task's worker was stopped"
            );
            assert_eq!(pool.worker_pids(), old);
            assert_eq!(pool.apply(square, 3).expect("same worker"), 9);
            eprintln!("cooperative: cancel to the task's clean-up {to_cleanup:?}");
        },
    );
}

#[test]
fn a_map_async_cancelled_half_way_stops_running_the_rest() {
    deadline(
        60,
        "a_map_async_cancelled_half_way_stops_running_the_rest",
        || {
            let dir = scratch("map");
            let pool = Pool::builder().processes(2).build().expect("pool");
            let items: Vec<(u64, String)> = (0..40).map(|i| (50, mark(&dir, i))).collect();
            let r = pool.map_async_chunked(nap_then_mark, items, 1);
            std::thread::sleep(Duration::from_millis(180));
            let t = Instant::now();
            assert!(r.cancel());
            assert!(matches!(r.get(), Err(Error::Cancelled)));
            let to_err = t.elapsed();
            let t_idle = Instant::now();
            assert_eq!(pool.apply(square, 4).expect("the pool is free again"), 16);
            let to_free = t_idle.elapsed();
            std::thread::sleep(Duration::from_millis(300));
            let ran = marks(&dir);
            let stats = pool.stats();
            eprintln!(
                "map_async: {ran} of 40 items ran; cancel to Err {to_err:?}; pool free after \
                 {to_free:?}; {} cancelled",
                stats.tasks_cancelled
            );
            assert!(ran > 0 && ran < 20, "{ran} of 40 items ran");
            // Every item either completed before the cancel or is counted cancelled; the ones
            // running at the cancel (one per worker) may still run to their end in the grace.
            let completed = stats.tasks_completed - 1; // the `square` above
            assert_eq!(completed + stats.tasks_cancelled, 40, "{stats:?}");
            assert!(
                ran as u64 >= completed && ran as u64 <= completed + 2,
                "{ran} ran, {stats:?}"
            );
        },
    );
}

#[test]
fn an_imap_dropped_half_way_cancels_what_it_did_not_receive() {
    deadline(
        60,
        "an_imap_dropped_half_way_cancels_what_it_did_not_receive",
        || {
            let dir = scratch("imap");
            let pool = Pool::builder().processes(2).build().expect("pool");
            let items: Vec<(u64, String)> = (0..200).map(|i| (20, mark(&dir, i))).collect();
            let mut it = pool.imap(nap_then_mark, items);
            for _ in 0..10 {
                it.next().expect("an item").expect("ran");
            }
            let t = Instant::now();
            drop(it);
            assert_eq!(pool.apply(square, 5).expect("the pool is free again"), 25);
            let to_free = t.elapsed();
            std::thread::sleep(Duration::from_millis(300));
            let ran = marks(&dir);
            eprintln!("imap: {ran} of 200 items ran; pool free {to_free:?} after the drop");
            assert!(ran < 40, "{ran} of 200 items ran after the drop");
            // And explicitly, with `cancel`, on a fresh iterator.
            let mut it = pool.imap(nap_then_mark, (0..100).map(|_| (20, String::new())));
            it.next().expect("an item").expect("ran");
            assert!(it.cancel());
            assert!(it.next().is_none());
        },
    );
}

#[test]
fn soft_timeout_lets_a_polite_task_return_and_stops_a_stubborn_one() {
    deadline(
        60,
        "soft_timeout_lets_a_polite_task_return_and_stops_a_stubborn_one",
        || {
            let dir = scratch("soft");
            let pool = Pool::builder()
                .processes(1)
                .soft_timeout(Duration::from_millis(150))
                .cancel_grace(Duration::from_millis(100))
                .build()
                .expect("pool");
            let t = Instant::now();
            let n = pool
                .apply(until_cancelled, mark(&dir, 0))
                .expect("a polite task returns its value");
            let polite = t.elapsed();
            assert!(n > 0);
            assert!(polite >= Duration::from_millis(150), "{polite:?}");
            assert_eq!(pool.stats().workers_replaced, 0);
            let t = Instant::now();
            match pool.apply(spin, ()) {
                Err(Error::Timeout { limit, .. }) => assert_eq!(limit, Duration::from_millis(150)),
                other => panic!("expected a timeout, got {other:?}"),
            }
            let stubborn = t.elapsed();
            assert!(stubborn >= Duration::from_millis(250), "{stubborn:?}");
            assert!(eventually(10, || pool.stats().workers_alive == 1));
            assert_eq!(pool.apply(square, 6).expect("a fresh worker"), 36);
            eprintln!("soft timeout: polite task returned after {polite:?}, stubborn one failed after {stubborn:?}");
        },
    );
}

#[test]
fn nothing_is_left_behind_after_cancels() {
    deadline(60, "nothing_is_left_behind_after_cancels", || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        let mut seen = pool.worker_pids();
        for _ in 0..5 {
            let r = pool.apply_async(spin, ());
            std::thread::sleep(Duration::from_millis(30));
            r.cancel();
            assert!(eventually(10, || pool.stats().workers_alive == 2));
            seen.extend(pool.worker_pids());
        }
        drop(pool);
        assert!(
            eventually(10, || seen.iter().all(|&pid| !is_alive(pid))),
            "workers left: {:?}",
            seen.iter().filter(|&&p| is_alive(p)).collect::<Vec<_>>()
        );
    });
}
