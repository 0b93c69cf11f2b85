//! A private `redis-server` for a test, and the tasks the Redis tests and their worker binary
//! (`redis-worker`) share.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pool_core::task;

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

/// The `POOL_TEST_TAG` of the worker that ran it.
#[task]
pub fn worker_tag() -> String {
    std::env::var("POOL_TEST_TAG").unwrap_or_default()
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

/// A `redis-server` on a free loopback port, in a temporary directory, stopped (by pid) and
/// removed on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server; with `persistent`, every write is in the append-only file before it is
    /// acknowledged (`appendfsync always`), so a restart loses nothing. Panics with a message
    /// if `redis-server` cannot be started: a test that needs Redis never passes by skipping.
    pub fn start(persistent: bool) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("pool-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            port,
            dir,
            persistent,
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}); install it (Debian: apt-get install \
                 redis-server) — the Redis tests do not skip"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server with SIGKILL (no chance to save anything) and starts it again on the
    /// same port and directory.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-worker` process (in a process group of its own), killed with its group on drop.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts `redis-worker URL QUEUE PROCESSES CLAIM_IDLE_MS MAX_DELIVERIES` with
    /// `POOL_TEST_TAG=tag`.
    pub fn start(
        exe: &str,
        url: &str,
        queue: &str,
        processes: usize,
        claim_idle: Duration,
        max_deliveries: u64,
        tag: &str,
    ) -> WorkerProcess {
        use std::os::unix::process::CommandExt;
        let child = Command::new(exe)
            .args([
                url,
                queue,
                &processes.to_string(),
                &claim_idle.as_millis().to_string(),
                &max_deliveries.to_string(),
            ])
            .env("POOL_TEST_TAG", tag)
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
