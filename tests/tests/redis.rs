//! pool-redis end to end: a private `redis-server` per test, `redis-worker` processes (this
//! package's binary, serving the tasks of `pool_tests::redis`), and a `RedisPool` client here.
//! These tests need `redis-server` on the PATH and fail (never skip) without it.

use std::time::{Duration, Instant};

use pool_core::Task;
use pool_redis::{Error, RedisPool};
use pool_tests::deadline;
use pool_tests::redis::{
    abort_on, always_aborts, dies_twice, kill_my_worker, logged_square, mark, nap_mark,
    slow_square, spin_in, square, square_unless, worker_tag, RedisServer, WorkerProcess,
};

const EXE: &str = env!("CARGO_BIN_EXE_redis-worker");

fn worker(server: &RedisServer, queue: &str, processes: usize, tag: &str) -> WorkerProcess {
    WorkerProcess::serving(EXE, server, queue, processes, tag, &[])
}

/// Waits until `n` workers of the queue report alive.
fn wait_for_workers(pool: &RedisPool, n: usize) {
    let start = Instant::now();
    loop {
        let alive = pool
            .status()
            .map(|s| s.workers.iter().filter(|w| w.alive).count())
            .unwrap_or(0);
        if alive >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{n} workers did not report within 20 s (have {alive})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hundred_thousand_tasks_through_two_workers() {
    deadline(120, "100k tasks through redis", || {
        let server = RedisServer::start(false);
        let _a = worker(&server, "jobs", 1, "a");
        let _b = worker(&server, "jobs", 1, "b");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 2);
        let n = 100_000u64;
        let t = Instant::now();
        let v = pool.map_chunked(square, 0..n, 1000).unwrap();
        eprintln!("100k tasks in chunks of 1000: {:?}", t.elapsed());
        assert_eq!(v.len(), n as usize);
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u64) * (i as u64)));

        // The other calls, on the same workers.
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        assert_eq!(pool.map(square, 0..1000).unwrap()[999], 998_001);
        let ordered: Vec<u64> = pool
            .imap_chunked(square, 0..2000u64, 7)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ordered, (0..2000u64).map(|i| i * i).collect::<Vec<_>>());
        let mut unordered: Vec<u64> = pool
            .imap_unordered(square, 0..500u64)
            .collect::<Result<_, _>>()
            .unwrap();
        unordered.sort();
        assert_eq!(unordered, (0..500u64).map(|i| i * i).collect::<Vec<_>>());
        let pending: Vec<_> = (0..1000).map(|i| pool.apply_async(square, i)).collect();
        let sum: u64 = pending.into_iter().map(|r| r.get().unwrap()).sum();
        assert_eq!(sum, (0..1000u64).map(|i| i * i).sum::<u64>());
        assert_eq!(
            pool.map(square, Vec::<u64>::new()).unwrap(),
            Vec::<u64>::new()
        );

        pool.close();
        assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
        pool.join().unwrap();
        assert_eq!(pool.outstanding(), 0);
        let status = pool.status().unwrap();
        assert_eq!((status.waiting, status.pending), (0, 0), "{status:?}");
        assert_eq!(status.workers.len(), 2, "{status:?}");
        assert!(status.workers.iter().all(|w| w.alive && w.processes == 1));
    });
}

