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
/// Fails on `bad`: the same failure on every engine.
#[task]
pub fn square_unless(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("{x} is bad");
    }
    x * x
}

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

/// A `redis-server` on a free loopback port, in a temporary directory, stopped (by pid) and
/// removed on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    password: Option<String>,
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server; with `persistent`, every write is in the append-only file before it is
    /// acknowledged (`appendfsync always`), so a restart loses nothing. Panics with a message
    /// if `redis-server` cannot be started: a test that needs Redis never passes by skipping.
    pub fn start(persistent: bool) -> RedisServer {
        Self::start_with(persistent, None, false)
    }

    /// Starts a server that requires `password` (if any) and, with `tls`, speaks only TLS, with
    /// a certificate for 127.0.0.1 signed by a test authority ([`ca_pem`](Self::ca_pem)), both
    /// made with the `openssl` command.
    pub fn start_with(persistent: bool, password: Option<&str>, tls: bool) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("pool-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if tls {
            make_certificates(&dir);
        }
        let mut server = RedisServer {
            port,
            dir,
            persistent,
            password: password.map(str::to_owned),
            tls,
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
        if let Some(password) = &self.password {
            cmd.arg("--requirepass").arg(password);
        }
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
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
            let answer = self.client().map_err(|e| e.to_string()).and_then(|client| {
                let mut conn = client
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query::<String>(&mut conn)
                    .map_err(|e| e.to_string())
            });
            let Err(last) = answer else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 20 s: {last}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://` with TLS, with the password if there is one.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/", self.port)
    }

    /// The authority that signed the server's certificate (PEM), when it speaks TLS.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).expect("the certificate")
    }

    /// A client for [`url`](Self::url) that trusts [`ca_pem`](Self::ca_pem) with TLS.
    pub fn client(&self) -> Result<redis::Client, pool_redis::Error> {
        if self.tls {
            pool_redis::tls_client(&self.url(), &self.ca_pem())
        } else {
            Ok(redis::Client::open(self.url())?)
        }
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

/// Makes, in `dir`, a test certificate authority (`ca.pem`) and a server certificate for
/// 127.0.0.1 that it signed (`cert.pem`, `key.pem`).
fn make_certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pool-redis test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
    ];
    for args in steps {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the openssl command runs");
        assert!(status.success(), "openssl {args:?} failed");
    }
}

/// A `redis-worker` process (in a process group of its own), killed with its group on drop.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
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
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(exe);
        if server.tls {
            cmd.env("POOL_TEST_CA", server.dir.join("ca.pem"));
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .args([
                &server.url(),
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

    /// Its exit status, once it has exited.
    pub fn status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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
