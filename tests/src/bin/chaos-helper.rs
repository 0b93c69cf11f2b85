//! A program of its own for the chaos tests that need one (its `main` carries
//! `#[pool_core::main]`, so the fork server runs and spawned workers attach). Each mode prints
//! `key=value` lines for the test to read:
//!
//! - `nested METHOD`: an outer pool of that start method whose tasks build and use pools of
//!   their own (the inner default, and `Spawn`).
//! - `closefds METHOD`: tasks that close every descriptor of their worker, then return.
//! - `forkserver-killed`: kills the fork server, then uses pools and builds new ones.
//! - `sigchld-ignored`: with SIGCHLD ignored, `Process` exit codes and a pool.

use std::time::{Duration, Instant};

use pool_core::{task, Pool, StartMethod};
use pool_tests::tasks::{abort_now, exit_with, square};
use pool_tests::{pool_of, start_method};

/// Builds a pool inside the worker (with `method`, or the default) and sums a map in it.
#[task]
fn inner_sum(n: u64, spawn: bool) -> Result<u64, String> {
    // Pools of several sizes in a row: the address ranges this worker freed at its start get
    // reused by the inner pools' regions and threads.
    let mut sum = 0;
    for processes in [3, 2] {
        let mut builder = Pool::builder().processes(processes);
        if spawn {
            builder = builder.start_method(StartMethod::Spawn);
        }
        let pool = builder.build().map_err(|e| e.to_string())?;
        let v = pool.map(square, 0..n).map_err(|e| e.to_string())?;
        let again = pool.apply(square, 12).map_err(|e| e.to_string())?;
        sum = v.iter().sum::<u64>() + again;
    }
    Ok(sum)
}

/// Closes every descriptor of this worker (0 to the highest), then answers.
#[task]
fn close_all_fds(x: u64) -> u64 {
    // SAFETY: close_range only closes descriptors; nothing in this task uses one afterwards.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    x + 1
}

#[pool_core::main]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["nested", m] => nested(start_method(m)),
        ["closefds", m] => closefds(start_method(m)),
        ["forkserver-killed"] => forkserver_killed(),
        ["sigchld-ignored"] => sigchld_ignored(),
        _ => panic!(
            "usage: chaos-helper (nested M | closefds M | forkserver-killed | sigchld-ignored)"
        ),
    }
}

fn nested(method: StartMethod) {
    let pool = Pool::builder()
        .processes(4)
        .start_method(method)
        .build()
        .expect("pool starts");
    let want: u64 = (0..1000u64).map(|x| x * x).sum::<u64>() + 144;
    let (mut ok, mut bad) = (0, Vec::new());
    for round in 0..10 {
        for spawn in [false, true] {
            match pool.apply(inner_sum, (1000, spawn)) {
                Ok(Ok(sum)) if sum == want => ok += 1,
                other => bad.push(format!("round {round} spawn={spawn}: {other:?}")),
            }
        }
    }
    println!("ok={ok}");
    println!("bad={bad:?}");
    println!(
        "outer_after={}",
        pool.map(square, 0..100).map(|v| v[99]).unwrap_or(0)
    );
}

fn closefds(method: StartMethod) {
    let pool = pool_of(method);
    let (mut ok, mut bad) = (0, Vec::new());
    for i in 0..30u64 {
        // Alternate a lone call (the collector likely asleep) with a burst behind it.
        let r = pool.apply_async(close_all_fds, i);
        let burst: Vec<_> = (0..(i % 3)).map(|j| pool.apply_async(square, j)).collect();
        match r.get_timeout(Duration::from_secs(20)) {
            Ok(v) if v == i + 1 => ok += 1,
            other => bad.push(format!("{i}: {other:?}")),
        }
        for (j, b) in burst.into_iter().enumerate() {
            if b.get_timeout(Duration::from_secs(20)).ok() != Some((j * j) as u64) {
                bad.push(format!("{i}: burst item {j}"));
            }
        }
    }
    println!("ok={ok}");
    println!("bad={bad:?}");
    println!(
        "after={}",
        pool.map(square, 0..1000).map(|v| v[999]).unwrap_or(0)
    );
    println!("workers={}", pool.worker_pids().len());
}

fn forkserver_killed() {
    let pool = pool_of(StartMethod::ForkServer);
    let worker = pool.worker_pids()[0];
    let server = pool_tests::stat(worker).expect("the worker runs").ppid;
    println!(
        "server_was_child={}",
        pool_tests::stat(server).map(|s| s.ppid) == Some(std::process::id() as i32)
    );
    // SAFETY: kill sends a signal to a process of ours.
    unsafe { libc::kill(server, libc::SIGKILL) };
    let started = Instant::now();
    // The pool's workers die with the server; the pool replaces them through a new server.
    let mut results = Vec::new();
    for i in 0..20u64 {
        results.push(pool.apply(square, i).map_err(|e| e.to_string()));
    }
    // A task that was running on a worker the server took down with it fails as any task
    // whose worker is killed does (WorkerDied); nothing else may fail.
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    println!("failed_after_kill={}", failed.len());
    println!(
        "failures_all_worker_died={}",
        failed
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.contains("died")))
    );
    let ok = (0..20u64).all(|i| pool.apply(square, i).ok() == Some(i * i));
    println!("pool_serves={ok}");
    let fresh = Pool::builder()
        .processes(2)
        .start_method(StartMethod::ForkServer)
        .build();
    let fresh_ok = fresh
        .as_ref()
        .map(|p| p.map(square, 0..100).map(|v| v[99]))
        .map_err(|e| e.to_string());
    println!("fresh={fresh_ok:?}");
    let new_server = fresh
        .as_ref()
        .ok()
        .and_then(|p| p.worker_pids().first().copied())
        .and_then(pool_tests::stat)
        .map(|s| s.ppid);
    println!(
        "new_server_differs={}",
        new_server.is_some_and(|s| s != server)
    );
    println!(
        "new_server_parent_is_program={}",
        new_server.and_then(pool_tests::stat).map(|s| s.ppid) == Some(std::process::id() as i32)
    );
    println!("secs={:.2}", started.elapsed().as_secs_f64());
}

fn sigchld_ignored() {
    // SAFETY: sets a disposition to SIG_IGN; no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let codes: Vec<Option<i32>> = [
        pool_core::Process::new(square, 3),
        pool_core::Process::new(exit_with, 7),
        pool_core::Process::new(abort_now, ()),
    ]
    .into_iter()
    .map(|p| {
        let h = p.start().expect("process starts");
        h.join();
        assert!(!h.is_alive());
        h.exitcode()
    })
    .collect();
    println!("codes={codes:?}");
    let pool = pool_of(StartMethod::Fork);
    println!("pool={:?}", pool.map(square, 0..100).map(|v| v[99]));
    println!(
        "died={:?}",
        pool.apply(abort_now, ())
            .map_err(|e| matches!(e, pool_core::Error::WorkerDied { .. }))
    );
    println!("pool_after={:?}", pool.map(square, 0..100).map(|v| v[99]));
}
