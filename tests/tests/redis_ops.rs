//! pool-redis as operators run it: outages and passwords logged, workers that give up instead
//! of sitting silent, dead letters, stale consumers, purge and cancel, and the `pool-redis`
//! command-line tool. Each test has its own `redis-server` (and fails, never skips, without
//! one).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pool_redis::{DeadKind, RedisPool};
use pool_tests::deadline;
use pool_tests::redis::{
    mark, needs_file, slow_square, square, square_unless, RedisServer, WorkerProcess,
};

const EXE: &str = env!("CARGO_BIN_EXE_redis-worker");

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("redis-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A worker of 1 process whose log (its `tracing` events) goes to `log`.
fn logged_worker(
    server: &RedisServer,
    tag: &str,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> WorkerProcess {
    WorkerProcess::start_logged(
        EXE,
        server,
        "jobs",
        1,
        Duration::from_millis(1500),
        3,
        tag,
        env,
        Some(log),
    )
}

fn read(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits up to `secs` for `cond`, failing with `what`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_workers(pool: &RedisPool, n: usize) {
    wait_for(20, "workers alive", || {
        pool.status()
            .map(|s| s.workers.iter().filter(|w| w.alive).count() >= n)
            .unwrap_or(false)
    });
}

#[test]
fn a_worker_started_while_redis_is_down_retries_with_logs_then_serves_or_gives_up() {
    deadline(120, "start against a down Redis", || {
        let mut server = RedisServer::start(false);
        server.stop();
        // Gives up after 2 s without Redis: logs each try, then exits non-zero.
        let log = scratch("down-at-start.log");
        let mut w = logged_worker(&server, "a", &log, &[("POOL_TEST_MAX_OUTAGE_MS", "2000")]);
        let status = w
            .wait_exit(Duration::from_secs(30))
            .expect("the worker gives up");
        let text = read(&log);
        assert!(!status.success(), "{status:?}\n{text}");
        let tries = text.matches("Redis; retrying").count();
        assert!(tries >= 2, "{tries} logged tries:\n{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{}", server.port)),
            "the log names the server:\n{text}"
        );
        assert!(text.contains("not starting"), "{text}");
        // With a longer limit, it waits for Redis and then serves.
        let log = scratch("down-then-up.log");
        let _w = logged_worker(&server, "b", &log, &[("POOL_TEST_MAX_OUTAGE_MS", "60000")]);
        std::thread::sleep(Duration::from_millis(1500));
        server.start_again(None);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        let text = read(&log);
        assert!(text.contains("Redis; retrying"), "{text}");
        assert!(text.contains("reconnected to Redis"), "{text}");
    });
}

#[test]
fn an_outage_is_logged_with_its_reconnection_and_the_worker_goes_on() {
    deadline(120, "outage logs", || {
        let mut server = RedisServer::start(false);
        let log = scratch("outage.log");
        let _w = logged_worker(&server, "a", &log, &[]);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        server.stop();
        std::thread::sleep(Duration::from_millis(1500));
        server.start_again(None);
        wait_for(20, "the reconnection is logged", || {
            read(&log).contains("reconnected to Redis")
        });
        let text = read(&log);
        assert!(text.contains("lost the connection to Redis"), "{text}");
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("user=default"),
            "the log names the user:\n{text}"
        );
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        assert_eq!(pool.apply(square, 9).unwrap(), 81);
    });
}

#[test]
fn a_password_changed_under_a_worker_is_an_error_and_the_worker_exits_non_zero() {
    deadline(120, "password change", || {
        let mut server = RedisServer::start_with(false, Some("first-s3cret"), false);
        let log = scratch("password.log");
        let mut w = logged_worker(&server, "a", &log, &[("POOL_TEST_MAX_OUTAGE_MS", "3000")]);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        drop(pool);
        server.start_again(Some("second-s3cret"));
        let status = w
            .wait_exit(Duration::from_secs(40))
            .expect("the worker gives up");
        let text = read(&log);
        assert!(!status.success(), "{status:?}\n{text}");
        assert!(text.contains("refused the credentials"), "{text}");
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("user=default"), "{text}");
        assert!(text.contains("cannot serve"), "{text}");
        assert!(!text.contains("s3cret"), "a password in the log:\n{text}");
    });
}

