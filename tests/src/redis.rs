//! The Redis fixtures: the private `redis-server` (`pool_testkit::RedisServer`, re-exported),
//! a launcher for the `redis-worker` binary, and the tasks the Redis tests and their worker binary
//! (`redis-worker`) share.

use std::process::{Child, Command};
use std::time::Duration;

use pool_core::task;
pub use pool_testkit::{RedisCluster, RedisServer};

/// `x * x`.
#[task]
pub fn square(x: u64) -> u64 {
    x * x
}

/// `x * x`, after sleeping `ms` milliseconds.
#[task]
pub fn slow_square(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

/// `x * x`, after sleeping `ms` milliseconds; appends `x` and the worker's `POOL_TEST_TAG` to
/// the file `log` first (a line `x tag`), so a test can count how many times each item ran, and
/// where.
#[task]
pub fn logged_square(log: String, x: u64, ms: u64) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open the log");
    let tag = std::env::var("POOL_TEST_TAG").unwrap_or_default();
    f.write_all(format!("{x} {tag}\n").as_bytes())
        .expect("append to the log");
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

/// Panics unless the file `path` exists; then writes `PATH.done` and returns 1: a job that
/// fails until an operator fixes something.
#[task]
pub fn needs_file(path: String) -> u64 {
    if !std::path::Path::new(&path).exists() {
        panic!("{path} is missing");
    }
    std::fs::write(format!("{path}.done"), "ran").expect("write the mark");
    1
}

/// Fails on `bad`: the same failure on every engine.
#[task]
pub fn square_unless(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("{x} is bad");
    }
    x * x
}

/// `x * x`, but aborts the process that runs it (a crash in native code, say) on `bad`.
#[task]
pub fn abort_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        std::process::abort();
    }
    x * x
}

/// Counts its runs in the file `marker`, and aborts its process on the first two: with its own
/// `retries = 2`, the third run answers (on any engine: the retries happen where it runs).
#[task(retries = 2)]
pub fn dies_twice(marker: String) -> u32 {
    let runs = std::fs::read_to_string(&marker).map_or(0, |s| s.len()) + 1;
    std::fs::write(&marker, "x".repeat(runs)).expect("write the marker");
    if runs <= 2 {
        std::process::abort();
    }
    runs as u32
}

/// Writes its process id to `path`, then spins until asked to stop (`polite`) or forever.
#[task]
pub fn spin_in(path: String, polite: bool) -> u64 {
    std::fs::write(&path, std::process::id().to_string()).expect("write the pid");
    while !(polite && pool_core::cancelled()) {
        std::hint::spin_loop();
    }
    std::fs::write(&path, "cleaned up").expect("write the mark");
    1
}

/// Aborts its process every time; with its own `retries = 2` it costs three processes.
#[task(retries = 2)]
pub fn always_aborts() -> u64 {
    std::process::abort()
}

/// Sleeps `ms`, then creates `path`: a mark that it ran to its end.
#[task]
pub fn nap_mark(path: String, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(&path, "ran").expect("write the mark");
}

/// Creates `path`: a mark that it ran.
#[task]
pub fn mark(path: String) {
    std::fs::write(&path, "ran").expect("write the mark");
}

/// The `POOL_TEST_TAG` of the worker that ran it.
#[task]
pub fn worker_tag() -> String {
    std::env::var("POOL_TEST_TAG").unwrap_or_default()
}

/// An initializer that always fails: a worker whose local pool cannot start processes.
#[task]
pub fn failing_init() {
    panic!("this initializer always fails");
}

