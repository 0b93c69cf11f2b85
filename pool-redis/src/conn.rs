//! Connections that come back: every thread of the client and of the worker owns one connection
//! and reconnects, with backoff, whenever Redis goes away (a restart, a network cut).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{Client, Connection, RedisError};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Whether `err` means the connection (or the server's state) is gone for now, so the same
/// command may be sent again on a new connection.
pub(crate) fn transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || server_codes(err)
            .iter()
            .any(|c| matches!(c.as_str(), "LOADING" | "TRYAGAIN" | "MASTERDOWN"))
}

/// The server's error codes in `err` (`NOGROUP`, `LOADING`, …), including those of the
/// commands of a failed pipeline.
pub(crate) fn server_codes(err: &RedisError) -> Vec<String> {
    if let Some(code) = err.code() {
        return vec![code.to_owned()];
    }
    err.clone()
        .into_server_errors()
        .map(|all| all.iter().map(|(_, e)| e.code().to_owned()).collect())
        .unwrap_or_default()
}

/// Whether `err` (or a command of its pipeline) failed with the server error `code`.
pub(crate) fn has_code(err: &RedisError, code: &str) -> bool {
    server_codes(err).iter().any(|c| c == code)
}

/// One thread's connection: connects lazily, and again after a transient error.
pub(crate) struct Link {
    client: Client,
    conn: Option<Connection>,
    /// A read timeout for commands: a server that vanished without closing the socket must not
    /// block a thread for ever.
    read_timeout: Duration,
    backoff: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens a client for `url`. With the `tls` feature, makes sure rustls has its crypto provider
/// (ring) first, unless the program installed one of its own.
pub(crate) fn open(url: &str) -> Result<Client, RedisError> {
    #[cfg(feature = "tls")]
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Client::open(info(url)?)
}

/// The connection settings of `url`, with `TCP_NODELAY`: commands are small and pipelined, and
/// Nagle's algorithm would hold each write back until the previous one is acknowledged
/// (milliseconds per round trip).
pub(crate) fn info(url: &str) -> Result<redis::ConnectionInfo, RedisError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

/// Where a client connects, for `Debug` output: address and database, never credentials.
pub(crate) fn describe(client: &Client) -> String {
    let info = client.get_connection_info();
    let scheme = match info.addr() {
        redis::ConnectionAddr::TcpTls { .. } => "rediss",
        redis::ConnectionAddr::Unix(_) => "redis+unix",
        _ => "redis",
    };
    format!("{scheme}://{}/{}", info.addr(), info.redis_settings().db())
}

impl Link {
    pub(crate) fn new(client: Client, read_timeout: Duration) -> Self {
        Link {
            client,
            conn: None,
            read_timeout,
            backoff: Duration::from_millis(10),
        }
    }

    /// Connects now, once: for callers that should fail fast when Redis is unreachable.
    pub(crate) fn connect_once(&mut self) -> Result<(), RedisError> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(self.read_timeout))?;
        conn.set_write_timeout(Some(self.read_timeout))?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Runs `f` on a live connection. Transient failures reconnect (pausing with backoff) and
    /// retry, until `stop` is raised (then the last error is returned); other errors return at
    /// once. `f` may run more than once, so it must be safe to repeat.
    pub(crate) fn run<T>(
        &mut self,
        stop: &AtomicBool,
        mut f: impl FnMut(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        loop {
            let result = match self.conn.as_mut() {
                Some(conn) => f(conn),
                None => self
                    .connect_once()
                    .and_then(|()| f(self.conn.as_mut().expect("just connected"))),
            };
            match result {
                Ok(v) => {
                    self.backoff = Duration::from_millis(10);
                    return Ok(v);
                }
                Err(err) if transient(&err) => {
                    self.conn = None;
                    if stop.load(Ordering::Relaxed) {
                        return Err(err);
                    }
                    std::thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => return Err(err),
            }
        }
    }
}
