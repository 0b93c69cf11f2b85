//! A fault campaign of our own, beyond the defects the chaos issue listed: random faults of
//! every class at random moments, each run checking that every task resolves exactly once —
//! to its value or to the error its fault explains — that the pool then serves a normal map at
//! full strength and says it is healthy, and that no process is left behind. It prints its
//! counts (`chaos-campaign: …`); any wrong answer fails it.
//!
//! The classes:
//! - outside signals of every kind at every phase of a worker's life: starting, running its
//!   initializer, idle, running a task, exiting after `close`;
//! - process-global state inherited by fork: pools nested in tasks, several deep and wide;
//! - handles used in the wrong process: a pool, its results and iterators in `Process` children;
//! - peers dying mid-operation for the primitives: pipe writers, queue producers, lock holders;
//! - iterators that break their contracts: lying size hints both ways, inputs that panic.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pool_core::{task, Error, ExitCause, Pool, Process, Queue, Runnable};
use pool_tests::{children, deadline, eventually, is_alive, Rng};

/// What the campaign did and found.
#[derive(Default, Debug)]
struct Tally {
    runs: u64,
    tasks: u64,
    faults: u64,
    wrong: Vec<String>,
}

impl Tally {
    fn wrong(&mut self, what: String) {
        if self.wrong.len() < 20 {
            self.wrong.push(what);
        }
    }
}

#[task]
fn nap_square(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

static INITS: AtomicU64 = AtomicU64::new(0);

#[task]
fn slow_init(ms: u64) {
    INITS.fetch_add(1, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(ms));
}

const SIGNALS: [i32; 12] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGKILL,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGSEGV,
    libc::SIGABRT,
    libc::SIGBUS,
];

#[derive(Debug, Clone, Copy)]
enum Phase {
    Starting,
    Initializing,
    Idle,
    Running,
    Exiting,
}

/// The pool after a fault: serves a normal map with every worker back, and is not degraded.
fn check_healthy(pool: &Pool, what: &str, tally: &mut Tally) {
    match pool.map(square, 0..2_000) {
        Ok(v) if v[1_999] == 1_999 * 1_999 => {}
        other => tally.wrong(format!(
            "{what}: map after the fault: {:?}",
            other.map(|v| v.len())
        )),
    }
    if !eventually(10, || pool.worker_pids().len() == pool.processes()) {
        tally.wrong(format!("{what}: workers not back: {:?}", pool.stats()));
    }
    if let Some(d) = pool.stats().degraded {
        tally.wrong(format!("{what}: degraded: {d}"));
    }
}

