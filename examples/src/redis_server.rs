//! A throwaway `redis-server` for the examples: on a free loopback port, in a temporary
//! directory, without persistence; stopped and removed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Child,
    dir: std::path::PathBuf,
    /// Its URL, `redis://127.0.0.1:PORT/`.
    pub(crate) url: String,
}

impl RedisServer {
    /// Starts one; an error (with what to install) if `redis-server` cannot run.
    pub(crate) fn start() -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = std::env::temp_dir().join(format!("pool-redis-example-{port}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run redis-server ({e}); install it (Debian: apt-get install redis-server)")
            })?;
        let server = RedisServer {
            child,
            dir,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pool_redis::status(&server.url, "ping").is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
