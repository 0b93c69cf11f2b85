//! A randomized campaign over cancels, retries and crashes together: calls of every kind
//! (single calls, chunked maps, iterators) with poison items, stuck tasks and cooperative
//! tasks, cancelled at random moments, under random retry counts. Every call must resolve,
//! exactly once, to what its history explains; the counters must add up; the pool must then
//! serve a normal map; and no process may be left behind. Prints its counts.

use std::time::Duration;

use pool_core::{task, AsyncResult, Error, Pool};
use pool_tests::{deadline, eventually, is_alive, Rng};

/// `x + 1` after `ms` milliseconds; aborts its worker when `x` is 999 (a poison item).
#[task]
fn work(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    if x == 999 {
        std::process::abort();
    }
    x + 1
}

/// Spins until asked to stop, or forever when `polite` is false.
#[task]
fn stuck(polite: bool) -> u64 {
    while !(polite && pool_core::cancelled()) {
        std::hint::spin_loop();
    }
    7
}

#[derive(Default, Debug)]
struct Tally {
    runs: u64,
    calls: u64,
    cancelled: u64,
    crashes: u64,
    wrong: Vec<String>,
}

/// What a call must resolve to, given whether its cancel took and whether it holds poison.
fn check_one(
    tally: &mut Tally,
    what: &str,
    r: &AsyncResult<u64>,
    cancelled: bool,
    expect: Option<u64>,
    attempts: u32,
) {
    tally.calls += 1;
    let got = r.get_timeout(Duration::from_secs(30));
    let ok = match (&got, cancelled, expect) {
        (Err(Error::Cancelled), true, _) => true,
        (Ok(v), false, Some(e)) => *v == e,
        (Err(Error::WorkerDied { attempts: a, .. }), false, None) => *a == attempts,
        _ => false,
    };
    if !ok {
        tally.wrong.push(format!(
            "{what}: cancelled={cancelled} expect={expect:?} got {got:?}"
        ));
    }
}

fn run(rng: &mut Rng, tally: &mut Tally) {
    let retries = rng.below(3) as u32;
    let pool = Pool::builder()
        .processes(2)
        .retries(retries)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .cancel_grace(Duration::from_millis(rng.below(30)))
        .build()
        .expect("pool");
    let mut pids = pool.worker_pids();
    // Single calls: fine, poison, stuck (polite or not); some cancelled.
    let mut singles = Vec::new();
    for i in 0..8u64 {
        let kind = rng.below(4);
        let r = match kind {
            0 => pool.apply_async(work, (i, rng.below(20))),
            1 => pool.apply_async(work, (999, rng.below(5))),
            2 => pool.apply_async(stuck, true),
            _ => pool.apply_async(stuck, false),
        };
        singles.push((kind, i, r));
    }
    // A chunked map with one poison item.
    let n = 40 + rng.below(60);
    let map = pool.map_async_chunked(work, (0..n).map(|x| (x, 1)), 1 + rng.below(10) as usize);
    std::thread::sleep(Duration::from_millis(rng.below(40)));
    let mut cancels = Vec::new();
    for (kind, _, r) in &singles {
        // The stuck ones must be cancelled (they never end otherwise); others at random.
        let c = if *kind >= 2 || rng.below(3) == 0 {
            r.cancel()
        } else {
            false
        };
        cancels.push(c);
        std::thread::sleep(Duration::from_millis(rng.below(5)));
    }
    let map_cancelled = rng.below(2) == 0 && map.cancel();
    // An iterator dropped part-way.
    let mut it = pool.imap_chunked(work, (0..50u64).map(|x| (x, 2)), 1 + rng.below(5) as usize);
    for _ in 0..rng.below(10) {
        match it.next() {
            Some(Ok(_)) => {}
            other => tally.wrong.push(format!("imap item: {other:?}")),
        }
    }
    drop(it);
    for (((kind, i, r), cancelled), n) in singles.iter().zip(&cancels).zip(0..) {
        let (expect, attempts) = match kind {
            0 => (Some(i + 1), 1),
            1 => {
                tally.crashes += 1;
                (None, retries + 1)
            }
            _ => (None, 0), // must have been cancelled
        };
        if *kind >= 2 && !cancelled {
            tally
                .wrong
                .push(format!("stuck call {n}: cancel did not take"));
            continue;
        }
        tally.cancelled += u64::from(*cancelled);
        check_one(
            tally,
            &format!("call {n} kind {kind}"),
            r,
            *cancelled,
            expect,
            attempts,
        );
    }
    tally.calls += 1;
    match map.get_timeout(Duration::from_secs(30)) {
        Err(Error::Cancelled) if map_cancelled => {}
        Ok(v) if !map_cancelled => {
            if v != (1..=n).collect::<Vec<_>>() {
                tally.wrong.push("map values".into());
            }
        }
        other => tally
            .wrong
            .push(format!("map cancelled={map_cancelled}: {other:?}")),
    }
    // Afterwards: everything is counted once, the pool serves at full strength.
    let settled = eventually(20, || {
        let s = pool.stats();
        s.tasks_submitted == s.tasks_completed + s.tasks_failed + s.tasks_cancelled
    });
    if !settled {
        tally.wrong.push(format!("counters: {:?}", pool.stats()));
    }
    match pool.map_chunked(work, (0..200u64).map(|x| (x, 0)), 7) {
        Ok(v) if v == (1..=200).collect::<Vec<_>>() => {}
        other => tally.wrong.push(format!("after: {other:?}")),
    }
    if !eventually(10, || pool.stats().workers_alive == 2) {
        tally
            .wrong
            .push(format!("short of workers: {:?}", pool.stats()));
    }
    pids.extend(pool.worker_pids());
    drop(pool);
    if !eventually(10, || pids.iter().all(|&p| !is_alive(p))) {
        tally.wrong.push("a worker outlived its pool".into());
    }
    tally.runs += 1;
}

#[test]
fn cancel_retry_and_crash_campaign() {
    let tally = deadline(300, "cancel campaign", || {
        // A fixed seed, so a failure replays; `POOL_CAMPAIGN_SEED` tries others.
        let seed = std::env::var("POOL_CAMPAIGN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_cafe_f00d_0001);
        let mut rng = Rng(seed);
        let mut tally = Tally::default();
        for _ in 0..12 {
            run(&mut rng, &mut tally);
        }
        tally
    });
    eprintln!(
        "cancel-campaign: runs={} calls={} cancelled={} crashes={} wrong={}",
        tally.runs,
        tally.calls,
        tally.cancelled,
        tally.crashes,
        tally.wrong.len()
    );
    assert!(tally.wrong.is_empty(), "{:#?}", tally.wrong);
}