/// One run of the signal class: a signal at one phase of a worker's life.
fn signal_run(rng: &mut Rng, sig: i32, phase: Phase, tally: &mut Tally) {
    let what = format!("signal {sig} while {phase:?}");
    let pool = Pool::builder()
        .processes(2)
        .initializer(slow_init, 15)
        .build()
        .unwrap();
    let target = |pool: &Pool| pool.worker_pids().first().copied();
    let send = |pid: i32| {
        // SAFETY: signals our own worker.
        unsafe { libc::kill(pid, sig) };
    };
    let n = 10 + rng.below(20);
    let results: Vec<_>;
    match phase {
        Phase::Starting | Phase::Initializing => {
            // Kill a worker, then hit its replacement as soon as it appears (starting), or
            // a few milliseconds in (running its 15 ms initializer).
            let old = pool.worker_pids();
            // SAFETY: signals our own worker.
            unsafe { libc::kill(old[0], libc::SIGKILL) };
            let fresh = (0..2000).find_map(|_| {
                let now = pool.worker_pids();
                let new = now.into_iter().find(|p| !old.contains(p));
                if new.is_none() {
                    std::thread::sleep(Duration::from_micros(200));
                }
                new
            });
            if let Some(pid) = fresh {
                if matches!(phase, Phase::Initializing) {
                    std::thread::sleep(Duration::from_millis(3 + rng.below(8)));
                }
                send(pid);
            }
            tally.faults += 2;
            results = (0..n)
                .map(|i| pool.apply_async(nap_square, (i, 1)))
                .collect();
        }
        Phase::Idle => {
            std::thread::sleep(Duration::from_millis(40)); // initializers done
            if let Some(pid) = target(&pool) {
                send(pid);
            }
            tally.faults += 1;
            results = (0..n)
                .map(|i| pool.apply_async(nap_square, (i, 1)))
                .collect();
        }
        Phase::Running => {
            results = (0..n)
                .map(|i| pool.apply_async(nap_square, (i, 5)))
                .collect();
            std::thread::sleep(Duration::from_millis(20 + rng.below(30)));
            if let Some(pid) = target(&pool) {
                send(pid);
            }
            tally.faults += 1;
        }
        Phase::Exiting => {
            results = (0..n)
                .map(|i| pool.apply_async(nap_square, (i, 1)))
                .collect();
            let pids = pool.worker_pids();
            pool.close();
            std::thread::sleep(Duration::from_millis(rng.below(30)));
            if let Some(&pid) = pids.first() {
                send(pid);
            }
            tally.faults += 1;
        }
    }
    tally.runs += 1;
    for (i, r) in results.into_iter().enumerate() {
        tally.tasks += 1;
        let i = i as u64;
        match r.get_timeout(Duration::from_secs(30)) {
            Ok(v) if v == i * i => {}
            // Only a task whose worker the signal ended may fail, and only with its death.
            Err(Error::WorkerDied { cause, .. })
                if cause == ExitCause::Signal(sig) || cause == ExitCause::Signal(libc::SIGKILL) => {
            }
            other => tally.wrong(format!("{what}: task {i}: {other:?}")),
        }
    }
    if matches!(phase, Phase::Exiting) {
        if pool.join().is_err() || !pool.worker_pids().is_empty() {
            tally.wrong(format!("{what}: join after close"));
        }
    } else {
        check_healthy(&pool, &what, tally);
    }
}

#[task]
fn nested_sum(depth: u64, n: u64) -> Result<u64, String> {
    let pool = Pool::builder()
        .processes(2)
        .build()
        .map_err(|e| e.to_string())?;
    if depth > 1 {
        let parts = pool
            .map_chunked(nested_sum, vec![(depth - 1, n); 2], 1)
            .map_err(|e| e.to_string())?;
        return parts.into_iter().sum::<Result<u64, String>>();
    }
    Ok(pool
        .map(square, 0..n)
        .map_err(|e| e.to_string())?
        .iter()
        .sum())
}

/// Inherited state: pools nested two and three deep, several at once.
fn nested_run(rng: &mut Rng, tally: &mut Tally) {
    let pool = pool(2);
    let depth = 1 + rng.below(3);
    let n = 100 + rng.below(900);
    let leaf: u64 = (0..n).map(|x| x * x).sum();
    let want = leaf << (depth - 1);
    let got = pool.map_chunked(nested_sum, vec![(depth, n); 3], 1);
    tally.runs += 1;
    tally.tasks += 3;
    match got {
        Ok(v) if v.iter().all(|r| r.as_ref().ok() == Some(&want)) => {}
        other => tally.wrong(format!("nested depth {depth}: {other:?}")),
    }
    check_healthy(&pool, "nested", tally);
}

struct TriesParentPool {
    pool: Arc<Pool>,
    out: Queue<u64>,
}

impl Runnable for TriesParentPool {
    fn run(&mut self) {
        let mut wrong_process = 0;
        let is_wrong = |e: &Error| matches!(e, Error::WrongProcess { .. });
        wrong_process += u64::from(self.pool.apply(square, 2).is_err_and(|e| is_wrong(&e)));
        wrong_process += u64::from(self.pool.map(square, 0..5).is_err_and(|e| is_wrong(&e)));
        let r = self.pool.map_async(square, 0..5);
        wrong_process += u64::from(r.get().is_err_and(|e| is_wrong(&e)));
        let first = self.pool.imap_unordered(square, 0..5).next();
        wrong_process += u64::from(first.is_some_and(|r| r.is_err_and(|e| is_wrong(&e))));
        self.out.put(wrong_process).unwrap();
    }
}