#[test]
fn unknown_tasks_and_bad_arguments_fail_clearly_and_the_worker_goes_on() {
    deadline(60, "unknown task and bad args", || {
        let server = RedisServer::start(false);
        let _w = worker(&server, "jobs", 1, "w");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        match pool.apply_named::<_, u64>("no::such::task", 1u64) {
            Err(Error::Task(pool_core::Error::UnknownTask { name })) => {
                assert_eq!(name, "no::such::task")
            }
            other => panic!("{other:?}"),
        }
        match pool.apply_named::<_, u64>(square::NAME, "not a number") {
            Err(Error::Task(pool_core::Error::ArgsDecode { task, .. })) => {
                assert_eq!(task, square::NAME)
            }
            other => panic!("{other:?}"),
        }
        // A result that does not decode as the caller's type is caught on this side.
        match pool.apply_named::<_, String>(square::NAME, 3u64) {
            Err(Error::Task(pool_core::Error::ResultDecode { .. })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    });
}

#[test]
fn two_queues_on_one_server_do_not_mix() {
    deadline(60, "two queues", || {
        let server = RedisServer::start(false);
        let _one = worker(&server, "one", 1, "one");
        let _two = worker(&server, "two", 1, "two");
        let one = RedisPool::connect(&server.url(), "one").unwrap();
        let two = RedisPool::connect(&server.url(), "two").unwrap();
        let a = one.map_async_chunked(worker_tag, vec![(); 300], 1);
        let b = two.map_async_chunked(worker_tag, vec![(); 300], 1);
        let (a, b) = (a.get().unwrap(), b.get().unwrap());
        assert!(a.iter().all(|t| t == "one"), "{a:?}");
        assert!(b.iter().all(|t| t == "two"), "{b:?}");
    });
}

#[test]
fn a_worker_killed_mid_run_loses_nothing_and_nothing_arrives_twice() {
    deadline(120, "worker killed mid-run", || {
        let server = RedisServer::start(false);
        let mut a = worker(&server, "jobs", 2, "a");
        let _b = worker(&server, "jobs", 2, "b");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 2);
        let n = 2000u64;
        // 200 jobs of 10 items, 5 ms each: about 2.5 s of work on 4 processes.
        let result = pool.map_async_chunked(slow_square, (0..n).map(|i| (i, 5)), 10);
        std::thread::sleep(Duration::from_millis(700));
        assert!(!result.ready(), "the map should still be running");
        a.kill();
        let killed = Instant::now();
        let v = result.get().unwrap();
        eprintln!(
            "map finished {:?} after the worker was killed",
            killed.elapsed()
        );
        assert_eq!(v, (0..n).map(|i| i * i).collect::<Vec<_>>());
        // Every job was answered exactly once to this client, and nothing is left in Redis.
        assert_eq!(pool.outstanding(), 0);
        let status = pool.status().unwrap();
        assert_eq!((status.waiting, status.pending), (0, 0), "{status:?}");
    });
}

#[test]
fn a_chunk_whose_worker_machine_dies_runs_again_only_the_items_not_reported() {
    deadline(120, "worker machine killed mid-chunk", || {
        let server = RedisServer::start(false);
        let mut a = worker(&server, "jobs", 2, "a");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        let log = scratch_path("machine-death-log");
        // One job of 80 items of 100 ms: the worker runs it as 8 pieces of 10 items on its 2
        // processes (a piece ends every half second), and reports each piece's items at its
        // next heartbeat (200 ms).
        let n = 80u64;
        let result =
            pool.map_async_chunked(logged_square, (0..n).map(|i| (log.clone(), i, 100)), 80);
        std::thread::sleep(Duration::from_millis(2600));
        assert!(!result.ready(), "the job should still be running");
        a.kill();
        let ran_on_a = std::fs::read_to_string(&log).unwrap().lines().count() as u64;
        let _b = worker(&server, "jobs", 2, "b");
        let v = result.get().unwrap();
        assert_eq!(v, (0..n).map(|i| i * i).collect::<Vec<_>>());
        let mut runs = vec![0u32; n as usize];
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            runs[line.split(' ').next().unwrap().parse::<usize>().unwrap()] += 1;
        }
        let total: u32 = runs.iter().sum();
        eprintln!("{ran_on_a} runs on the killed worker, {total} runs in all for {n} items");
        assert!(runs.iter().all(|&r| r >= 1), "an item never ran: {runs:?}");
        // Whole redelivery would run again everything the killed worker did (about 50 items);
        // only the items of the pieces running at the kill, and of pieces ended after the last
        // report, may run twice.
        assert!(
            ran_on_a >= 30,
            "the killed worker ran only {ran_on_a} items"
        );
        assert!(
            u64::from(total) <= n + 30,
            "{total} runs for {n} items: reported items ran again ({runs:?})"
        );
        // The progress the killed worker reported is gone with the answer.
        let mut conn = server.client().unwrap().get_connection().unwrap();
        let left: u64 = pool_redis::redis::cmd("HLEN")
            .arg("pool:{jobs}:progress")
            .query(&mut conn)
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(pool.outstanding(), 0);
    });
}

