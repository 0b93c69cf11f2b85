//! The `throughput` benchmark: pool-core next to rayon (threads) and CPython's
//! `multiprocessing.Pool`, on the same workloads, in one run.
//!
//! ```text
//! cargo run --release -p pool-examples --bin throughput -- [--workers N] [--quick] [--scale X]
//!                                                          [--json] [--svg PATH] [--no-python]
//!                                                          [--no-redis] [--progress]
//! ```
//!
//! Workloads (each system gets the same tasks and the same worker count):
//!
//! | name | what | unit |
//! |---|---|---|
//! | `map-tiny` | `map(square, 0..n)`, default chunk size, u64 in and out | tasks/s |
//! | `map-chunk1` | the same with chunk size 1: the cost of one task | tasks/s |
//! | `apply-async` | a burst of n `apply_async(square, i)`, then every `get()` | tasks/s |
//! | `apply-latency-p50/p99` | sequential `apply(square, i)`, round trip | µs |
//! | `cpu` | 400 tasks of ~3 ms of pure computation: speed-up over one core | × |
//! | `bytes` | `map` over 200 distinct 1 MiB `Vec<u8>`, each returning a checksum | GB/s |
//! | `shared-scan` | 1,000 tasks, each summing a distinct 1 MiB window of a 1 GiB `SharedSlice<u64>` (built once, outside the timing; warm: the median of 5 maps after 2 untimed ones); rayon sums the same windows of a `Vec<u64>`, Python's `Pool` the same windows of a `multiprocessing.shared_memory` block | GB/s scanned |
//! | `shared-scan-first` | the first such map after the data is built: workers map it and fault its pages in | GB/s scanned |
//! | `cancel-latency` | `AsyncResult::cancel` of a task spinning in a loop that never looks at `cancelled()`, to a replacement worker serving (default 50 ms cancel grace; median of 20) | ms |
//! | `startup-first-result` | `Pool::new()` to the first result | ms |
//! | `startup-join-idle` | `close()` + `join()` of an idle pool | ms |
//! | `queue-small` | a `Queue<u64>` (bounded to 1,024 items) from a producer `Process` to the consumer here; rayon's column: a crossbeam channel between two threads | items/s |
//! | `queue-1mib` | the same with 1 MiB `Vec<u8>` items | GB/s |
//! | `redis-chunk1000` | pool-redis: `map_chunked(square, 0..n, 1000)` through a private `redis-server` to one worker process (this binary, holding up to 64 jobs per process) with the same worker count | tasks/s |
//! | `redis-chunk1` | the same with chunk size 1: one stream entry per task | tasks/s |
//!
//! The Redis rows run when `redis-server` is on the PATH (else they are left out, with a
//! message); they have no rayon or Python peer.
//!
//! rayon runs the per-task workloads as one `spawn` plus a channel send per task (the nearest
//! thing to a pool task), `map-tiny` as a parallel iterator, and `bytes` on the same buffers
//! without moving them (threads share memory: that is the cost isolation adds).

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use pool_core::{task, Pool, Process, Queue, SharedSlice};

use rayon::prelude::*;

#[task]
fn square(x: u64) -> u64 {
    x * x
}

/// Pure computation: `iters` steps of a modular sum (the same loop as the Python script's).
#[task]
fn busy(iters: u64) -> u64 {
    let mut s = 0u64;
    for i in 0..black_box(iters) {
        s = (s + i * i) % 1_000_003;
    }
    s
}

/// A checksum that samples every 4096th byte, in both languages, so the workload measures
/// moving the bytes rather than summing them.
#[task]
fn checksum(bytes: Vec<u8>) -> u64 {
    sample_sum(&bytes)
}

/// Spins until its worker is stopped: the `cancel-latency` workload.
#[task]
fn spin_forever() {
    loop {
        std::hint::spin_loop();
    }
}