/// Handles in the wrong process: a child uses its parent's pool, then the parent goes on.
fn wrong_process_run(tally: &mut Tally) {
    let pool = Arc::new(pool(2));
    let out = Queue::new().unwrap();
    let child = Process::from_runnable(TriesParentPool {
        pool: Arc::clone(&pool),
        out: out.clone(),
    })
    .start()
    .unwrap();
    tally.runs += 1;
    tally.tasks += 4;
    match out.get_timeout(Duration::from_secs(30)) {
        Ok(4) => {}
        other => tally.wrong(format!("wrong process: {other:?}")),
    }
    child.join();
    check_healthy(&pool, "wrong process", tally);
}

#[task]
fn pipe_writer(tx: pool_core::Connection<u64>, n: u64) {
    for i in 0..n {
        let _ = tx.send(&i);
        std::thread::sleep(Duration::from_micros(300));
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[task]
fn queue_producer(q: Queue<u64>, n: u64) {
    for i in 0..n {
        let _ = q.put(i);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[task]
fn lock_holder(lock: pool_core::Lock, ready: Queue<u8>) {
    let _guard = lock.acquire();
    let _ = ready.put(1);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Peers dying mid-operation: a writer, a producer and a lock holder, each SIGKILLed.
fn peers_run(rng: &mut Rng, tally: &mut Tally) {
    // A pipe writer killed mid-stream: the reader gets what was sent, in order, then Closed.
    let (rx, tx) = pool_core::Pipe::simplex::<u64>().unwrap();
    let writer = Process::new(pipe_writer, (tx.clone(), 1_000))
        .start()
        .unwrap();
    drop(tx);
    std::thread::sleep(Duration::from_millis(5 + rng.below(40)));
    writer.kill();
    tally.faults += 1;
    let mut got = Vec::new();
    let end = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(v) => got.push(v),
            Err(e) => break e,
        }
    };
    tally.runs += 1;
    tally.tasks += got.len() as u64;
    if end != pool_core::GetError::Closed || got.iter().enumerate().any(|(i, &v)| v != i as u64) {
        tally.wrong(format!(
            "pipe writer killed: {end:?} after {} items",
            got.len()
        ));
    }
    writer.join();

    // A queue producer killed mid-stream: every item it finished arrives, in order.
    let q = Queue::new().unwrap();
    let producer = Process::new(queue_producer, (q.clone(), 100_000))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5 + rng.below(40)));
    producer.kill();
    producer.join();
    tally.faults += 1;
    let mut n = 0u64;
    while let Ok(v) = q.try_get() {
        if v != n {
            tally.wrong(format!("queue producer killed: item {n} was {v}"));
            break;
        }
        n += 1;
    }
    tally.runs += 1;
    tally.tasks += n;

    // A lock holder killed: the next acquirer gets the lock, told that its owner died.
    let lock = pool_core::Lock::new().unwrap();
    let ready = Queue::new().unwrap();
    let holder = Process::new(lock_holder, (lock.clone(), ready.clone()))
        .start()
        .unwrap();
    let _ = ready.get_timeout(Duration::from_secs(20));
    holder.kill();
    holder.join();
    tally.faults += 1;
    tally.runs += 1;
    match lock.acquire_timeout(Duration::from_secs(20)) {
        Some(Err(_owner_died)) => {}
        other => tally.wrong(format!(
            "lock holder killed: {:?}",
            other.map(|r| r.is_ok())
        )),
    };
}

/// Yields `yields` items while its size hint says exactly `says`, and may panic at `panic_at`.
struct Contrary {
    says: usize,
    yields: u64,
    panic_at: Option<u64>,
    next: u64,
}

impl Iterator for Contrary {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if Some(self.next) == self.panic_at {
            panic!("the input broke at {}", self.next);
        }
        (self.next < self.yields).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.says, Some(self.says))
    }
}

