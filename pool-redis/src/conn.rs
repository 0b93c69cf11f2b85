//! Connections that come back: every thread of the client and of the worker owns one connection
//! and reconnects, with backoff, whenever Redis goes away (a restart, a network cut).
//!
//! Nothing here is silent: every lost connection and every try to get it back is a `tracing`
//! warning, a connection that comes back is an info event, and a refused password is an error
//! — each naming the server and the user (never the password) and the thread's role.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::{Client, ConnectionLike, RedisError};

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
        || server_codes(err).iter().any(|c| {
            // A cluster during a failover: down for a moment, or this node a replica now.
            matches!(
                c.as_str(),
                "LOADING"
                    | "TRYAGAIN"
                    | "MASTERDOWN"
                    | "CLUSTERDOWN"
                    | "READONLY"
                    | "MOVED"
                    | "ASK"
            )
        })
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

/// What a connection is made from: one server, or (feature `cluster`) a Redis Cluster, whose
/// client follows its slots, redirections and failovers. Every key of a queue shares one hash
/// tag, so a queue lives in one slot, and every pipeline and transaction goes to its master.
#[derive(Clone)]
pub(crate) enum Connector {
    Single(Client),
    #[cfg(feature = "cluster")]
    Cluster {
        client: redis::cluster::ClusterClient,
        /// The seed nodes, for logs (never credentials).
        nodes: String,
        user: String,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl From<Client> for Connector {
    fn from(client: Client) -> Self {
        Connector::Single(client)
    }
}

/// A live connection of either kind.
pub(crate) type Conn = Box<dyn ConnectionLike + Send>;

impl Connector {
    /// A Redis Cluster reached through any of `nodes` (URLs; a password in the first is used
    /// for all).
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(nodes: &[&str]) -> Result<Connector, RedisError> {
        #[cfg(feature = "tls")]
        {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let infos = nodes
            .iter()
            .map(|n| info(n))
            .collect::<Result<Vec<_>, _>>()?;
        let user = infos
            .first()
            .and_then(|i| i.redis_settings().username().map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        let shown: Vec<String> = infos.iter().map(|i| i.addr().to_string()).collect();
        let client = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Connector::Cluster {
            client,
            nodes: format!("redis-cluster://{}", shown.join(",")),
            user,
        })
    }

    /// Whether it is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self, Connector::Single(_))
    }

    /// Where it connects, for messages: address and database, never credentials.
    pub(crate) fn describe(&self) -> String {
        match self {
            Connector::Single(client) => describe(client),
            #[cfg(feature = "cluster")]
            Connector::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    fn user(&self) -> String {
        match self {
            Connector::Single(client) => client
                .get_connection_info()
                .redis_settings()
                .username()
                .unwrap_or("default")
                .to_owned(),
            #[cfg(feature = "cluster")]
            Connector::Cluster { user, .. } => user.clone(),
        }
    }

    /// A new connection whose commands time out after `timeout`.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<Conn, RedisError> {
        match self {
            Connector::Single(client) => {
                let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                Ok(Box::new(conn))
            }
            #[cfg(feature = "cluster")]
            Connector::Cluster { client, .. } => {
                let conn = client.get_connection()?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                Ok(Box::new(ClusterConn(conn)))
            }
        }
    }
}

/// A cluster connection that takes pipelines and transactions. The `redis` crate's sync
/// cluster connection routes a packed pipeline by its first command (a `MULTI` skipped), with
/// its redirections, but says it does not pipeline, because commands of a pipeline could
/// belong to different slots. Ours never do: every key of a queue has the queue's hash tag,
/// and every pipeline this crate sends touches one queue's keys (keyless commands do not come
/// first). That is the invariant this type relies on.
#[cfg(feature = "cluster")]
struct ClusterConn(redis::cluster::ClusterConnection);

#[cfg(feature = "cluster")]
impl ConnectionLike for ClusterConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }

    fn supports_pipelining(&self) -> bool {
        true
    }

    fn check_connection(&mut self) -> bool {
        self.0.check_connection()
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// One thread's connection: connects lazily, and again after a transient error.
pub(crate) struct Link {
    client: Connector,
    conn: Option<Conn>,
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
    pub(crate) fn new(client: impl Into<Connector>, read_timeout: Duration) -> Self {
        let client = client.into();
        let server = client.describe();
        let user = client.user();
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
        self.conn = Some(self.client.connect(self.read_timeout)?);
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
        mut f: impl FnMut(&mut dyn ConnectionLike) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        loop {
            let result = match self.conn.as_mut() {
                Some(conn) => f(conn.as_mut()),
                None => self
                    .connect_once()
                    .and_then(|()| f(self.conn.as_mut().expect("just connected").as_mut())),
            };
            match result {
                Ok(v) => {
                    self.succeeded();
                    return Ok(v);
                }
                Err(err) => {
                    let (drop_conn, pause) = self.after_error(&err, stop);
                    if drop_conn {
                        self.conn = None;
                    }
                    match pause {
                        Some(pause) => std::thread::sleep(pause),
                        None => return Err(err),
                    }
                }
            }
        }
    }

    /// What to do after a command failed with `err` (logged and counted here): whether the
    /// connection is to be dropped, and how long to pause before a retry (`None`: return the
    /// error). Transient failures retry until `stop` is raised or the outage passes
    /// `give_up_after`; other errors return at once (a refused password also drops the
    /// connection, and counts as an outage: the next try reconnects). The one retry policy of
    /// [`run`](Self::run) and of the async client's [`AsyncLink`].
    fn after_error(&mut self, err: &RedisError, stop: &AtomicBool) -> (bool, Option<Duration>) {
        if transient(err) {
            let over = self
                .give_up_after
                .zip(self.failing_for())
                .is_some_and(|(limit, down)| down >= limit);
            let stopping = stop.load(Ordering::Relaxed) || over;
            self.failed(err, !stopping);
            if stopping {
                return (true, None);
            }
            let pause = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            (true, Some(pause))
        } else if is_auth(err) {
            self.failed(err, false);
            (true, None)
        } else {
            // Other refusals (a wrong type, no group …) come from a live server: the caller
            // decides.
            (false, None)
        }
    }
}

/// [`Link`] over the `redis` crate's async (multiplexed, tokio) connection, for the client
/// [`RedisPool::connect_async`](crate::RedisPool::connect_async) makes: the same logging and
/// retry policy, with pauses that yield to the runtime instead of blocking a thread.
#[cfg(feature = "tokio")]
pub(crate) struct AsyncLink {
    /// The bookkeeping (role, server, outage, backoff); its own connection stays unused.
    link: Link,
    client: Client,
    conn: Option<redis::aio::MultiplexedConnection>,
}

#[cfg(feature = "tokio")]
impl AsyncLink {
    pub(crate) fn new(
        client: Client,
        conn: Option<redis::aio::MultiplexedConnection>,
        role: &'static str,
    ) -> Self {
        AsyncLink {
            link: Link::new(client.clone(), Duration::from_secs(5)).role(role),
            client,
            conn,
        }
    }

    /// Runs `pipe` on a live connection, as [`Link::run`] runs a command.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &mut self,
        stop: &AtomicBool,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        loop {
            let result = match self.conn.as_mut() {
                Some(conn) => pipe.query_async(conn).await,
                None => match self.client.get_multiplexed_async_connection().await {
                    Ok(conn) => pipe.query_async(self.conn.insert(conn)).await,
                    Err(err) => Err(err),
                },
            };
            match result {
                Ok(v) => {
                    self.link.succeeded();
                    return Ok(v);
                }
                Err(err) => {
                    let (drop_conn, pause) = self.link.after_error(&err, stop);
                    if drop_conn {
                        self.conn = None;
                    }
                    match pause {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => return Err(err),
                    }
                }
            }
        }
    }
}
