//! `RedisPool` from async code (feature `tokio`): connected through the `redis` crate's async
//! connection, and a thousand submissions awaited at once on a single-threaded runtime that a
//! ticker proves was never blocked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_redis::RedisPool;
use pool_tests::deadline;
use pool_tests::redis::{square, RedisServer, WorkerProcess};

const EXE: &str = env!("CARGO_BIN_EXE_redis-worker");

#[test]
fn a_thousand_concurrent_submissions_under_tokio_never_block_the_runtime() {
    deadline(120, "async client", || {
        let server = RedisServer::start(false);
        let _w = WorkerProcess::start(
            EXE,
            &server,
            "jobs",
            2,
            Duration::from_millis(1500),
            3,
            "a",
            &[("POOL_TEST_PREFETCH", "64")],
        );
        // One thread: anything that blocked it would stall every task, the ticker included.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // An unreachable server is an error, not a hang.
            assert!(RedisPool::connect_async("redis://127.0.0.1:1/", "jobs")
                .await
                .is_err());
            let pool = Arc::new(
                RedisPool::connect_async(&server.url(), "jobs")
                    .await
                    .unwrap(),
            );
            let stop = Arc::new(AtomicBool::new(false));
            let ticker = {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut worst = Duration::ZERO;
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        worst = worst.max(last.elapsed());
                        last = Instant::now();
                    }
                    worst
                })
            };
            let started = Instant::now();
            let calls: Vec<_> = (0..1000u64)
                .map(|i| {
                    let pool = Arc::clone(&pool);
                    tokio::spawn(async move { (i, pool.apply_async(square, i).await) })
                })
                .collect();
            for call in calls {
                let (i, result) = call.await.unwrap();
                assert_eq!(result.unwrap(), i * i);
            }
            let took = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            let worst = ticker.await.unwrap();
            eprintln!(
                "1000 concurrent submissions answered in {took:?}; the runtime's longest \
                 pause between 5 ms ticks: {worst:?}"
            );
            assert!(worst < Duration::from_millis(250), "{worst:?}");
            assert_eq!(pool.outstanding(), 0);
        });
    });
}