/// Iterators that break their contracts, through every kind of map.
fn iterator_run(rng: &mut Rng, pool: &Pool, tally: &mut Tally) {
    let yields = rng.below(300);
    let says = match rng.below(3) {
        0 => yields as usize,
        1 => yields as usize + 1 + rng.below(5) as usize,
        _ => (yields as usize).saturating_sub(1 + rng.below(5) as usize),
    };
    let honest = says as u64 == yields;
    let input = || Contrary {
        says,
        yields,
        panic_at: None,
        next: 0,
    };
    let want: Vec<u64> = (0..yields).map(|x| x * x).collect();
    let chunk = 1 + rng.below(40) as usize;
    let outcomes = [
        pool.map(square, input()),
        pool.map_chunked(square, input(), chunk),
        pool.map_async(square, input()).get(),
        pool.map_async_chunked(square, input(), chunk).get(),
    ];
    for (i, got) in outcomes.into_iter().enumerate() {
        tally.runs += 1;
        tally.tasks += yields;
        let right = match &got {
            Ok(v) => honest && *v == want,
            Err(Error::BadIterator(_)) => !honest,
            Err(_) => false,
        };
        if !right {
            tally.wrong(format!(
                "map form {i}, says {says} yields {yields}: {:?}",
                got.map(|v| v.len())
            ));
        }
    }
    // imap ignores the hint; an input that panics at k yields 0..k, then the panic.
    let k = rng.below(yields.max(1));
    let mut it = pool.imap_chunked(
        square,
        Contrary {
            says,
            yields,
            panic_at: (k < yields).then_some(k),
            next: 0,
        },
        chunk,
    );
    let mut got = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for r in it.by_ref() {
            got.push(r.unwrap());
        }
    }));
    tally.runs += 1;
    tally.tasks += got.len() as u64;
    let expect_panic = k < yields;
    if outcome.is_err() != expect_panic || got.len() as u64 != k.min(yields) {
        tally.wrong(format!(
            "imap panicking at {k} of {yields}: {} results",
            got.len()
        ));
    }
}

#[test]
fn chaos_campaign() {
    let tally = deadline(600, "the chaos campaign", || {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::process::id() as u64 | 1);
        eprintln!("chaos-campaign seed={seed} (CHAOS_SEED={seed} replays it)");
        let mut rng = Rng(seed);
        let mut tally = Tally::default();
        let started = Instant::now();
        let phases = [
            Phase::Starting,
            Phase::Initializing,
            Phase::Idle,
            Phase::Running,
            Phase::Exiting,
        ];
        for _round in 0..2 {
            for &phase in &phases {
                for &sig in &SIGNALS {
                    signal_run(&mut rng, sig, phase, &mut tally);
                }
            }
        }
        for _ in 0..6 {
            nested_run(&mut rng, &mut tally);
            wrong_process_run(&mut tally);
            peers_run(&mut rng, &mut tally);
        }
        let pool = pool(2);
        for _ in 0..60 {
            iterator_run(&mut rng, &pool, &mut tally);
        }
        check_healthy(&pool, "iterators", &mut tally);
        drop(pool);
        // Nothing left behind: no child of this process is alive (or a zombie) any more.
        let leftovers = |_: ()| {
            children()
                .into_iter()
                .filter(|c| is_alive(c.pid) || c.state == 'Z')
                .count()
        };
        if !eventually(10, || leftovers(()) == 0) {
            tally.wrong(format!("processes left behind: {:?}", children()));
        }
        eprintln!(
            "chaos-campaign: classes=5 signals={} phases={} runs={} tasks={} faults={} wrong={} in {:.1} s",
            SIGNALS.len(),
            phases.len(),
            tally.runs,
            tally.tasks,
            tally.faults,
            tally.wrong.len(),
            started.elapsed().as_secs_f64()
        );
        tally
    });
    assert!(tally.wrong.is_empty(), "wrong answers: {:#?}", tally.wrong);
    assert!(tally.runs > 100 && tally.tasks > 1_000, "{tally:?}");
}