#[test]
fn redis_restarted_mid_run_with_persistence_loses_no_task() {
    deadline(180, "redis restart", || {
        let mut server = RedisServer::start(true);
        let _a = worker(&server, "jobs", 2, "a");
        let _b = worker(&server, "jobs", 2, "b");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 2);
        let n = 3000u64;
        let result = pool.map_async_chunked(slow_square, (0..n).map(|i| (i, 2)), 10);
        std::thread::sleep(Duration::from_millis(600));
        assert!(!result.ready(), "the map should still be running");
        server.kill_and_restart();
        let restarted = Instant::now();
        let v = result.get().unwrap();
        eprintln!(
            "map finished {:?} after Redis restarted",
            restarted.elapsed()
        );
        assert_eq!(v, (0..n).map(|i| i * i).collect::<Vec<_>>());
        // The client and the workers reconnected: new work still flows.
        assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    });
}

#[test]
fn a_task_that_keeps_killing_its_workers_gives_up_after_max_deliveries() {
    deadline(120, "poison task", || {
        let server = RedisServer::start(false);
        let mut workers = [
            worker(&server, "jobs", 1, "a"),
            worker(&server, "jobs", 1, "b"),
        ];
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 2);
        let poison = pool.apply_async(kill_my_worker, ());
        let start = Instant::now();
        // Like a supervisor (systemd, Kubernetes), restart workers that die.
        while !poison.ready() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no answer after 90 s"
            );
            for (i, w) in workers.iter_mut().enumerate() {
                if w.exited() {
                    *w = worker(&server, "jobs", 1, &format!("restarted-{i}"));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("poison task answered after {:?}", start.elapsed());
        // The one result type's error converts back into this crate's, losslessly.
        match poison.get().map_err(Error::from) {
            Err(Error::GaveUp { task, deliveries }) => {
                assert_eq!(task, kill_my_worker::NAME);
                assert_eq!(deliveries, 3);
            }
            other => panic!("{other:?}"),
        }
        // The queue still works.
        for (i, w) in workers.iter_mut().enumerate() {
            if w.exited() {
                *w = worker(&server, "jobs", 1, &format!("again-{i}"));
            }
        }
        assert_eq!(pool.map(square, 0..50).unwrap().len(), 50);
    });
}

#[test]
fn password_and_tls_work_and_the_password_never_shows() {
    deadline(90, "password and tls", || {
        let secret = "s3cret-Pa55";
        // A password over plain TCP: the right one works, a wrong one is refused, and neither
        // appears in an error or in Debug output.
        let server = RedisServer::start_with(false, Some(secret), false);
        let _w = worker(&server, "jobs", 1, "plain");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        assert!(!format!("{pool:?}").contains(secret), "{pool:?}");
        let wrong = server.url().replace(secret, "wrong-guess");
        let err = RedisPool::connect(&wrong, "jobs").unwrap_err();
        assert!(matches!(err, Error::Redis(_)), "{err:?}");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(
                !text.contains("wrong-guess") && !text.contains(secret),
                "{text}"
            );
        }
        let no_password = format!("redis://127.0.0.1:{}/", server.port);
        assert!(RedisPool::connect(&no_password, "jobs").is_err());
        assert!(!format!(
            "{:?}",
            pool_redis::Worker::new(&server.url(), "jobs").unwrap()
        )
        .contains(secret));

        // TLS (rediss://), with the server's certificate checked against its own authority.
        let tls = RedisServer::start_with(false, Some(secret), true);
        let _tw = worker(&tls, "jobs", 1, "tls");
        let client = tls.client().unwrap();
        let pool = RedisPool::with_client(client, "jobs").unwrap();
        assert_eq!(pool.map(square, 0..100).unwrap()[99], 9801);
        // Without trusting that authority, the handshake fails.
        assert!(RedisPool::connect(&tls.url(), "jobs").is_err());
        // Plain TCP to a TLS port fails too.
        let plain = tls.url().replace("rediss://", "redis://");
        assert!(RedisPool::connect(&plain, "jobs").is_err());
    });
}

#[test]
fn a_worker_whose_local_pool_breaks_leaves_its_jobs_to_others_and_exits() {
    deadline(120, "broken local pool", || {
        let server = RedisServer::start(false);
        let mut broken = WorkerProcess::serving(
            EXE,
            &server,
            "jobs",
            1,
            "broken",
            &[("POOL_TEST_BAD_INIT", "1")],
        );
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        let r = pool.apply_async(square, 9);
        // The broken worker takes the job, cannot run it, and exits with an error...
        let start = Instant::now();
        let status = loop {
            if let Some(status) = broken.status() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the broken worker did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{status:?}");
        assert!(
            !r.ready(),
            "the job must not be answered with the pool's failure"
        );
        // ...and a healthy worker reclaims the job and answers it.
        let _good = worker(&server, "jobs", 1, "good");
        assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 81);
    });
}

