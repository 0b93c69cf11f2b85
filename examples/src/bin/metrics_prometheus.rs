//! Pool metrics for Prometheus: installs `metrics-exporter-prometheus` with its HTTP listener,
//! runs some work (values, failures, retries, a cancel), then scrapes its own `/metrics` and
//! prints the pool's lines — what Prometheus would read.
//!
//! ```text
//! cargo run --release -p pool-examples --features metrics --bin metrics_prometheus [PORT]
//! ```
//!
//! The metrics (both engines; `engine="local"` for a `Pool`, `engine="redis"` for a
//! `RedisPool` and its workers' keepers): `pool_tasks_{submitted,completed,failed,retried,
//! cancelled}_total`, `pool_task_duration_seconds` (a summary here; a histogram with buckets
//! if the exporter is given some), `pool_queue_depth`, `pool_workers_alive`,
//! `pool_workers_replaced_total`.

use std::io::{Read, Write};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use pool_core::{task, Pool};

#[task]
fn square(x: u64) -> u64 {
    x * x
}

/// Panics on multiples of 100.
#[task]
fn picky(x: u64) -> u64 {
    assert!(x % 100 != 0, "{x} is a multiple of 100");
    x
}

/// Kills its process on 7: with retries, it is run again (and dies again).
#[task(retries = 2)]
fn dies_on_seven(x: u64) -> u64 {
    if x == 7 {
        std::process::abort();
    }
    x
}

#[task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_core::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // Port 0 asks for a free one: find it first, so it can be printed and scraped.
    let port = if port == 0 {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        port
    };
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()?;

    let pool = Pool::builder()
        .processes(2)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()?;
    let squares = pool.map(square, 0..100_000)?;
    assert_eq!(squares[99_999], 99_999 * 99_999);
    let outcomes = pool.map_results(picky, 1..=1000)?;
    println!(
        "picky: {} values, {} failures",
        outcomes.iter().filter(|o| o.is_ok()).count(),
        outcomes.iter().filter(|o| o.is_err()).count()
    );
    let dead = pool.map_results_chunked(dies_on_seven, 0..10, 1)?;
    println!(
        "dies_on_seven: {} values, {} failures",
        dead.iter().filter(|o| o.is_ok()).count(),
        dead.iter().filter(|o| o.is_err()).count()
    );
    let slow = pool.apply_async(nap, 5_000);
    std::thread::sleep(Duration::from_millis(50));
    slow.cancel();
    // Let the collector publish its gauges once more.
    std::thread::sleep(Duration::from_millis(100));

    let scrape = scrape(port)?;
    println!("GET http://127.0.0.1:{port}/metrics (the pool's lines):");
    for line in scrape.lines().filter(|l| l.contains("pool_")) {
        println!("{line}");
    }
    for name in [
        "pool_tasks_submitted_total",
        "pool_tasks_completed_total",
        "pool_tasks_failed_total",
        "pool_tasks_retried_total",
        "pool_tasks_cancelled_total",
        "pool_task_duration_seconds",
        "pool_workers_alive",
        "pool_workers_replaced_total",
    ] {
        assert!(scrape.contains(name), "{name} is missing from the scrape");
    }
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.0: the body.
fn scrape(port: u16) -> std::io::Result<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}
