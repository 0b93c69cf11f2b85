//! Creating and dropping pools leaves no zombie, no live worker and no open descriptor behind.
//! (One test in this binary, so no other test's pools or descriptors disturb the counts.)

mod common;

use common::*;
use pool_core::Pool;
use pool_tests::{children, deadline, eventually, open_fds};

#[test]
fn two_hundred_pools_leave_nothing_behind() {
    deadline(240, "200 pools", || {
        // Warm up anything lazily opened once per process.
        drop(Pool::builder().processes(2).build().unwrap());
        let fds_before = open_fds();
        let children_before = children().len();
        let mut all_pids = Vec::new();
        for i in 0..200u64 {
            let pool = Pool::builder().processes(2).build().unwrap();
            all_pids.extend(pool.worker_pids());
            match i % 4 {
                // Dropped idle.
                0 => {}
                // Dropped with work queued and running.
                1 => {
                    let _r = pool.apply_async(sleep_ms, 50);
                    let _m = pool.map_async(square, 0..1000);
                }
                // Closed and joined.
                2 => {
                    assert_eq!(pool.apply(square, i).unwrap(), i * i);
                    pool.close();
                    pool.join().unwrap();
                }
                // Terminated mid-work, then joined.
                _ => {
                    let _r = pool.apply_async(sleep_forever, ());
                    pool.terminate();
                    pool.join().unwrap();
                }
            }
            drop(pool);
            let zombies: Vec<_> = children().into_iter().filter(|c| c.state == 'Z').collect();
            assert!(zombies.is_empty(), "cycle {i}: zombies {zombies:?}");
        }
        assert_eq!(all_pids.len(), 400);
        assert!(
            eventually(5, || children().len() == children_before),
            "children left: {:?}",
            children()
        );
        for worker in all_pids {
            assert!(
                !pool_tests::is_alive(worker),
                "worker {worker} outlived its pool"
            );
        }
        let fds_after = open_fds();
        assert_eq!(
            fds_before, fds_after,
            "open descriptors before and after 200 pools"
        );
    });
}