/// A `Process` child that tries a client of its parent and reports what it got.
struct UsesParentClient {
    pool: std::sync::Arc<RedisPool>,
    out: pool_core::Queue<Vec<String>>,
}

impl pool_core::Runnable for UsesParentClient {
    fn run(&mut self) {
        let wrong = |r: Result<u64, Error>| match r {
            Err(Error::Task(pool_core::Error::WrongProcess { .. })) => "wrong".to_owned(),
            other => format!("{other:?}"),
        };
        let started = Instant::now();
        let seen = vec![
            wrong(self.pool.apply(square, 3)),
            wrong(self.pool.apply_async(square, 4).get().map_err(Error::from)),
            wrong(self.pool.map(square, 0..10).map(|v| v.len() as u64)),
            wrong(
                self.pool
                    .imap(square, 0..3)
                    .next()
                    .expect("an item")
                    .map_err(Error::from),
            ),
            wrong(self.pool.join().map(|()| 0)),
            format!("fast={}", started.elapsed() < Duration::from_secs(5)),
        ];
        self.out.put(seen).unwrap();
    }
}

#[test]
fn a_client_used_in_a_forked_child_fails_at_once_and_the_parent_goes_on() {
    deadline(120, "redis client in a forked child", || {
        let server = RedisServer::start(false);
        let _w = worker(&server, "fork", 1, "fork");
        let pool = std::sync::Arc::new(RedisPool::connect(&server.url(), "fork").unwrap());
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
        let out = pool_core::Queue::new().unwrap();
        let child = pool_core::Process::from_runnable(UsesParentClient {
            pool: std::sync::Arc::clone(&pool),
            out: out.clone(),
        })
        .start()
        .unwrap();
        let seen = out
            .get_timeout(Duration::from_secs(60))
            .expect("the child reports");
        child.join();
        assert_eq!(child.exitcode(), Some(0));
        assert_eq!(&seen[..5], ["wrong"; 5], "{seen:?}");
        assert_eq!(seen[5], "fast=true");
        assert_eq!(pool.map(square, 0..100).unwrap()[99], 99 * 99);
    });
}

#[test]
fn imap_yields_every_result_before_the_inputs_panic() {
    deadline(120, "redis imap, panicking input", || {
        let server = RedisServer::start(false);
        let _w = worker(&server, "panic", 1, "panic");
        let pool = RedisPool::connect(&server.url(), "panic").unwrap();
        let input = (0..20u64).inspect(|&i| {
            if i == 5 {
                panic!("input broke at 5");
            }
        });
        let mut it = pool.imap_chunked(square, input, 2);
        let got: Vec<u64> = (0..5).map(|_| it.next().unwrap().unwrap()).collect();
        assert_eq!(got, [0, 1, 4, 9, 16]);
        let then = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
        assert!(then.is_err(), "the input's panic comes after its results");
    });
}