/// `cancel-latency`: from `cancel()` of a running task that never looks at `cancelled()` to a
/// replacement worker that has answered a task.
fn bench_cancel(
    o: &Options,
    rows: &mut Vec<Row>,
    bar: &ProgressBar,
) -> Result<(), pool_core::Error> {
    let pool = Pool::builder().processes(o.workers).build()?;
    pool.apply(square, 1)?;
    let count = n(20, o.scale).max(5);
    let mut lat = Vec::with_capacity(count);
    for i in 0..count {
        let before = pool.stats().workers_replaced;
        let r = pool.apply_async(spin_forever, ());
        std::thread::sleep(Duration::from_millis(20)); // it is running by now
        let t = Instant::now();
        assert!(r.cancel());
        while pool.stats().workers_replaced == before || pool.stats().workers_alive < o.workers {
            std::thread::sleep(Duration::from_micros(200));
        }
        // Served by every worker, the new one included.
        pool.map_chunked(square, 0..o.workers as u64 * 2, 1)?;
        lat.push(secs(t.elapsed()) * 1e3);
        black_box(i);
    }
    lat.sort_by(f64::total_cmp);
    recorder("pool-core", rows, bar)("cancel-latency", percentile(&lat, 0.5), "ms", count);
    Ok(())
}

/// One window of the `shared-scan` data, summed: the handle arrives, the numbers are read
/// where the parent wrote them.
#[task]
fn window_sum(window: SharedSlice<u64>) -> u64 {
    scan(&window)
}

fn scan(xs: &[u64]) -> u64 {
    xs.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

/// 1 MiB of `u64`s: one `shared-scan` window.
const WINDOW: usize = 1 << 17;

/// `shared-scan`: the same windows of the same numbers, summed by pool-core workers from a
/// `SharedSlice` and by rayon threads from a `Vec`.
fn bench_shared(
    o: &Options,
    rows: &mut Vec<Row>,
    bar: &ProgressBar,
) -> Result<(), pool_core::Error> {
    let windows = n(1000, o.scale).max(10);
    // 1 GiB at full scale: 1,024 windows, of which the map reads 1,000 distinct ones.
    let len = (windows * 1024).div_ceil(1000) * WINDOW;
    let bytes = (windows * WINDOW * 8) as f64;
    let pool = Pool::builder().processes(o.workers).build()?;
    pool.apply(square, 1)?;
    let data = SharedSlice::build(len, |s| {
        for (i, x) in s.iter_mut().enumerate() {
            *x = i as u64;
        }
    })?;
    let handles = || data.chunks_of(WINDOW).take(windows);
    let (first, d) = timed(|| pool.map(window_sum, handles()));
    let first = first?;
    // Warm: the median of five maps after two more untimed ones. A window lands on whichever
    // worker is free, so for the first few maps a worker still faults in pages it has not
    // touched yet; after that each has every page mapped.
    let mut warm = Vec::new();
    for i in 0..7 {
        let (v, d) = timed(|| pool.map(window_sum, handles()));
        assert_eq!(v?, first);
        if i >= 2 {
            warm.push(secs(d));
        }
    }
    warm.sort_by(f64::total_cmp);
    {
        let mut push = recorder("pool-core", rows, bar);
        push("shared-scan", bytes / warm[2] / 1e9, "GB/s", windows);
        push("shared-scan-first", bytes / secs(d) / 1e9, "GB/s", windows);
    }
    pool.close();
    pool.join()?;
    drop(data);

    let vec: Vec<u64> = (0..len as u64).collect();
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(o.workers)
        .build()
        .expect("rayon pool");
    let mut warm = Vec::new();
    for i in 0..7 {
        let (v, d) = timed(|| {
            threads.install(|| {
                vec.par_chunks(WINDOW)
                    .take(windows)
                    .map(scan)
                    .collect::<Vec<_>>()
            })
        });
        assert_eq!(v, first, "rayon and pool-core summed different numbers");
        if i >= 2 {
            warm.push(secs(d));
        }
    }
    warm.sort_by(f64::total_cmp);
    recorder("rayon", rows, bar)("shared-scan", bytes / warm[2] / 1e9, "GB/s", windows);
    Ok(())
}

fn sample_sum(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(4096).map(|&b| b as u64).sum::<u64>() + bytes.len() as u64
}

struct Options {
    workers: usize,
    scale: f64,
    json: bool,
    svg: Option<String>,
    python: bool,
    redis: bool,
    progress: bool,
}

fn parse_options() -> Options {
    let mut o = Options {
        workers: num_cpus::get(),
        scale: 1.0,
        json: false,
        svg: Some("target/throughput.svg".into()),
        python: true,
        redis: true,
        progress: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" => {
                o.workers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--workers N")
            }
            "--scale" => o.scale = args.next().and_then(|v| v.parse().ok()).expect("--scale X"),
            "--quick" => o.scale = 0.1,
            "--json" => o.json = true,
            "--svg" => o.svg = args.next(),
            "--no-svg" => o.svg = None,
            "--no-python" => o.python = false,
            "--no-redis" => o.redis = false,
            "--progress" => o.progress = true,
            "-h" | "--help" => {
                println!(
                    "usage: throughput [--workers N] [--quick | --scale X] [--json] \
                     [--svg PATH | --no-svg] [--no-python] [--no-redis] [--progress]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown option {other}; see --help"),
        }
    }
    o
}

