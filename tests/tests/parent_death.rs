//! Workers never outlive their parent, even when it is killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pool_tests::{deadline, is_alive, stat};

/// Starts `pool-helper MODE` in a process group of its own and reads the pids it prints.
fn start_helper(mode: &str) -> (std::process::Child, Vec<i32>) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_pool-helper"));
    command
        .arg(mode)
        .stdout(Stdio::piped())
        // Its own process group, like a foreground job in a terminal.
        .process_group(0);
    // SAFETY: between fork and exec the closure only makes async-signal-safe `signal` calls.
    // A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    // across exec: give the helper the default disposition a program run from a terminal has.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut parent = command.spawn().expect("helper starts");
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (parent, pids)
}

fn kill_parent_and_watch_workers(mode: &str) {
    let label = mode;
    let (ctrl_c, mode) = match mode.strip_prefix("ctrl-c:") {
        Some(mode) => (true, mode),
        None => (false, mode),
    };
    let busy = mode.ends_with("busy");
    let (mut parent, workers) = start_helper(mode);
    assert_eq!(workers.len(), 3, "{workers:?}");
    if busy {
        std::thread::sleep(Duration::from_millis(100)); // let the tasks start
    }
    let mut watched = workers.clone();
    for &pid in &workers {
        assert!(is_alive(pid), "worker {pid} should be running");
        // A fork server's workers are its children: it must go too.
        let ppid = stat(pid).expect("worker's stat").ppid;
        if ppid != parent.id() as i32 && !watched.contains(&ppid) {
            watched.push(ppid);
        }
    }
    let killed = Instant::now();
    if ctrl_c {
        // What Ctrl-C does: SIGINT to the whole foreground process group. The workers ignore
        // it; the parent dies of it (its default action), and the workers follow.
        let group = nix::unistd::Pid::from_raw(-(parent.id() as i32));
        nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = parent.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    } else {
        parent.kill().unwrap(); // SIGKILL: no code of the parent runs
        parent.wait().unwrap();
    }
    loop {
        let alive: Vec<_> = watched.iter().filter(|&&p| is_alive(p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "workers (or their fork server) {alive:?} still alive {:?} after their parent was SIGKILLed",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "{label}: all workers gone {:?} after the parent was killed",
        killed.elapsed()
    );
}

#[test]
fn idle_workers_die_with_a_sigkilled_parent() {
    deadline(30, "idle parent death", || {
        kill_parent_and_watch_workers("fork-idle")
    });
}

#[test]
fn busy_workers_die_with_a_sigkilled_parent() {
    deadline(30, "busy parent death", || {
        kill_parent_and_watch_workers("fork-busy")
    });
}

#[test]
fn ctrl_c_stops_the_parent_and_its_workers() {
    deadline(30, "ctrl-c", || {
        kill_parent_and_watch_workers("ctrl-c:fork-busy")
    });
}

#[test]
fn spawned_workers_die_with_a_sigkilled_parent() {
    deadline(30, "spawn parent death", || {
        kill_parent_and_watch_workers("spawn-busy")
    });
}

#[test]
fn fork_server_workers_die_with_a_sigkilled_parent() {
    deadline(30, "fork server parent death", || {
        kill_parent_and_watch_workers("forkserver-busy")
    });
}

#[test]
fn idle_fork_server_workers_die_with_a_sigkilled_parent() {
    deadline(30, "fork server parent death, idle", || {
        kill_parent_and_watch_workers("forkserver-idle")
    });
}

#[test]
fn ctrl_c_stops_the_parent_its_fork_server_and_workers() {
    deadline(30, "ctrl-c, fork server", || {
        kill_parent_and_watch_workers("ctrl-c:forkserver-busy")
    });
}

#[test]
fn a_daemon_process_dies_with_its_parent_and_a_non_daemon_one_does_not() {
    deadline(30, "daemon process", || {
        let (mut parent, pids) = start_helper("daemon");
        let (daemon, other) = (pids[0], pids[1]);
        assert!(is_alive(daemon) && is_alive(other));
        parent.kill().unwrap();
        parent.wait().unwrap();
        let killed = Instant::now();
        while is_alive(daemon) {
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "daemon {daemon} outlived its parent"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let survived = is_alive(other);
        // SAFETY: kill only sends a signal to the orphan this test made.
        unsafe { libc::kill(other, libc::SIGKILL) };
        assert!(
            survived,
            "a non-daemon process outlives its parent, as in Python"
        );
    });
}
