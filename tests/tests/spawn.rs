//! The spawn start method: workers are the program's binary run again, attached through
//! `pool_core::init()`. Exercised through `pool-helper`, whose `main` carries
//! `#[pool_core::main]` (a test binary's own `main` is the test harness's).

use std::process::Command;

use pool_tests::deadline;

#[test]
fn a_spawn_pool_runs_tasks_survives_crashes_and_joins() {
    let out = deadline(60, "spawn pool", || {
        Command::new(env!("CARGO_BIN_EXE_pool-helper"))
            .arg("spawn")
            .output()
            .expect("helper runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for expected in [
        "map_len=10000 map_last=99980001",
        "worker_is_other=true worker_parent_is_me=true",
        "panic=seven",
        "died=killed by signal 6 (SIGABRT)",
        "after_death=100",
        "workers=2",
        "joined=true",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn a_binary_without_init_cannot_serve_as_a_spawned_worker() {
    let out = deadline(60, "spawn without init", || {
        Command::new(env!("CARGO_BIN_EXE_pool-helper-noinit"))
            .output()
            .expect("helper runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The re-run binary refused to build a pool of its own, said why, and exited; the parent
    // then reports that its worker never attached, naming the fix.
    assert!(
        stdout.contains("error=could not start a worker process"),
        "{stdout}"
    );
    assert!(stdout.contains("pool_core::init()"), "{stdout}");
    assert!(
        stdout.contains("did not call pool_core::init() first"),
        "the would-be worker's own pool should refuse: {stdout}"
    );
}