#[derive(Clone, Debug)]
struct Row {
    workload: String,
    system: &'static str,
    value: f64,
    unit: String,
    n: usize,
}

/// Records one system's results, advancing the progress bar.
fn recorder<'a>(
    system: &'static str,
    rows: &'a mut Vec<Row>,
    bar: &'a ProgressBar,
) -> impl FnMut(&str, f64, &str, usize) + 'a {
    move |workload, value, unit, n| {
        bar.inc(1);
        bar.set_message(format!("{system} {workload}"));
        rows.push(Row {
            workload: workload.into(),
            system,
            value,
            unit: unit.into(),
            n,
        })
    }
}

fn higher_is_better(unit: &str) -> bool {
    !(unit == "ms" || unit == "us")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn n(base: usize, scale: f64) -> usize {
    ((base as f64 * scale) as usize).max(1)
}

/// Iterations of `busy` that take about 3 ms on this machine.
fn calibrate_busy() -> u64 {
    let mut k = 100_000u64;
    loop {
        let (_, d) = timed(|| black_box(busy(k)));
        if d >= Duration::from_millis(3) {
            return k;
        }
        k = ((k as f64 * (0.003 / secs(d).max(1e-6)).max(1.2)) as u64).min(1 << 40);
    }
}

/// The `cpu` workload's task count and its time on one core, measured once and shared by the
/// Rust systems so that their speed-ups have the same baseline.
fn serial_cpu(o: &Options, k: u64) -> (usize, Duration) {
    static SERIAL: std::sync::OnceLock<(usize, Duration)> = std::sync::OnceLock::new();
    *SERIAL.get_or_init(|| {
        let tasks = n(400, o.scale).max(2 * o.workers);
        let (_, serial) = timed(|| (0..tasks).map(|_| black_box(busy(k))).collect::<Vec<_>>());
        (tasks, serial)
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn bench_pool(
    o: &Options,
    k: u64,
    rows: &mut Vec<Row>,
    bar: &ProgressBar,
) -> Result<(), pool_core::Error> {
    let sys = "pool-core";
    let mut push = recorder(sys, rows, bar);
    // startup
    let t = Instant::now();
    let pool = Pool::builder().processes(o.workers).build()?;
    pool.apply(square, 1)?;
    let first = t.elapsed();
    pool.close();
    let (_, join) = timed(|| pool.join());
    push("startup-first-result", secs(first) * 1e3, "ms", 1);
    push("startup-join-idle", secs(join) * 1e3, "ms", 1);

    let pool = Pool::builder().processes(o.workers).build()?;
    pool.map(square, 0..10_000)?;

    let count = n(40_000_000, o.scale);
    let (v, d) = timed(|| pool.map(square, 0..count as u64));
    assert_eq!(v?.len(), count);
    push("map-tiny", count as f64 / secs(d), "tasks/s", count);

    let count = n(2_000_000, o.scale);
    let (v, d) = timed(|| pool.map_chunked(square, 0..count as u64, 1));
    assert_eq!(v?.len(), count);
    push("map-chunk1", count as f64 / secs(d), "tasks/s", count);

    let count = n(2_000_000, o.scale);
    let (sum, d) = timed(|| -> Result<u64, pool_core::Error> {
        let pending: Vec<_> = (0..count as u64)
            .map(|i| pool.apply_async(square, i))
            .collect();
        let mut sum = 0u64;
        for r in &pending {
            sum = sum.wrapping_add(r.get()?);
        }
        Ok(sum)
    });
    black_box(sum?);
    push("apply-async", count as f64 / secs(d), "tasks/s", count);

    let count = n(100_000, o.scale);
    let mut lat = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let t = Instant::now();
        black_box(pool.apply(square, i)?);
        lat.push(secs(t.elapsed()) * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    push("apply-latency-p50", percentile(&lat, 0.5), "us", count);
    push("apply-latency-p99", percentile(&lat, 0.99), "us", count);

    let (tasks, serial) = serial_cpu(o, k);
    let (v, par) = timed(|| pool.map(busy, vec![k; tasks]));
    v?;
    push("cpu", secs(serial) / secs(par), "x speed-up", tasks);

    let blobs = make_blobs(n(200, o.scale).max(20));
    let count = blobs.len();
    let expected: Vec<u64> = blobs.iter().map(|b| sample_sum(b)).collect();
    let (v, d) = timed(|| pool.map(checksum, blobs));
    assert_eq!(v?, expected);
    push("bytes", (count << 20) as f64 / secs(d) / 1e9, "GB/s", count);
    pool.close();
    pool.join()?;

    // A Queue between two processes: a producer Process, the consumer here.
    let count = n(2_000_000, o.scale);
    let q: Queue<u64> = Queue::bounded(1024)?;
    let (_, d) = timed(|| -> Result<(), pool_core::Error> {
        let p = Process::new(produce_small, (q.clone(), count as u64)).start()?;
        for i in 0..count as u64 {
            assert_eq!(q.get().expect("an item"), i);
        }
        p.join();
        Ok(())
    });
    push("queue-small", count as f64 / secs(d), "items/s", count);
    let count = n(4_000, o.scale).max(100);
    let q: Queue<Vec<u8>> = Queue::bounded(1024)?;
    let blob = make_blobs(1)[0].clone();
    let (_, d) = timed(|| -> Result<(), pool_core::Error> {
        let p = Process::new(produce_blobs, (q.clone(), count as u64, blob)).start()?;
        for _ in 0..count {
            assert_eq!(q.get().expect("an item").len(), 1 << 20);
        }
        p.join();
        Ok(())
    });
    push(
        "queue-1mib",
        (count << 20) as f64 / secs(d) / 1e9,
        "GB/s",
        count,
    );
    Ok(())
}

/// Puts 0..n on `q`.
#[task]
fn produce_small(q: Queue<u64>, n: u64) {
    for i in 0..n {
        q.put(i).expect("put");
    }
}

/// Puts `blob` on `q` `n` times.
#[task]
fn produce_blobs(q: Queue<Vec<u8>>, n: u64, blob: Vec<u8>) {
    for _ in 0..n {
        q.put(blob.clone()).expect("put");
    }
}

fn make_blobs(count: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let base: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    (0..count)
        .map(|i| {
            let mut b = base.clone();
            b.rotate_left(i);
            b
        })
        .collect()
}

fn bench_rayon(o: &Options, k: u64, rows: &mut Vec<Row>, bar: &ProgressBar) {
    let sys = "rayon";
    let mut push = recorder(sys, rows, bar);
    let t = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.workers)
        .build()
        .expect("rayon pool");
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.spawn(move || tx.send(square(1)).unwrap());
    rx.recv().unwrap();
    let first = t.elapsed();
    let (_, join) = timed(|| drop(pool));
    push("startup-first-result", secs(first) * 1e3, "ms", 1);
    push("startup-join-idle", secs(join) * 1e3, "ms", 1);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.workers)
        .build()
        .expect("rayon pool");
    pool.install(|| {
        let count = n(40_000_000, o.scale);
        let (v, d) = timed(|| {
            (0..count as u64)
                .into_par_iter()
                .map(*square)
                .collect::<Vec<_>>()
        });
        assert_eq!(v.len(), count);
        push("map-tiny", count as f64 / secs(d), "tasks/s", count);
    });

    // One spawn and one channel message per task.
    let spawn_each = |count: usize| {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..count as u64 {
            let tx = tx.clone();
            pool.spawn(move || tx.send((i, square(i))).unwrap());
        }
        drop(tx);
        let mut out = vec![0u64; count];
        for (i, v) in rx {
            out[i as usize] = v;
        }
        out
    };
    let count = n(2_000_000, o.scale);
    let (v, d) = timed(|| spawn_each(count));
    assert_eq!(v.len(), count);
    push("map-chunk1", count as f64 / secs(d), "tasks/s", count);
    let (v, d) = timed(|| spawn_each(count));
    assert_eq!(v.len(), count);
    push("apply-async", count as f64 / secs(d), "tasks/s", count);

    let count = n(100_000, o.scale);
    let mut lat = Vec::with_capacity(count);
    let (tx, rx) = crossbeam_channel::bounded(1);
    for i in 0..count as u64 {
        let t = Instant::now();
        let tx = tx.clone();
        pool.spawn(move || tx.send(square(i)).unwrap());
        black_box(rx.recv().unwrap());
        lat.push(secs(t.elapsed()) * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    push("apply-latency-p50", percentile(&lat, 0.5), "us", count);
    push("apply-latency-p99", percentile(&lat, 0.99), "us", count);

    let (tasks, serial) = serial_cpu(o, k);
    let (_, par) = timed(|| {
        pool.install(|| {
            (0..tasks)
                .into_par_iter()
                .map(|_| busy(k))
                .collect::<Vec<_>>()
        })
    });
    push("cpu", secs(serial) / secs(par), "x speed-up", tasks);

    let blobs = make_blobs(n(200, o.scale).max(20));
    let count = blobs.len();
    let (v, d) =
        timed(|| pool.install(|| blobs.par_iter().map(|b| sample_sum(b)).collect::<Vec<_>>()));
    assert_eq!(v.len(), count);
    push("bytes", (count << 20) as f64 / secs(d) / 1e9, "GB/s", count);

    // The thread equivalent of a Queue between processes: a bounded channel between threads.
    let count = n(2_000_000, o.scale);
    let (tx, rx) = crossbeam_channel::bounded::<u64>(1024);
    let (_, d) = timed(|| {
        let producer = std::thread::spawn(move || {
            for i in 0..count as u64 {
                tx.send(i).unwrap();
            }
        });
        for i in 0..count as u64 {
            assert_eq!(rx.recv().unwrap(), i);
        }
        producer.join().unwrap();
    });
    push("queue-small", count as f64 / secs(d), "items/s", count);
    let count = n(4_000, o.scale).max(100);
    let blob = make_blobs(1)[0].clone();
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1024);
    let (_, d) = timed(|| {
        let producer = std::thread::spawn(move || {
            for _ in 0..count {
                tx.send(blob.clone()).unwrap();
            }
        });
        for _ in 0..count {
            assert_eq!(rx.recv().unwrap().len(), 1 << 20);
        }
        producer.join().unwrap();
    });
    push(
        "queue-1mib",
        (count << 20) as f64 / secs(d) / 1e9,
        "GB/s",
        count,
    );
}

/// Runs the project's Python script; returns no rows (with a note) when python3 is missing.
/// pool-redis end to end: a private `redis-server`, one worker process (this binary with
/// `--redis-worker`) running `o.workers` processes, and a client here.
fn bench_redis(o: &Options, rows: &mut Vec<Row>, bar: &ProgressBar) -> Result<(), String> {
    let server = pool_testkit::RedisServer::try_start()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut worker = Command::new(exe)
        .args([
            "--redis-worker",
            &server.url(),
            "bench",
            &o.workers.to_string(),
        ])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let pool =
            pool_redis::RedisPool::connect(&server.url(), "bench").map_err(|e| e.to_string())?;
        // Warm-up, which also waits for the worker.
        pool.map_chunked(square, 0..10_000u64, 1000)
            .map_err(|e| e.to_string())?;
        let mut push = recorder("pool-core", rows, bar);
        for (workload, base, chunk) in [
            ("redis-chunk1000", 4_000_000, 1000),
            ("redis-chunk1", 60_000, 1),
        ] {
            let count = n(base, o.scale);
            let (v, d) = timed(|| pool.map_chunked(square, 0..count as u64, chunk));
            let v = v.map_err(|e| e.to_string())?;
            assert_eq!(v.len(), count);
            assert_eq!(v[count - 1], (count as u64 - 1) * (count as u64 - 1));
            push(workload, count as f64 / secs(d), "tasks/s", count);
        }
        Ok(())
    })();
    let _ = worker.kill();
    let _ = worker.wait();
    result
}

fn bench_python(o: &Options, rows: &mut Vec<Row>, bar: &ProgressBar) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/mp_bench.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(o.workers.to_string())
        .arg(o.scale.to_string())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("python3 not run ({e}); the table has no Python column");
            return;
        }
    };
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    for line in stdout.lines() {
        let line = line.expect("python output");
        let field = |name: &str| -> Option<String> {
            let at = line.find(&format!("\"{name}\": "))? + name.len() + 4;
            let rest = &line[at..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Some(rest[..end].trim().trim_matches('"').to_string())
        };
        let (Some(w), Some(v), Some(u), Some(n)) =
            (field("workload"), field("value"), field("unit"), field("n"))
        else {
            continue;
        };
        bar.inc(1);
        bar.set_message(format!("python {w}"));
        if let Some(how) = field("how") {
            eprintln!("python {w}: summed with {how}");
        }
        rows.push(Row {
            workload: w,
            system: "python",
            value: v.parse().unwrap_or(f64::NAN),
            unit: u,
            n: n.parse().unwrap_or(0),
        });
    }
    let _ = child.wait();
}

