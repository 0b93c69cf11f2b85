//! A Redis worker for the pool-redis tests: `redis-worker URL QUEUE PROCESSES CLAIM_IDLE_MS
//! MAX_DELIVERIES`. It serves the tasks of `pool_tests::redis` until killed.

use std::time::Duration;

#[pool_core::main]
fn main() -> Result<(), pool_redis::Error> {
    // Its `tracing` events on standard error, as an operator's worker would log them.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Makes sure the tasks the tests submit are linked in (and so registered).
    std::hint::black_box(pool_tests::redis::square);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, processes, claim_idle_ms, max_deliveries] = &args[..] else {
        panic!("usage: redis-worker URL QUEUE PROCESSES CLAIM_IDLE_MS MAX_DELIVERIES");
    };
    // With TLS, trust the test server's own certificate.
    let client = match std::env::var_os("POOL_TEST_CA") {
        Some(path) => pool_redis::tls_client(url, &std::fs::read(path).expect("CA file"))?,
        None => pool_redis::redis::Client::open(url.as_str())?,
    };
    // POOL_TEST_BAD_INIT=1: every local worker process fails its initializer, so the local
    // pool breaks (its restart guard trips).
    let mut local = pool_core::Pool::builder();
    if std::env::var_os("POOL_TEST_BAD_INIT").is_some() {
        local = local.initializer(pool_tests::redis::failing_init, ());
    }
    // POOL_TEST_PREFETCH=N: hold up to N jobs. POOL_TEST_MAX_OUTAGE_MS=N: give up after N ms
    // without Redis.
    // POOL_TEST_CLUSTER=URL,URL…: serve QUEUE on that Redis Cluster instead.
    let mut worker = match std::env::var("POOL_TEST_CLUSTER") {
        Ok(nodes) => pool_redis::Worker::cluster(&nodes.split(',').collect::<Vec<_>>(), queue)?,
        Err(_) => pool_redis::Worker::with_client(client, queue)?,
    };
    if let Some(ms) = std::env::var_os("POOL_TEST_MAX_OUTAGE_MS") {
        let ms = ms.to_str().and_then(|n| n.parse().ok()).expect("a number");
        worker = worker.max_outage(Duration::from_millis(ms));
    }
    if let Some(n) = std::env::var_os("POOL_TEST_PREFETCH") {
        worker = worker.prefetch(n.to_str().and_then(|n| n.parse().ok()).expect("a number"));
    }
    worker
        .pool(local)
        .processes(processes.parse().expect("processes"))
        .heartbeat(Duration::from_millis(200))
        .claim_idle(Duration::from_millis(
            claim_idle_ms.parse().expect("claim idle ms"),
        ))
        .max_deliveries(max_deliveries.parse().expect("max deliveries"))
        .run()
}
