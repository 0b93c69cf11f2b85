//! pool-redis on a Redis Cluster of 3 masters with a replica each (feature `cluster`): the
//! client and two workers against it, then the master serving the queue killed mid-map while
//! its replica takes over.

use std::time::{Duration, Instant};

use pool_redis::RedisPool;
use pool_tests::deadline;
use pool_tests::redis::{slow_square, square, RedisCluster, WorkerProcess};

const EXE: &str = env!("CARGO_BIN_EXE_redis-worker");

fn log(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("redis-cluster-{}-{name}.log", std::process::id()))
}

#[test]
fn a_cluster_serves_the_queue_and_survives_its_master_failing_over() {
    deadline(240, "redis cluster", || {
        let mut cluster = RedisCluster::start(3);
        let urls = cluster.urls();
        let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
        let claim = Duration::from_millis(3000);
        let _a = WorkerProcess::start_cluster(EXE, &cluster, "jobs", 1, claim, "a", &log("a"));
        let _b = WorkerProcess::start_cluster(EXE, &cluster, "jobs", 1, claim, "b", &log("b"));
        let pool = RedisPool::connect_cluster(&nodes, "jobs").unwrap();
        let t = Instant::now();
        while pool
            .status()
            .unwrap()
            .workers
            .iter()
            .filter(|w| w.alive)
            .count()
            < 2
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "workers did not report"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        let v = pool.map_chunked(square, 0..2000u64, 50).unwrap();
        assert_eq!(v, (0..2000u64).map(|i| i * i).collect::<Vec<_>>());
        let admin = pool_redis::Admin::connect_cluster(&nodes, "jobs").unwrap();
        assert_eq!(admin.status().unwrap().workers.len(), 2);

        // The master serving the queue dies mid-map; its replica takes over.
        let master = cluster.master_of("pool:{jobs}:tasks");
        let n = 400u64;
        let result = pool.map_async_chunked(slow_square, (0..n).map(|i| (i, 10)), 10);
        std::thread::sleep(Duration::from_millis(700));
        assert!(!result.ready(), "the map should still be running");
        // The failover this test is about: a replica that holds its master's writes. (A
        // replica that was not in sync would start empty: what a cluster loses then is not
        // this crate's to recover.)
        cluster.wait_replicated(master);
        cluster.kill(master);
        let killed = Instant::now();
        let outcome = result.get_timeout(Duration::from_secs(120));
        eprintln!(
            "after the master was killed: {:?} in {:?}",
            outcome.as_ref().map(|v| v.len()),
            killed.elapsed()
        );
        let v = outcome.expect("the map is answered after the failover");
        assert_eq!(v, (0..n).map(|i| i * i).collect::<Vec<_>>());
        let promoted = cluster.master_of("pool:{jobs}:tasks");
        assert_ne!(promoted, master);
        // New work flows through the new master.
        assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    });
}