/// Kills the whole Redis worker that runs it (the leader of its process group, as the tests
/// start each worker in a group of its own), as a task that brings its machine down would.
#[task]
pub fn kill_my_worker() -> u64 {
    // SAFETY: getpgid(0) and kill only read and signal; no memory is involved.
    unsafe { libc::kill(libc::getpgid(0), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// A `redis-worker` process (in a process group of its own), killed with its group on drop.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

/// The command line of `redis-worker`: `URL QUEUE PROCESSES CLAIM_IDLE_MS MAX_DELIVERIES`, and
/// its `POOL_TEST_TAG`.
struct WorkerArgs<'a> {
    url: String,
    queue: &'a str,
    processes: usize,
    claim_idle: Duration,
    max_deliveries: u64,
    tag: &'a str,
}

impl WorkerProcess {
    /// Starts `redis-worker URL QUEUE PROCESSES CLAIM_IDLE_MS MAX_DELIVERIES` for `server`
    /// with `POOL_TEST_TAG=tag`, the variables in `env`, and `POOL_TEST_CA` (the server's
    /// authority) when the server speaks TLS.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        exe: &str,
        server: &RedisServer,
        queue: &str,
        processes: usize,
        claim_idle: Duration,
        max_deliveries: u64,
        tag: &str,
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        Self::start_logged(
            exe,
            server,
            queue,
            processes,
            claim_idle,
            max_deliveries,
            tag,
            env,
            None,
        )
    }

    /// [`start`](Self::start) with the settings most tests use: a held job is taken over after
    /// 1.5 s of silence, and given up after 3 deliveries.
    pub fn serving(
        exe: &str,
        server: &RedisServer,
        queue: &str,
        processes: usize,
        tag: &str,
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        Self::start(
            exe,
            server,
            queue,
            processes,
            Duration::from_millis(1500),
            3,
            tag,
            env,
        )
    }

    /// [`start`](Self::start), with the worker's standard error (its log) in the file `log`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_logged(
        exe: &str,
        server: &RedisServer,
        queue: &str,
        processes: usize,
        claim_idle: Duration,
        max_deliveries: u64,
        tag: &str,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> WorkerProcess {
        let mut cmd = Command::new(exe);
        if let Some(log) = log {
            cmd.stderr(std::fs::File::create(log).expect("create the log"));
        }
        if server.is_tls() {
            cmd.env("POOL_TEST_CA", server.ca_path());
        }
        cmd.envs(env.iter().copied());
        let args = WorkerArgs {
            url: server.url(),
            queue,
            processes,
            claim_idle,
            max_deliveries,
            tag,
        };
        Self::spawn(cmd, args)
    }

    /// Starts `redis-worker` for `queue` on the Redis Cluster `cluster` (its log in `log`).
    pub fn start_cluster(
        exe: &str,
        cluster: &RedisCluster,
        queue: &str,
        processes: usize,
        claim_idle: Duration,
        tag: &str,
        log: &std::path::Path,
    ) -> WorkerProcess {
        let urls = cluster.urls();
        let mut cmd = Command::new(exe);
        cmd.env("POOL_TEST_CLUSTER", urls.join(","))
            .stderr(std::fs::File::create(log).expect("create the log"));
        let args = WorkerArgs {
            url: urls[0].clone(),
            queue,
            processes,
            claim_idle,
            max_deliveries: 3,
            tag,
        };
        Self::spawn(cmd, args)
    }

    /// Runs `cmd` (the `redis-worker` binary, its environment set) with the worker's arguments,
    /// in a process group of its own.
    fn spawn(mut cmd: Command, a: WorkerArgs<'_>) -> WorkerProcess {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .args([
                &a.url,
                a.queue,
                &a.processes.to_string(),
                &a.claim_idle.as_millis().to_string(),
                &a.max_deliveries.to_string(),
            ])
            .env("POOL_TEST_TAG", a.tag)
            .process_group(0)
            .spawn()
            .expect("redis-worker starts");
        WorkerProcess { child }
    }

    /// The worker's pid (its process group's id too).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the worker has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Its exit status, once it has exited.
    pub fn status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the worker process alone.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to the process this struct started.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits up to `within` for the worker to exit, and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGKILL to the worker's whole process group: the worker, its fork server, its processes.
    pub fn kill(&mut self) {
        // SAFETY: killpg only sends a signal to the group this struct started.
        unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
