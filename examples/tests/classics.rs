//! Runs every classic `multiprocessing` example and checks what it prints.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `exe` with a 60 s limit (killed and failed past it); returns its standard output.
fn run(exe: &str) -> String {
    let mut child = Command::new(exe)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the example starts");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert!(status.success(), "{exe} failed: {status}\n{out}");
            return out;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{exe} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(out: &str, needle: &str) -> usize {
    out.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn data_isolation() {
    let out = run(env!("CARGO_BIN_EXE_mp_isolation"));
    assert_eq!(count(&out, "counter = 99"), 10, "{out}");
    assert!(out.contains("parent: counter = 100"), "{out}");
}

#[test]
fn a_sum_through_a_queue_and_a_pipe() {
    let out = run(env!("CARGO_BIN_EXE_mp_queue_pipe"));
    assert!(
        out.contains("from the queue: 60") && out.contains("from the pipe: 60"),
        "{out}"
    );
}

#[test]
fn five_children_send_their_parents_pid() {
    let out = run(env!("CARGO_BIN_EXE_mp_pipe_pids"));
    assert_eq!(count(&out, "received"), 5, "{out}");
    assert!(
        out.contains("5 of 5 children sent their parent's pid"),
        "{out}"
    );
}

#[test]
fn buns_with_sentinels() {
    let out = run(env!("CARGO_BIN_EXE_mp_buns"));
    assert_eq!(count(&out, " ate bun "), 30, "{out}");
    for bun in 1..=30 {
        let eaten = out
            .lines()
            .filter(|l| l.ends_with(&format!(" ate bun {bun}")))
            .count();
        assert_eq!(eaten, 1, "bun {bun} eaten {eaten} times:\n{out}");
    }
    assert!(out.contains("all 30 buns eaten by 10 consumers"), "{out}");
}

#[test]
fn buns_with_a_joinable_queue() {
    let out = run(env!("CARGO_BIN_EXE_mp_buns_joinable"));
    assert_eq!(count(&out, " ate bun "), 30, "{out}");
    assert!(out.contains("all 30 buns eaten"), "{out}");
}

#[test]
fn five_squares() {
    let out = run(env!("CARGO_BIN_EXE_mp_squares"));
    for n in 1..=5u64 {
        assert!(out.contains(&format!("{n} squared is {}", n * n)), "{out}");
    }
}

#[test]
fn a_value_watched_by_another_process() {
    let out = run(env!("CARGO_BIN_EXE_mp_value_watch"));
    assert!(out.contains("watcher: the value is now 5"), "{out}");
    assert!(out.contains("parent: final value 5"), "{out}");
}

#[test]
fn an_array_of_chars_rewritten_by_a_child() {
    let out = run(env!("CARGO_BIN_EXE_mp_array_chars"));
    assert!(
        out.contains("before: hello from the parent process (100 bytes)"),
        "{out}"
    );
    assert!(
        out.contains("after:  HELLO FROM THE PARENT PROCESS"),
        "{out}"
    );
}

#[test]
fn a_custom_process_type() {
    let out = run(env!("CARGO_BIN_EXE_mp_custom_process"));
    assert_eq!(count(&out, "The time is "), 5, "{out}");
    assert!(out.contains("clock exited with code Some(0)"), "{out}");
}

#[test]
fn pool_apply_async_close_join() {
    let out = run(env!("CARGO_BIN_EXE_mp_pool_apply_async"));
    for x in 1..=5u64 {
        assert!(
            out.contains(&format!("{x} cubed is {}", x * x * x)),
            "{out}"
        );
    }
}

#[test]
fn a_safe_fork() {
    let out = run(env!("CARGO_BIN_EXE_mp_fork"));
    assert!(out.contains("child: my pid is"), "{out}");
    assert!(out.contains("parent: reaped child"), "{out}");
    assert!(out.contains("(exit code 0); zombie left: no"), "{out}");
}
