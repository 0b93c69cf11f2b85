//! `RedisPool` from async code (feature `tokio`): connected through the `redis` crate's async
//! connection, a thousand submissions awaited at once on a single-threaded runtime that a
//! ticker proves was never blocked (through the submitter thread with `apply_async`, and on
//! the async connection itself with `apply_await`), and an `apply_await` that Redis cannot take
//! given back when its future is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_redis::RedisPool;
use pool_tests::deadline;
use pool_tests::redis::{square, RedisServer, WorkerProcess};

const EXE: &str = env!("CARGO_BIN_EXE_redis-worker");

/// One thread: anything that blocked it would stall every task, the ticker included.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Awaits 1,000 concurrent calls (`apply_await` when `on_async_connection`, else
/// `apply_async(..).await`) and returns the longest pause of a 5 ms ticker meanwhile.
async fn a_thousand_at_once(pool: &Arc<RedisPool>, on_async_connection: bool) -> Duration {
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
            let pool = Arc::clone(pool);
            tokio::spawn(async move {
                let result = if on_async_connection {
                    pool.apply_await(square, i).await
                } else {
                    pool.apply_async(square, i)
                        .await
                        .map_err(pool_redis::Error::from)
                };
                (i, result)
            })
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
        "1000 concurrent submissions (apply_await: {on_async_connection}) answered in {took:?}; \
         the runtime's longest pause between 5 ms ticks: {worst:?}"
    );
    assert_eq!(pool.outstanding(), 0);
    worst
}

#[test]
fn a_thousand_concurrent_submissions_under_tokio_never_block_the_runtime() {
    deadline(120, "async client", || {
        let server = RedisServer::start(false);
        let _w = WorkerProcess::serving(
            EXE,
            &server,
            "jobs",
            2,
            "a",
            &[("POOL_TEST_PREFETCH", "64")],
        );
        runtime().block_on(async {
            // An unreachable server is an error, not a hang.
            assert!(RedisPool::connect_async("redis://127.0.0.1:1/", "jobs")
                .await
                .is_err());
            let pool = Arc::new(
                RedisPool::connect_async(&server.url(), "jobs")
                    .await
                    .unwrap(),
            );
            for on_async_connection in [false, true] {
                let worst = a_thousand_at_once(&pool, on_async_connection).await;
                assert!(worst < Duration::from_millis(250), "{worst:?}");
            }
        });
    });
}

#[test]
fn apply_await_gives_back_what_redis_could_not_take_and_sends_again_after_a_restart() {
    deadline(120, "apply_await through an outage", || {
        let mut server = RedisServer::start(false);
        let _w = WorkerProcess::serving(EXE, &server, "jobs", 2, "a", &[]);
        let runtime = runtime();
        let pool = runtime.block_on(async {
            let pool = RedisPool::connect_async(&server.url(), "jobs")
                .await
                .unwrap();
            assert_eq!(pool.apply_await(square, 3).await.unwrap(), 9);
            pool
        });
        server.stop();
        runtime.block_on(async {
            // Redis is down: the submission retries with backoff on the runtime, without
            // blocking it, until its caller gives up; then it is no longer waited for.
            let gave_up =
                tokio::time::timeout(Duration::from_millis(400), pool.apply_await(square, 4)).await;
            assert!(gave_up.is_err(), "Redis is down, yet: {gave_up:?}");
            assert_eq!(
                pool.outstanding(),
                0,
                "a dropped submission stays waited for"
            );
        });
        server.start_again(None);
        runtime.block_on(async {
            // The next submission reconnects (the worker recreates the group it lost).
            assert_eq!(pool.apply_await(square, 5).await.unwrap(), 25);
            assert_eq!(pool.outstanding(), 0);
        });
        pool.close();
        pool.join().unwrap();
    });
}