const WORKLOADS: [&str; 17] = [
    "map-tiny",
    "map-chunk1",
    "apply-async",
    "apply-latency-p50",
    "apply-latency-p99",
    "cpu",
    "bytes",
    "shared-scan",
    "shared-scan-first",
    "cancel-latency",
    "startup-first-result",
    "startup-join-idle",
    "queue-small",
    "queue-1mib",
    "redis-chunk1000",
    "redis-chunk1",
    "",
];

fn find<'a>(rows: &'a [Row], workload: &str, system: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.system == system)
}

/// How many times better pool-core is than `peer` (> 1: better), whatever the unit's direction.
fn ratio(pool: &Row, peer: &Row) -> f64 {
    if higher_is_better(&pool.unit) {
        pool.value / peer.value
    } else {
        peer.value / pool.value
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "tasks/s" if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        "tasks/s" => format!("{:.1} k/s", v / 1e3),
        "items/s" if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        "items/s" => format!("{:.1} k/s", v / 1e3),
        "GB/s" => format!("{v:.2} GB/s"),
        "x speed-up" => format!("{v:.2}x"),
        "us" => format!("{v:.1} µs"),
        "ms" => format!("{v:.2} ms"),
        _ => format!("{v:.3} {unit}"),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:>14} {:>14} {:>14} {:>11} {:>11}",
        "workload", "pool-core", "rayon", "python", "vs rayon", "vs python"
    );
    for w in WORKLOADS.iter().filter(|w| !w.is_empty()) {
        let Some(pool) = find(rows, w, "pool-core") else {
            continue;
        };
        let cell =
            |sys: &str| find(rows, w, sys).map_or("-".to_string(), |r| fmt_value(r.value, &r.unit));
        let vs = |sys: &str| {
            find(rows, w, sys).map_or("-".to_string(), |r| format!("{:.2}x", ratio(pool, r)))
        };
        println!(
            "{:<22} {:>14} {:>14} {:>14} {:>11} {:>11}",
            w,
            cell("pool-core"),
            cell("rayon"),
            cell("python"),
            vs("rayon"),
            vs("python")
        );
    }
    println!("(vs: how many times better pool-core is; > 1 is better, for any unit)");
}

