//! What the tests, the examples and the benchmark all need to run: one launcher for a private
//! `redis-server`, one for the helper binaries that report `key=value` lines, and a deadline
//! that turns a hang into a failure with a message.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `f` on its own thread and returns its result; if it takes longer than `secs`, prints
/// what hung and aborts the process, so a hang is a failure with a message, never a stuck CI.
pub fn deadline<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(value) => {
            let _ = handle.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Straight to the descriptor: the test harness's capture of `eprintln!` would be
            // lost with the abort.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "HANG: `{what}` did not finish within {secs} s; aborting"
            );
            std::process::abort();
        }
    }
}

/// What a helper binary printed.
#[derive(Debug, Clone)]
pub struct HelperOutput {
    /// Its standard output, whole.
    pub stdout: String,
    /// Its `key=value` lines (the last value of a repeated key).
    pub values: HashMap<String, String>,
}

/// Runs the helper binary `exe` with `args` behind a deadline of `secs`, asserts that it
/// exited successfully, and returns what it printed. The one way the tests run their helper
/// programs (`pool-helper`, `chaos-helper`, …).
pub fn run_helper(exe: &str, args: &[&str], secs: u64) -> HelperOutput {
    let (exe, args): (String, Vec<String>) =
        (exe.to_owned(), args.iter().map(|a| a.to_string()).collect());
    let what = format!("{exe} {}", args.join(" "));
    let out = deadline(secs, &what.clone(), move || {
        Command::new(&exe)
            .args(&args)
            .output()
            .expect("the helper runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let values = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    HelperOutput { stdout, values }
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

    /// [`start`](Self::start) without persistence, for programs rather than tests (examples,
    /// the benchmark): an error that says what to install instead of a panic.
    pub fn try_start() -> Result<RedisServer, String> {
        std::panic::catch_unwind(|| Self::start(false)).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "redis-server could not be started".to_owned())
        })
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

    /// Whether it speaks only TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The file of the authority that signed the server's certificate, when it speaks TLS.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The authority that signed the server's certificate (PEM), when it speaks TLS.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).expect("the certificate")
    }

    /// A client for [`url`](Self::url) that trusts [`ca_pem`](Self::ca_pem) with TLS.
    pub fn client(&self) -> Result<redis::Client, pool_redis::Error> {
        if self.tls {
            #[cfg(feature = "tls")]
            return pool_redis::tls_client(&self.url(), &self.ca_pem());
            #[cfg(not(feature = "tls"))]
            panic!("a TLS test server needs pool-testkit's `tls` feature");
        }
        Ok(redis::Client::open(self.url())?)
    }

    /// Kills the server with SIGKILL (no chance to save anything) and starts it again on the
    /// same port and directory.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Kills the server with SIGKILL and leaves it down (see [`start_again`](Self::start_again)).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port and directory, now requiring `password` (if
    /// any): a server restarted with a new password.
    pub fn start_again(&mut self, password: Option<&str>) {
        self.kill();
        self.password = password.map(str::to_owned);
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

/// A Redis Cluster on loopback ports: `masters` masters with one replica each, made with
/// `redis-server --cluster-enabled yes` and `redis-cli --cluster create`, in a temporary
/// directory; every node is stopped (by pid) and the directory removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    /// The nodes' ports, and their processes (`None` once killed).
    nodes: Vec<(u16, Option<Child>)>,
}

impl RedisCluster {
    /// Starts `2 × masters` nodes and joins them into a cluster whose node timeout is 1 s (so
    /// a replica takes over a dead master within a few seconds). Panics with a message if
    /// `redis-server` or `redis-cli` cannot be run.
    pub fn start(masters: usize) -> RedisCluster {
        let ports: Vec<u16> = (0..2 * masters)
            .map(|_| {
                TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "pool-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let nodes = ports
            .iter()
            .map(|&port| {
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                    // A replica may take over however long its master has been gone (the
                    // default refuses when the link was down for long, as at a start).
                    .args(["--cluster-replica-validity-factor", "0"])
                    .arg("--cluster-config-file")
                    .arg(format!("nodes-{port}.conf"))
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("cannot start redis-server ({e}); install it (redis-server)")
                    });
                (port, Some(child))
            })
            .collect();
        let cluster = RedisCluster { dir, nodes };
        for &port in &ports {
            cluster.wait_for(port, "PING", "PONG");
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install it (redis-tools)"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &port in &ports {
            cluster.wait_for(port, "CLUSTER INFO", "cluster_state:ok");
        }
        // Every replica holds its master's data before anyone relies on a failover (the first
        // sync can take seconds; a replica promoted before it would start empty).
        for &port in &ports {
            if cluster.role(port) == "slave" {
                cluster.wait_for(port, "INFO replication", "master_link_status:up");
            }
        }
        cluster
    }

    /// Waits up to 30 s for `command` on the node at `port` to answer with text containing
    /// `want`.
    fn wait_for(&self, port: u16, command: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut conn| {
                    let mut words = command.split(' ');
                    let mut cmd = redis::cmd(words.next().expect("a command"));
                    for w in words {
                        cmd.arg(w);
                    }
                    cmd.query::<redis::Value>(&mut conn)
                })
                .map(|v| match v {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    redis::Value::VerbatimString { text, .. } => text,
                    other => format!("{other:?}"),
                })
                .unwrap_or_else(|e| e.to_string());
            if answer.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {port}: `{command}` did not give {want:?} within 30 s: {answer}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `master` or `slave` (Redis's words), or an error message.
    fn role(&self, port: u16) -> String {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut conn| redis::cmd("ROLE").query::<Vec<redis::Value>>(&mut conn))
            .map(|v| match v.first() {
                Some(redis::Value::BulkString(r)) => String::from_utf8_lossy(r).into_owned(),
                other => format!("{other:?}"),
            })
            .unwrap_or_else(|e| e.to_string())
    }

    /// The nodes' URLs (`redis://127.0.0.1:PORT/`), masters and replicas.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// The port of the master that serves `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        for (port, child) in &self.nodes {
            if child.is_none() {
                continue;
            }
            let Ok(mut conn) = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            else {
                continue;
            };
            // A node's answer to a key it does not serve is MOVED; its master answers.
            let is_master = self.role(*port) == "master";
            if is_master
                && redis::cmd("TYPE")
                    .arg(key)
                    .query::<String>(&mut conn)
                    .is_ok()
            {
                return *port;
            }
        }
        panic!("no live master serves {key}");
    }

    /// Waits (up to 30 s) until a replica of the master at `port` has acknowledged everything
    /// the master has written (the master's `ROLE`: its offset, and each replica's).
    pub fn wait_replicated(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let role = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut conn| redis::cmd("ROLE").query::<redis::Value>(&mut conn));
            let synced = match &role {
                Ok(redis::Value::Array(parts)) => match (parts.get(1), parts.get(2)) {
                    (Some(redis::Value::Int(offset)), Some(redis::Value::Array(replicas))) => {
                        replicas.iter().any(|r| match r {
                            redis::Value::Array(f) => match f.get(2) {
                                Some(redis::Value::BulkString(b)) => {
                                    String::from_utf8_lossy(b).parse::<i64>().ok() == Some(*offset)
                                }
                                _ => false,
                            },
                            _ => false,
                        })
                    }
                    _ => false,
                },
                _ => false,
            };
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no replica of node {port} caught up within 30 s: {role:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills (SIGKILL) the node at `port`.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
