//! Helpers shared by the pool-tests test binaries: deadlines, and views of this process's
//! children and descriptors from `/proc`.

pub mod redis;
pub mod tasks;

use std::time::Duration;

pub use pool_testkit::{deadline, run_helper, HelperOutput};

/// The start method a helper binary's argument names: `fork`, `forkserver` or `spawn`.
pub fn start_method(name: &str) -> pool_core::StartMethod {
    match name {
        "fork" => pool_core::StartMethod::Fork,
        "forkserver" => pool_core::StartMethod::ForkServer,
        "spawn" => pool_core::StartMethod::Spawn,
        other => panic!("unknown start method {other:?}"),
    }
}

/// A pool of two workers started with `method`, for the helper binaries.
pub fn pool_of(method: pool_core::StartMethod) -> pool_core::Pool {
    pool_core::Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .expect("pool starts")
}

/// The number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One process as `/proc/PID/stat` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// State letter: R, S, D, Z, …
    pub state: char,
    /// Parent's process id.
    pub ppid: i32,
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcStat { pid, state, ppid })
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn is_alive(pid: i32) -> bool {
    matches!(stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// The children of this process, with their states.
pub fn children() -> Vec<ProcStat> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|s| s.ppid == me)
        .collect()
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `cond` every 10 ms for up to `secs`; returns whether it became true.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A small deterministic xorshift generator, so a failing randomized run can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A waker that unparks the current thread: with `std::thread::park`, the smallest executor.
pub fn park_waker() -> std::task::Waker {
    use std::sync::Arc;
    use std::task::Wake;
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    Arc::new(Unpark(std::thread::current())).into()
}