fn print_json(rows: &[Row]) {
    let mut s = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {{\"workload\": \"{}\", \"system\": \"{}\", \"value\": {}, \"unit\": \"{}\", \"n\": {}}}{}",
            r.workload,
            r.system,
            r.value,
            r.unit,
            r.n,
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    s.push(']');
    println!("{s}");
}

/// A bar chart of pool-core's ratio to each peer, per workload (log scale, 1× marked).
fn write_svg(rows: &[Row], path: &str, title: &str) -> std::io::Result<()> {
    // Only workloads with a peer to compare with (the Redis rows have none).
    let workloads: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| !w.is_empty())
        .filter(|w| find(rows, w, "rayon").is_some() || find(rows, w, "python").is_some())
        .collect();
    let (w, row_h, left, top) = (900.0, 34.0, 190.0, 60.0);
    let h = top + row_h * workloads.len() as f64 + 60.0;
    // A log axis from 1/1000x to 1000x.
    let x_of = |r: f64| left + (r.clamp(1e-3, 1e3).log10() + 3.0) / 6.0 * (w - left - 40.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"24\" font-size=\"16\">{title}</text>\n\
         <text x=\"{left}\" y=\"44\" fill=\"#555\">pool-core's ratio to rayon (blue) and Python multiprocessing (orange); right of 1x is better</text>\n"
    );
    for tick in [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
        let x = x_of(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{}\" stroke=\"{}\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{tick}x</text>",
            h - 40.0,
            if tick == 1.0 { "#000" } else { "#ddd" },
            h - 24.0
        );
    }
    for (i, wl) in workloads.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{wl}</text>",
            left - 8.0,
            y + 20.0
        );
        let Some(pool) = find(rows, wl, "pool-core") else {
            continue;
        };
        for (j, (peer, color)) in [("rayon", "#4e79a7"), ("python", "#f28e2b")]
            .iter()
            .enumerate()
        {
            if let Some(r) = find(rows, wl, peer) {
                let q = ratio(pool, r);
                let (x0, x1) = (x_of(1.0), x_of(q));
                let (xa, xb) = if x1 >= x0 { (x0, x1) } else { (x1, x0) };
                let yy = y + 4.0 + 13.0 * j as f64;
                let _ = writeln!(
                    s,
                    "<rect x=\"{xa}\" y=\"{yy}\" width=\"{}\" height=\"11\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{q:.2}x</text>",
                    (xb - xa).max(1.0),
                    xb + 4.0,
                    yy + 10.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s)
}

fn main() -> Result<(), pool_core::Error> {
    // The Redis rows' worker: this binary again, serving the queue.
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, url, queue, workers] = &args[..] {
        if flag == "--redis-worker" {
            let n = workers.parse().expect("worker count");
            // Tiny unchunked tasks flow faster when the worker holds many at once.
            let worker = pool_redis::Worker::new(url, queue);
            if let Err(e) = worker.and_then(|w| w.processes(n).prefetch(64 * n).run()) {
                eprintln!("redis worker: {e}");
                std::process::exit(1);
            }
            return Ok(());
        }
    }
    let o = parse_options();
    let k = calibrate_busy();
    eprintln!(
        "throughput: {} workers, scale {}, busy({k}) ≈ 3 ms; running pool-core, rayon{}…",
        o.workers,
        o.scale,
        if o.python { ", python" } else { "" }
    );
    let mut rows = Vec::new();
    let systems = if o.python { 3 } else { 2 };
    let bar = if o.progress {
        let bar = ProgressBar::new(systems * 14);
        bar.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    bench_pool(&o, k, &mut rows, &bar)?;
    bench_rayon(&o, k, &mut rows, &bar);
    bench_shared(&o, &mut rows, &bar)?;
    bench_cancel(&o, &mut rows, &bar)?;
    if o.python {
        bench_python(&o, &mut rows, &bar);
    }
    if o.redis {
        if let Err(e) = bench_redis(&o, &mut rows, &bar) {
            eprintln!("redis rows left out: {e}");
        }
    }
    bar.finish_and_clear();
    if o.json {
        print_json(&rows);
    } else {
        print_table(&rows);
    }
    if let Some(path) = &o.svg {
        let title = format!(
            "pool-core throughput, {} workers on {} CPUs",
            o.workers,
            num_cpus::get()
        );
        match write_svg(&rows, path, &title) {
            Ok(()) => eprintln!("chart written to {path}"),
            Err(e) => eprintln!("could not write {path}: {e}"),
        }
    }
    Ok(())
}
