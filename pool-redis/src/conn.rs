//! Connections that come back: every thread of the client and of the worker owns one connection
//! and reconnects, with backoff, whenever Redis goes away (a restart, a network cut).
//!
//! Nothing here is silent: every lost connection and every try to get it back is a `tracing`
//! warning, a connection that comes back is an info event, and a refused password is an error
//! — each naming the server and the user (never the password) and the thread's role.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

/// Whether `err` is Redis refusing the credentials (a wrong password or user, or none given).
pub(crate) fn is_auth(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || server_codes(err)
            .iter()
            .any(|c| matches!(c.as_str(), "WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// One thread's connection: connects lazily, and again after a transient error.
pub(crate) struct Link {
    client: Client,
    conn: Option<Connection>,
    /// A read timeout for commands: a server that vanished without closing the socket must not
    /// block a thread for ever.
    read_timeout: Duration,
    backoff: Duration,
    /// What this connection is for, in logs ("worker reader", "client submitter" …).
    role: &'static str,
    /// The server and user, for logs (never the password).
    server: String,
    user: String,
    /// Since when every command failed, and how many tries since.
    failing_since: Option<Instant>,
    tries: u32,
    /// Transient failures are retried for this long at most, then returned.
    give_up_after: Option<Duration>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("server", &self.server)
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
        let server = describe(&client);
        let user = client
            .get_connection_info()
            .redis_settings()
            .username()
            .unwrap_or("default")
            .to_owned();
        Link {
            client,
            conn: None,
            read_timeout,
            backoff: Duration::from_millis(10),
            role: "connection",
            server,
            user,
            failing_since: None,
            tries: 0,
            give_up_after: None,
        }
    }

    /// Names what this connection is for, in its log events.
    pub(crate) fn role(mut self, role: &'static str) -> Self {
        self.role = role;
        self
    }

    /// Returns transient failures after retrying them for `limit` (see [`run`](Self::run)).
    pub(crate) fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = Some(limit);
        self
    }

    /// How long every command has failed, if the last one did.
    pub(crate) fn failing_for(&self) -> Option<Duration> {
        self.failing_since.map(|t| t.elapsed())
    }

    /// The server, for messages.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// Connects now, once: for callers that should fail fast when Redis is unreachable.
    pub(crate) fn connect_once(&mut self) -> Result<(), RedisError> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(self.read_timeout))?;
        conn.set_write_timeout(Some(self.read_timeout))?;
        self.conn = Some(conn);
        Ok(())
    }

    /// A command succeeded: logs a reconnection if there was an outage.
    fn succeeded(&mut self) {
        self.backoff = Duration::from_millis(10);
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                redis = %self.server,
                user = %self.user,
                role = self.role,
                after_ms = since.elapsed().as_millis() as u64,
                tries = self.tries,
                "pool-redis: reconnected to Redis"
            );
        }
        self.tries = 0;
    }

    /// A command failed with `err`: logs it, and counts the outage.
    fn failed(&mut self, err: &RedisError, retrying: bool) {
        let first = self.failing_since.is_none();
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        self.tries += 1;
        if is_auth(err) {
            tracing::error!(
                redis = %self.server,
                user = %self.user,
                role = self.role,
                error = %err,
                "pool-redis: Redis refused the credentials"
            );
        } else if retrying {
            tracing::warn!(
                redis = %self.server,
                user = %self.user,
                role = self.role,
                error = %err,
                try_ = self.tries,
                backoff_ms = self.backoff.as_millis() as u64,
                down_ms = since.elapsed().as_millis() as u64,
                "{}",
                if first {
                    "pool-redis: lost the connection to Redis; retrying"
                } else {
                    "pool-redis: cannot reach Redis; retrying"
                }
            );
        }
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
                    self.succeeded();
                    return Ok(v);
                }
                Err(err) if transient(&err) => {
                    self.conn = None;
                    let over = self
                        .give_up_after
                        .zip(self.failing_for())
                        .is_some_and(|(limit, down)| down >= limit);
                    let stopping = stop.load(Ordering::Relaxed) || over;
                    self.failed(&err, !stopping);
                    if stopping {
                        return Err(err);
                    }
                    std::thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => {
                    if is_auth(&err) {
                        // The connection is useless; the next try reconnects (a password
                        // changed back, say). It counts as an outage.
                        self.conn = None;
                        self.failed(&err, false);
                    }
                    // Other refusals (a wrong type, no group …) come from a live server: the
                    // caller decides.
                    return Err(err);
                }
            }
        }
    }
}