/// Written once against the trait: what the executor example does, with every call checked.
fn exercise<E: pool_core::Executor>(engine: &E) -> Vec<String> {
    use pool_core::Error as CoreError;
    let mut seen = Vec::new();
    let mut check = |what: &str, ok: bool| {
        if !ok {
            seen.push(what.to_owned());
        }
    };
    check("apply", engine.apply(square, 7).ok() == Some(49));
    let r = engine.apply_async(square, 9);
    check("wait_timeout", r.wait_timeout(Duration::from_secs(30)));
    check("ready", r.ready());
    check("successful", r.successful() == Some(true));
    check(
        "get twice",
        r.get().ok() == Some(81) && r.get().ok() == Some(81),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let with_callback = engine
        .apply_async(square, 5)
        .on_success(move |v| tx.send(v).unwrap());
    check(
        "on_success",
        rx.recv_timeout(Duration::from_secs(30)).ok() == Some(25),
    );
    check("callback's result", with_callback.get().ok() == Some(25));
    let fut = engine.apply_async(square, 6);
    let waker = pool_tests::park_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = Instant::now() + Duration::from_secs(30);
    let polled = loop {
        match std::future::Future::poll(fut.as_mut(), &mut cx) {
            std::task::Poll::Ready(v) => break v.ok(),
            std::task::Poll::Pending if Instant::now() < deadline => {
                std::thread::park_timeout(Duration::from_millis(50))
            }
            std::task::Poll::Pending => break None,
        }
    };
    check("future", polled == Some(36));
    let want: Vec<u64> = (0..1000).map(|x| x * x).collect();
    check(
        "map",
        engine.map(square, 0..1000).ok() == Some(want.clone()),
    );
    check(
        "map_chunked",
        engine.map_chunked(square, 0..1000, 64).ok() == Some(want.clone()),
    );
    check(
        "map_async",
        engine.map_async(square, 0..1000).get().ok() == Some(want.clone()),
    );
    check(
        "map_async_chunked",
        engine.map_async_chunked(square, 0..1000, 7).get().ok() == Some(want.clone()),
    );
    let ordered: Result<Vec<u64>, _> = engine.imap_chunked(square, 0..1000, 50).collect();
    check("imap_chunked", ordered.ok() == Some(want.clone()));
    let mut any: Vec<u64> = engine
        .imap_unordered(square, 0..100)
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    any.sort();
    check("imap_unordered", any == want[..100]);
    // One error type: a task's panic is the same error on every engine.
    let failed = engine.map_chunked(square_unless, (0..100).map(|x| (x, 42)), 10);
    check(
        "panicked",
        matches!(failed, Err(CoreError::Panicked { ref message, .. }) if message == "42 is bad"),
    );
    let per_item: Vec<bool> = engine
        .imap(square_unless, (40..45).map(|x| (x, 42)))
        .map(|r| r.is_ok())
        .collect();
    check("imap errors", per_item == [true, true, false, true, true]);
    engine.close();
    check("join", engine.join().is_ok());
    seen
}

#[test]
fn one_function_runs_unchanged_on_both_engines() {
    deadline(180, "Executor on both engines", || {
        let local = pool_core::Pool::builder().processes(2).build().unwrap();
        assert_eq!(exercise(&local), Vec::<String>::new(), "local");
        let server = RedisServer::start(false);
        let _w = worker(&server, "exec", 2, "exec");
        let redis = RedisPool::connect(&server.url(), "exec").unwrap();
        wait_for_workers(&redis, 1);
        assert_eq!(exercise(&redis), Vec::<String>::new(), "redis");
        // An engine's own failure comes as Engine, and converts back losslessly.
        let closed = redis.apply_async(square, 1).get().unwrap_err();
        assert!(matches!(closed, pool_core::Error::Engine(_)), "{closed:?}");
        assert!(matches!(Error::from(closed), Error::Closed));
    });
}

#[test]
fn a_process_crash_in_a_redis_chunk_costs_exactly_one_item() {
    deadline(120, "one item on redis", || {
        let server = RedisServer::start(false);
        let _w = worker(&server, "jobs", 2, "w");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        let out = pool
            .map_results_chunked(abort_on, (0..1000u64).map(|x| (x, 437)), 100)
            .unwrap();
        assert_eq!(out.len(), 1000);
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, (i * i) as u64),
                Err(Error::Task(pool_core::Error::WorkerDied { .. })) if i == 437 => {}
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        // A panic costs its item only too.
        let out = pool
            .map_results_chunked(square_unless, (0..300u64).map(|x| (x, 150)), 100)
            .unwrap();
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        assert!(matches!(
            out[150],
            Err(Error::Task(pool_core::Error::Panicked { .. }))
        ));
    });
}

