//! Start methods: fork, fork server, spawn. Exercised through `pool-helper`, whose `main`
//! carries `#[pool_core::main]` (a test binary's own `main` is the test harness's, which does not
//! call `pool_core::init()`).

use std::process::Command;

use pool_tests::deadline;

fn helper(args: &[&str], secs: u64) -> String {
    let out = pool_tests::run_helper(env!("CARGO_BIN_EXE_pool-helper"), args, secs);
    eprintln!("pool-helper {}:\n{}", args.join(" "), out.stdout);
    out.stdout
}

fn assert_lines(stdout: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            stdout.lines().any(|l| l == *line),
            "missing {line:?} in:\n{stdout}"
        );
    }
}

/// What every start method must do: run tasks, report a panic and a crash and a timeout on the
/// task that caused them, replace the worker, join, and leave no process behind.
const COMMON: &[&str] = &[
    "default=ForkServer",
    "map_len=10000 map_last=99980001",
    "panic=seven",
    "died=killed by signal 6 (SIGABRT)",
    "after_death=100",
    "timeout=ok",
    "after_timeout=144",
    "queue_from_workers=285",
    "workers=2",
    "joined=true",
];

#[test]
fn fork_server_workers_are_children_of_the_server_and_single_threaded() {
    let out = helper(&["checks", "forkserver"], 60);
    assert_lines(&out, COMMON);
    assert_lines(
        &out,
        &[
            "worker_is_other=true worker_parent=my-child",
            "worker_threads=1",
            "left_over=[]",
        ],
    );
}

#[test]
fn spawned_workers_run_tasks_survive_crashes_and_join() {
    let out = helper(&["checks", "spawn"], 60);
    assert_lines(&out, COMMON);
    assert_lines(
        &out,
        &[
            "worker_is_other=true worker_parent=me",
            "worker_threads=1",
            "left_over=[]",
        ],
    );
}

#[test]
fn forked_workers_in_a_program_that_called_init() {
    let out = helper(&["checks", "fork"], 60);
    assert_lines(&out, COMMON);
    assert_lines(
        &out,
        &["worker_is_other=true worker_parent=me", "left_over=[]"],
    );
}

/// 200 pools created and dropped beside 8 threads that allocate, print and hold mutexes, with
/// each start method: forking a busy multi-threaded program must not hang the pool (the pool's
/// own code takes no lock those threads could hold), and the other two never fork it.
#[test]
fn two_hundred_fork_pools_beside_eight_busy_threads() {
    let out = helper(&["threads", "fork"], 240);
    assert!(out.contains("pools=200"), "{out}");
}

#[test]
fn two_hundred_fork_server_pools_beside_eight_busy_threads() {
    let out = helper(&["threads", "forkserver"], 240);
    assert!(out.contains("pools=200"), "{out}");
}

#[test]
fn two_hundred_spawn_pools_beside_eight_busy_threads() {
    let out = helper(&["threads", "spawn"], 400);
    assert!(out.contains("pools=200"), "{out}");
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
