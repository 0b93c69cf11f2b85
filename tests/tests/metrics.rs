//! The `metrics` feature of both engines, read as Prometheus would scrape it: a recorder of
//! `metrics-exporter-prometheus` is installed in this test process (its own process: the
//! recorder is global), work runs on a local pool and through Redis, and the rendered text is
//! checked line by line.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use pool_core::Pool;
use pool_redis::RedisPool;
use pool_tests::deadline;
use pool_tests::redis::{square, square_unless, RedisServer, WorkerProcess};
use pool_tests::tasks::poison;

const EXE: &str = env!("CARGO_BIN_EXE_redis-worker");

/// The value of the sample `name{labels}` in a scrape.
fn sample(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().ok())?
    })
}

#[test]
fn both_engines_report_tasks_workers_and_durations_for_a_scrape() {
    deadline(120, "metrics", || {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this process");

        let pool = Pool::builder().processes(2).build().unwrap();
        assert_eq!(pool.map(square, 0..1000).unwrap().len(), 1000);
        let outcomes = pool
            .map_results_chunked(square_unless, (0..100u64).map(|i| (i, 42)), 10)
            .unwrap();
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
        // A process that dies under a task: replaced.
        assert!(pool.apply(poison, 4321).is_err());
        let slow = pool.apply_async(pool_tests::redis::slow_square, (1, 5_000));
        std::thread::sleep(Duration::from_millis(50));
        assert!(slow.cancel());
        std::thread::sleep(Duration::from_millis(100));

        let server = RedisServer::start(false);
        let _w = WorkerProcess::serving(EXE, &server, "jobs", 1, "a", &[]);
        let remote = RedisPool::connect(&server.url(), "jobs").unwrap();
        assert_eq!(remote.map_chunked(square, 0..500, 50).unwrap().len(), 500);
        assert!(remote
            .map_chunked(square_unless, (0..10u64).map(|i| (i, 3)), 10)
            .is_err());

        let scrape = handle.render();
        eprintln!("{scrape}");
        let local = |name: &str| sample(&scrape, &format!("{name}{{engine=\"local\"}}"));
        let redis = |name: &str| sample(&scrape, &format!("{name}{{engine=\"redis\"}}"));
        assert_eq!(local("pool_tasks_submitted_total"), Some(1102.0));
        // 999 + 99 values; the failures: one panic, one crash (the cancelled nap is neither).
        assert_eq!(local("pool_tasks_completed_total"), Some(1099.0));
        assert_eq!(local("pool_tasks_failed_total"), Some(2.0));
        assert_eq!(local("pool_tasks_cancelled_total"), Some(1.0));
        assert!(
            local("pool_workers_replaced_total").unwrap() >= 2.0,
            "{scrape}"
        );
        assert_eq!(local("pool_workers_alive"), Some(2.0));
        assert!(scrape.contains("pool_task_duration_seconds_count{engine=\"local\"}"));
        assert_eq!(redis("pool_tasks_submitted_total"), Some(510.0));
        assert_eq!(redis("pool_tasks_completed_total"), Some(509.0));
        assert_eq!(redis("pool_tasks_failed_total"), Some(1.0));
    });
}