#[test]
fn malformed_entries_land_in_the_dead_letters_with_reasons_and_a_broken_stream_stops_the_worker() {
    deadline(120, "malformed entries", || {
        let server = RedisServer::start(false);
        let log = scratch("malformed.log");
        let mut w = logged_worker(&server, "a", &log, &[("POOL_TEST_MAX_OUTAGE_MS", "3000")]);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        let mut conn = server.client().unwrap().get_connection().unwrap();
        let add = |conn: &mut redis::Connection, fields: &[(&str, &[u8])]| {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("pool:{jobs}:tasks").arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(*v);
            }
            cmd.query::<String>(conn).unwrap()
        };
        let no_reply = add(
            &mut conn,
            &[("task", b"square"), ("args", b"\x90"), ("id", b"1")],
        );
        let bad_id = add(
            &mut conn,
            &[
                ("task", b"square"),
                ("args", b"\x90"),
                ("reply", b"c"),
                ("id", b"x"),
            ],
        );
        let bad_args = add(
            &mut conn,
            &[
                ("task", b"square"),
                ("args", b"garbage"),
                ("reply", b"c"),
                ("id", b"2"),
            ],
        );
        let admin = pool.admin().unwrap();
        wait_for(20, "three dead letters", || {
            admin.dead_count().unwrap() == 3
        });
        let letters = admin.dead_letters(10).unwrap();
        let by_entry = |entry: &str| {
            letters
                .iter()
                .find(|l| l.entry == entry)
                .unwrap_or_else(|| panic!("no dead letter for {entry}: {letters:?}"))
        };
        for (entry, words) in [
            (&no_reply, "no reply client"),
            (&bad_id, "non-numeric id"),
            (&bad_args, "args are not a MessagePack list"),
        ] {
            let l = by_entry(entry);
            assert_eq!(l.kind, DeadKind::Malformed);
            assert!(l.reason.contains(words), "{l:?}");
            assert_eq!(l.task, "square");
        }
        assert!(read(&log).contains("malformed job entry"));
        // The entries are gone from the queue.
        let status = pool.status().unwrap();
        assert_eq!((status.waiting, status.pending), (0, 0));
        // A task stream overwritten by a string: logged, and the worker gives up.
        redis::cmd("DEL")
            .arg("pool:{jobs}:tasks")
            .query::<()>(&mut conn)
            .unwrap();
        redis::cmd("SET")
            .arg("pool:{jobs}:tasks")
            .arg("oops")
            .query::<()>(&mut conn)
            .unwrap();
        let status = w
            .wait_exit(Duration::from_secs(30))
            .expect("the worker gives up");
        let text = read(&log);
        assert!(!status.success(), "{status:?}\n{text}");
        assert!(text.contains("cannot read the queue"), "{text}");
        assert!(text.contains("WRONGTYPE"), "{text}");
    });
}

#[test]
fn failed_and_given_up_jobs_are_dead_letters_that_can_be_requeued_and_purged() {
    deadline(120, "dead letters", || {
        let server = RedisServer::start(false);
        let log = scratch("dead.log");
        let _w = logged_worker(&server, "a", &log, &[]);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        let admin = pool.admin().unwrap();
        // A failed item of a map: one dead letter for its job, with the reason.
        let err = pool
            .map_chunked(square_unless, (0..20u64).map(|i| (i, 7)), 5)
            .unwrap_err();
        assert!(err.to_string().contains("7 is bad"), "{err}");
        wait_for(10, "a dead letter", || admin.dead_count().unwrap() == 1);
        let letter = &admin.dead_letters(1).unwrap()[0];
        assert_eq!(letter.kind, DeadKind::Failed);
        assert!(letter.reason.contains("7 is bad"), "{letter:?}");
        assert!(letter.reason.contains("1 of 5 items failed"), "{letter:?}");
        assert_eq!(letter.task, "pool_tests::redis::square_unless");
        assert_eq!(
            letter.client.as_ref().map(|c| c.0.as_str()),
            Some(pool.id())
        );
        // A job that fails until an operator fixes something, then is requeued.
        let file = scratch("needed");
        let _ = std::fs::remove_file(format!("{}.done", file.display()));
        let call = pool.apply(needs_file, file.display().to_string());
        assert!(call.is_err());
        wait_for(10, "a second dead letter", || {
            admin.dead_count().unwrap() == 2
        });
        let letter = admin.dead_letters(1).unwrap().remove(0);
        assert!(letter.reason.contains("is missing"), "{letter:?}");
        let shown = admin.dead_letter(&letter.id).unwrap().unwrap();
        assert_eq!(shown, letter);
        std::fs::write(&file, "here").unwrap();
        assert_eq!(admin.requeue_dead(&[&letter.id]).unwrap(), 1);
        wait_for(20, "the requeued job ran", || {
            std::path::Path::new(&format!("{}.done", file.display())).exists()
        });
        assert_eq!(admin.dead_count().unwrap(), 1);
        assert_eq!(admin.purge_dead().unwrap(), 1);
        assert_eq!(admin.dead_count().unwrap(), 0);
        // The queue still works.
        assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
    });
}