#[test]
fn a_task_s_retries_apply_on_redis_workers_too() {
    deadline(120, "retries on redis", || {
        let server = RedisServer::start(false);
        let _w = worker(&server, "jobs", 1, "w");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        let marker = std::env::temp_dir().join(format!("redis-dies-twice-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let runs = pool
            .apply(dies_twice, marker.display().to_string())
            .expect("the third run answers");
        assert_eq!(runs, 3);
        let _ = std::fs::remove_file(&marker);
    });
}

fn scratch_path(name: &str) -> String {
    let p = std::env::temp_dir().join(format!("redis-cancel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p.display().to_string()
}

#[test]
fn cancel_takes_a_queued_job_back_and_stops_a_running_one_on_its_worker() {
    deadline(120, "cancel on redis", || {
        let server = RedisServer::start(false);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        // Queued, no worker yet: the entry is deleted and never runs.
        let never = scratch_path("never");
        let queued = pool.apply_async(mark, never.clone());
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        assert!(queued.cancel());
        assert!(matches!(queued.get(), Err(pool_core::Error::Cancelled)));
        let to_err = t.elapsed();
        let mut conn = server.client().unwrap().get_connection().unwrap();
        assert!(
            pool_tests::eventually(10, || {
                redis::cmd("XLEN")
                    .arg("pool:{jobs}:tasks")
                    .query::<u64>(&mut conn)
                    .unwrap()
                    == 0
            }),
            "the cancelled entry is still in the stream"
        );
        let _w = worker(&server, "jobs", 1, "w");
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !std::path::Path::new(&never).exists(),
            "a cancelled job ran"
        );
        // Running on a worker and polling `cancelled()`: it cleans up and returns.
        let polite = scratch_path("polite");
        let r = pool.apply_async(spin_in, (polite.clone(), true));
        assert!(pool_tests::eventually(20, || std::path::Path::new(&polite).exists()));
        let t = Instant::now();
        assert!(r.cancel());
        assert!(pool_tests::eventually(20, || {
            std::fs::read_to_string(&polite).is_ok_and(|s| s == "cleaned up")
        }));
        let to_cleanup = t.elapsed();
        // Running and never looking: its process is stopped.
        let stubborn = scratch_path("stubborn");
        let r = pool.apply_async(spin_in, (stubborn.clone(), false));
        let mut pid = 0;
        assert!(pool_tests::eventually(20, || {
            pid = std::fs::read_to_string(&stubborn)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pid > 0
        }));
        let t = Instant::now();
        assert!(r.cancel());
        assert!(
            pool_tests::eventually(20, || !pool_tests::is_alive(pid)),
            "the worker process running the cancelled job is still there"
        );
        let to_stopped = t.elapsed();
        assert_eq!(pool.apply(square, 6).unwrap(), 36, "the worker goes on");
        eprintln!(
            "redis cancel: queued to Err {to_err:?}; running, polite: to its clean-up \
             {to_cleanup:?}; running, stubborn: to its process stopped {to_stopped:?}"
        );
    });
}

#[test]
fn a_poison_call_with_retries_fails_after_its_attempts_and_a_cancelled_map_or_imap_stops() {
    deadline(120, "poison and partial cancels on redis", || {
        let server = RedisServer::start(false);
        let _w = worker(&server, "jobs", 2, "w");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        match pool.apply(always_aborts, ()) {
            Err(Error::Task(pool_core::Error::WorkerDied { attempts, .. })) => {
                assert_eq!(attempts, 3)
            }
            other => panic!("expected WorkerDied after 3 attempts, got {other:?}"),
        }
        let dir = std::env::temp_dir().join(format!("redis-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = |tag: &str, i: u64| dir.join(format!("{tag}{i}")).display().to_string();
        let marks = |tag: &str| {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(tag))
                })
                .count()
        };
        // A map_async cancelled part-way: the chunks not taken never run.
        let r = pool.map_async_chunked(nap_mark, (0..40).map(|i| (path("m", i), 50)), 1);
        std::thread::sleep(Duration::from_millis(200));
        assert!(r.cancel());
        assert!(matches!(r.get(), Err(pool_core::Error::Cancelled)));
        // An imap dropped part-way.
        let mut it = pool.imap(nap_mark, (0..40).map(|i| (path("i", i), 50)));
        for _ in 0..3 {
            it.next().unwrap().unwrap();
        }
        drop(it);
        assert_eq!(
            pool.apply(square, 7).unwrap(),
            49,
            "the worker is free again"
        );
        std::thread::sleep(Duration::from_millis(500));
        let (m, i) = (marks("m"), marks("i"));
        eprintln!("redis: {m} of 40 map_async items ran, {i} of 40 imap items ran");
        assert!(m < 30, "{m} of 40 cancelled map_async items ran");
        assert!(i < 30, "{i} of 40 items of a dropped imap ran");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Lines of the log `logged_square` writes, as `(item, worker tag)`.
fn log_lines(log: &str) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (x, tag) = l.split_once(' ')?;
            Some((x.parse().ok()?, tag.to_owned()))
        })
        .collect()
}

#[test]
fn a_sigtermed_worker_drains_hands_back_its_prefetched_jobs_and_exits_0() {
    deadline(120, "drain on SIGTERM", || {
        let server = RedisServer::start(false);
        // Takeover after 30 s of silence: only a hand-back explains a quick finish.
        let start = |tag: &str, env: &[(&str, &str)]| {
            WorkerProcess::start(
                EXE,
                &server,
                "jobs",
                1,
                Duration::from_secs(30),
                3,
                tag,
                env,
            )
        };
        let mut a = start("a", &[("POOL_TEST_PREFETCH", "16")]);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        let log = scratch_path("drain-log");
        // 16 jobs of 300 ms, one item each: `a` takes them all (it holds up to 16).
        let n = 16u64;
        let result =
            pool.map_async_chunked(logged_square, (0..n).map(|i| (log.clone(), i, 300)), 1);
        let t = Instant::now();
        // Until `a` has taken all 16: all are in the stream (the client submits them from its
        // own thread, so "none waiting" alone could be read before the last ones are in), and
        // none is waiting. (Not "16 pending": `a` answers one every 300 ms meanwhile.)
        let mut conn = server.client().unwrap().get_connection().unwrap();
        loop {
            let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg("pool:{jobs}:tasks")
                .query(&mut conn)
                .unwrap();
            let added = match info.get("entries-added") {
                Some(redis::Value::Int(added)) => *added as u64,
                other => panic!("XINFO STREAM without entries-added: {other:?}"),
            };
            let s = pool.status().unwrap();
            if added == n && s.waiting == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "a did not take all: {added} added, {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _b = start("b", &[]);
        wait_for_workers(&pool, 2);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            log_lines(&log).iter().all(|(_, tag)| tag == "a"),
            "b ran a job before the drain"
        );
        a.signal(libc::SIGTERM);
        let signalled = Instant::now();
        // The jobs `a` held and had not begun go back to the queue at once: `b` begins one
        // within a second.
        while !log_lines(&log).iter().any(|(_, tag)| tag == "b") {
            assert!(
                signalled.elapsed() < Duration::from_secs(1),
                "b began none of a's jobs within 1 s of the SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let handed = signalled.elapsed();
        // `a` finishes the job it runs and exits 0.
        let status = a
            .wait_exit(Duration::from_secs(10))
            .expect("a exits after draining");
        assert_eq!(status.code(), Some(0), "{status:?}");
        let exited = signalled.elapsed();
        let v = result.get().unwrap();
        let finished = signalled.elapsed();
        eprintln!(
            "SIGTERM: b began a handed-back job after {handed:?}, a exited 0 after {exited:?}, \
             the map ended after {finished:?}"
        );
        assert_eq!(v, (0..n).map(|i| i * i).collect::<Vec<_>>());
        assert!(finished < Duration::from_secs(20), "{finished:?}");
        // Nothing lost, nothing left: every item ran (those `a` finished, once).
        let lines = log_lines(&log);
        for i in 0..n {
            assert!(lines.iter().any(|(x, _)| *x == i), "item {i} never ran");
        }
        let status = pool.status().unwrap();
        assert_eq!((status.waiting, status.pending), (0, 0), "{status:?}");
    });
}

#[test]
fn a_second_signal_stops_a_worker_at_once_and_its_jobs_are_taken_over() {
    deadline(120, "second signal", || {
        let server = RedisServer::start(false);
        let mut a = worker(&server, "jobs", 1, "a");
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        let log = scratch_path("second-signal-log");
        let result = pool.apply_async(logged_square, (log.clone(), 7, 5_000));
        let t = Instant::now();
        while log_lines(&log).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(20), "the job never began");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Ctrl-C reaches the whole process group; the local processes ignore it.
        // SAFETY: killpg only signals the group the test started.
        unsafe { libc::killpg(a.pid(), libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(100));
        assert!(a.status().is_none(), "one SIGINT drains: the job runs on");
        // SAFETY: as above.
        unsafe { libc::killpg(a.pid(), libc::SIGINT) };
        let status = a
            .wait_exit(Duration::from_secs(2))
            .expect("a second SIGINT ends it");
        assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
        // The job it held is taken over after claim_idle (1.5 s) by another worker.
        let _b = worker(&server, "jobs", 1, "b");
        assert_eq!(result.get().unwrap(), 49);
        assert!(log_lines(&log).iter().any(|(_, tag)| tag == "b"));
    });
}