#[test]
fn dead_workers_consumers_disappear_from_the_group() {
    deadline(120, "stale consumers", || {
        let server = RedisServer::start(false);
        let log = scratch("stale-a.log");
        let mut a = logged_worker(&server, "a", &log, &[]);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        wait_for_workers(&pool, 1);
        // It reads, so it is a consumer of the group.
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        let admin = pool.admin().unwrap();
        let dead_name = admin.consumers().unwrap()[0].name.clone();
        a.kill();
        let log = scratch("stale-b.log");
        let _b = logged_worker(&server, "b", &log, &[]);
        wait_for(30, "the dead consumer is removed", || {
            admin
                .consumers()
                .unwrap()
                .iter()
                .all(|c| c.name != dead_name)
        });
        // The worker logs it just after the removal.
        wait_for(10, "the removal is logged", || {
            read(&log).contains("removed a dead worker's consumer")
        });
    });
}

#[test]
fn purge_removes_waiting_jobs_and_cancel_client_stops_a_clients_work() {
    deadline(120, "purge and cancel", || {
        let server = RedisServer::start(false);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        let admin = pool.admin().unwrap();
        // No worker: everything waits; purge answers it all Cancelled.
        let waiting: Vec<_> = (0..5).map(|i| pool.apply_async(square, i)).collect();
        wait_for(10, "jobs in the queue", || {
            pool.status().unwrap().waiting == 5
        });
        assert_eq!(admin.purge().unwrap(), 5);
        for r in &waiting {
            assert!(matches!(r.get(), Err(pool_core::Error::Cancelled)));
        }
        assert_eq!(pool.status().unwrap().waiting, 0);
        // A worker runs one slow job, three wait: cancel_client takes all four back.
        let log = scratch("cancel.log");
        let _w = logged_worker(&server, "a", &log, &[]);
        wait_for_workers(&pool, 1);
        let jobs: Vec<_> = (0..4)
            .map(|i| pool.apply_async(slow_square, (i, 20_000)))
            .collect();
        // All four in Redis (the client submits from its own thread), one taken.
        wait_for(10, "one job running, three waiting", || {
            let s = pool.status().unwrap();
            s.pending >= 1 && s.pending + s.waiting == 4
        });
        let t = Instant::now();
        let removed = admin.cancel_client(pool.id()).unwrap();
        assert!(removed >= 1, "{removed}");
        for r in &jobs {
            assert!(matches!(r.get(), Err(pool_core::Error::Cancelled)));
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(pool.outstanding(), 0);
    });
}

#[test]
fn a_job_not_begun_before_its_expiry_does_not_run() {
    deadline(120, "job expiry", || {
        let server = RedisServer::start(false);
        let pool = RedisPool::connect(&server.url(), "jobs").unwrap();
        pool.expire_jobs_after(Some(Duration::from_millis(300)));
        let never = scratch("expired-mark");
        let late = pool.apply_async(mark, never.display().to_string());
        std::thread::sleep(Duration::from_millis(800));
        pool.expire_jobs_after(None);
        let on_time = pool.apply_async(square, 4);
        let log = scratch("expiry.log");
        let _w = logged_worker(&server, "a", &log, &[]);
        match late.get().map_err(pool_redis::Error::from) {
            Err(pool_redis::Error::Expired { task, late }) => {
                assert_eq!(task, "pool_tests::redis::mark");
                assert!(late >= Duration::from_millis(400), "{late:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!never.exists(), "the expired job ran");
        assert_eq!(on_time.get().unwrap(), 16);
        // Not a failure: no dead letter.
        assert_eq!(pool.admin().unwrap().dead_count().unwrap(), 0);
    });
}

/// The `pool-redis` binary (built here if a plain `cargo test` of this package did not).
fn cli() -> PathBuf {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let exe = target.join("pool-redis");
    if !exe.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "pool-redis", "--bin", "pool-redis"])
            .status()
            .expect("cargo runs");
        assert!(status.success());
    }
    exe
}

fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli())
        .args(args)
        .output()
        .expect("pool-redis runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_shows_status_workers_and_dead_letters_and_requeues_purges_and_cancels() {
    deadline(180, "the CLI", || {
        let server = RedisServer::start_with(false, Some("cli-s3cret"), false);
        let url = server.url();
        let log = scratch("cli.log");
        // Holding one job at a time, so that a second one waits in the queue.
        let _w = logged_worker(&server, "a", &log, &[("POOL_TEST_PREFETCH", "1")]);
        let pool = RedisPool::connect(&url, "jobs").unwrap();
        wait_for_workers(&pool, 1);
        assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
        let _ = pool.map_chunked(square_unless, (0..10u64).map(|i| (i, 3)), 10);
        let admin = pool.admin().unwrap();
        wait_for(10, "a dead letter", || admin.dead_count().unwrap() == 1);
        wait_for(10, "a heartbeat with the jobs done", || {
            pool.status().unwrap().workers[0].jobs_done >= 2
        });

        let (ok, out, err) = run_cli(&["status", &url, "jobs"]);
        assert!(ok, "{err}");
        eprintln!("$ pool-redis status URL jobs\n{out}");
        assert!(out.contains("queue jobs: 0 waiting, 0 running, 1 dead letters, 1 workers alive"));
        assert!(
            out.contains("WORKER") && out.contains("DONE") && out.contains("alive"),
            "{out}"
        );
        assert!(!out.contains("s3cret") && !err.contains("s3cret"));
        let (ok, out, _) = run_cli(&["--json", "status", &url, "jobs"]);
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["dead"], 1);
        assert_eq!(v["workers"][0]["alive"], true);
        assert!(v["workers"][0]["jobs_done"].as_u64().unwrap() >= 2, "{v}");
        assert_eq!(v["workers"][0]["failures"], 1, "{v}");

        let (ok, out, _) = run_cli(&["--json", "workers", &url, "jobs"]);
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["consumers"].as_array().unwrap().len(), 1, "{v}");

        let (ok, out, _) = run_cli(&["dead", &url, "jobs"]);
        assert!(ok);
        eprintln!("$ pool-redis dead URL jobs\n{out}");
        assert!(
            out.contains("failed") && out.contains("square_unless"),
            "{out}"
        );
        let (ok, out, _) = run_cli(&["--json", "dead", &url, "jobs"]);
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let id = v[0]["id"].as_str().unwrap().to_owned();
        assert_eq!(v[0]["kind"], "failed");
        assert_eq!(v[0]["client"], pool.id());
        let (ok, out, _) = run_cli(&["dead", &url, "jobs", "--show", &id]);
        assert!(ok);
        assert!(
            out.contains("job.task: pool_tests::redis::square_unless"),
            "{out}"
        );
        assert!(
            out.contains("3 is bad") && out.contains("1 of 10 items failed"),
            "{out}"
        );
        // Requeued, it fails again (the task is deterministic) and is a dead letter again.
        let (ok, out, _) = run_cli(&["requeue", &url, "jobs", "--all"]);
        assert!(ok);
        assert_eq!(out.trim(), "requeued 1 dead letters");
        wait_for(10, "the dead letter again", || {
            admin
                .dead_letters(1)
                .unwrap()
                .first()
                .is_some_and(|l| l.id != id)
        });
        let (ok, out, _) = run_cli(&["--json", "dead", &url, "jobs", "--purge"]);
        assert!(ok);
        assert_eq!(out.trim(), r#"{"purged":1}"#);

        // Purge and cancel: a client with waiting work behind a long job.
        let running = pool.apply_async(slow_square, (1, 20_000));
        let waiting = pool.apply_async(square, 5);
        wait_for(10, "one running, one waiting", || {
            let s = pool.status().unwrap();
            (s.pending, s.waiting) == (1, 1)
        });
        let (ok, out, _) = run_cli(&["--json", "purge", &url, "jobs"]);
        assert!(ok);
        assert_eq!(out.trim(), r#"{"purged":1}"#);
        assert!(matches!(waiting.get(), Err(pool_core::Error::Cancelled)));
        let (ok, out, _) = run_cli(&["cancel", &url, "jobs", pool.id()]);
        assert!(ok, "{out}");
        assert!(out.contains("cancelled client"), "{out}");
        assert!(matches!(running.get(), Err(pool_core::Error::Cancelled)));

        // Errors and usage.
        let (ok, _, err) = run_cli(&["status", "redis://127.0.0.1:1/", "jobs"]);
        assert!(!ok && err.starts_with("pool-redis: "), "{err}");
        let out = Command::new(cli()).arg("bogus").output().unwrap();
        assert_eq!(out.status.code(), Some(2));
    });
}
