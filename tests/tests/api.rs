//! Every call of the pool's API, with correct results on at least 10,000 items.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use pool_core::{Error, Pool, Task};
use pool_tests::deadline;

const N: u64 = 10_000;

#[test]
fn apply_one_and_several_and_no_parameters() {
    deadline(120, "apply", || {
        let pool = pool(2);
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
        assert_eq!(pool.apply(add, (-7, 3)).unwrap(), -4);
        pool.apply(nothing, ()).unwrap();
        let words = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(pool.apply(concat, (words, "-".into())).unwrap(), "a-b-c");
        assert_eq!(pool.apply(parse_number, "42".into()).unwrap(), Ok(42));
        assert!(pool.apply(parse_number, "x".into()).unwrap().is_err());
        for i in 0..N {
            assert_eq!(pool.apply(square, i).unwrap(), i * i);
        }
    });
}

#[test]
fn tasks_run_in_other_processes() {
    deadline(30, "pids", || {
        let pool = pool(2);
        let me = std::process::id() as i32;
        let pids: HashSet<i32> = (0..50)
            .map(|_| pool.apply(worker_pid, ()).unwrap())
            .collect();
        assert!(!pids.contains(&me));
        let workers: HashSet<i32> = pool.worker_pids().into_iter().collect();
        assert_eq!(workers.len(), 2);
        assert!(pids.is_subset(&workers), "{pids:?} ⊄ {workers:?}");
    });
}

#[test]
fn a_task_is_still_a_function() {
    assert_eq!(square(3), 9);
    assert_eq!(add(1, 2), 3);
    let f: fn(u64) -> u64 = *square;
    assert_eq!(f(4), 16);
    assert_eq!(square::call(5), 25);
    assert_eq!(square::NAME, "pool_tests::tasks::square");
}

#[test]
fn apply_async_many_then_get() {
    deadline(30, "apply_async", || {
        let pool = pool(2);
        let results: Vec<_> = (0..N).map(|i| pool.apply_async(square, i)).collect();
        for (i, r) in results.iter().enumerate() {
            let i = i as u64;
            assert_eq!(r.get().unwrap(), i * i);
            assert!(r.ready());
            assert_eq!(r.successful(), Some(true));
            // A result may be read again.
            assert_eq!(r.get().unwrap(), i * i);
        }
    });
}

#[test]
fn async_result_waits_and_timeouts() {
    deadline(30, "waits", || {
        let pool = pool(1);
        let slow = pool.apply_async(sleep_ms, 300);
        assert!(!slow.ready());
        assert_eq!(slow.successful(), None);
        match slow.get_timeout(Duration::from_millis(20)) {
            Err(Error::WaitTimeout(d)) => assert_eq!(d, Duration::from_millis(20)),
            other => panic!("expected WaitTimeout, got {other:?}"),
        }
        assert!(!slow.wait_timeout(Duration::from_millis(10)));
        slow.wait();
        assert!(slow.ready());
        assert!(slow.wait_timeout(Duration::ZERO));
        assert_eq!(slow.get_timeout(Duration::ZERO).unwrap(), 300);
    });
}

#[test]
fn callbacks_run_once_with_value_or_error() {
    deadline(30, "callbacks", || {
        let pool = pool(2);
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for i in 0..1000u64 {
            let ok = tx.clone();
            let err = tx.clone();
            handles.push(
                pool.apply_async(panics_on, (i, 500))
                    .on_success(move |v| ok.send(Ok(v)).unwrap())
                    .on_error(move |e| err.send(Err(e.to_string())).unwrap()),
            );
        }
        drop(tx);
        for h in &handles {
            h.wait();
        }
        let got: Vec<Result<u64, String>> = rx.iter().collect();
        assert_eq!(got.len(), 1000, "each callback runs exactly once");
        let errors: Vec<_> = got.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("item 500 is bad"), "{}", errors[0]);
        let mut values: Vec<u64> = got.into_iter().filter_map(Result::ok).collect();
        values.sort();
        assert_eq!(values.len(), 999);
        assert!(!values.contains(&500));

        // Registered after completion: runs at once, on this thread.
        let r = pool.apply_async(square, 3);
        r.wait();
        let (tx, rx) = mpsc::channel();
        drop(r.on_success(move |v| tx.send(v).unwrap()));
        assert_eq!(rx.try_recv().unwrap(), 9);
    });
}

#[test]
fn callbacks_run_before_get_returns() {
    deadline(30, "callback order", || {
        let pool = pool(2);
        for i in 0..200 {
            let seen = Arc::new(AtomicUsize::new(0));
            let s = Arc::clone(&seen);
            let r = pool.apply_async(square, i).on_success(move |_| {
                s.fetch_add(1, Ordering::SeqCst);
            });
            r.get().unwrap();
            assert_eq!(seen.load(Ordering::SeqCst), 1);
        }
    });
}

#[test]
fn map_is_ordered_and_complete() {
    deadline(60, "map", || {
        let pool = pool(2);
        let v = pool.map(square, 0..N).unwrap();
        assert_eq!(v, (0..N).map(|i| i * i).collect::<Vec<_>>());
        // An iterator without an exact length.
        let v = pool.map(square, (0..3 * N).filter(|i| i % 3 == 0)).unwrap();
        assert_eq!(v.len() as u64, N);
        assert_eq!(v[1], 9);
        // Empty input.
        assert!(pool.map(square, Vec::new()).unwrap().is_empty());
        // Several parameters.
        let pairs: Vec<(i64, i64)> = (0..N as i64).map(|i| (i, -2 * i)).collect();
        let sums = pool.map(add, pairs).unwrap();
        assert_eq!(sums, (0..N as i64).map(|i| -i).collect::<Vec<_>>());
        // Every chunk size from 1 to beyond the input.
        for chunksize in [1, 2, 7, 100, 5000, 20_000] {
            let v = pool.map_chunked(square, 0..N, chunksize).unwrap();
            assert_eq!(v.len() as u64, N, "chunksize {chunksize}");
            assert!(v.iter().enumerate().all(|(i, &x)| x == (i * i) as u64));
        }
        // Bigger payloads. 300 blobs of ~100 kB: a default chunk (38 items) would be ~3.8 MB,
        // so chunks end at 1 MiB instead, at boundaries that are not multiples of the count.
        let blobs: Vec<Vec<u8>> = (0..300).map(|i| vec![i as u8; 100_000 + i]).collect();
        let sums = pool.map(checksum, blobs.clone()).unwrap();
        for (blob, sum) in blobs.iter().zip(sums) {
            assert_eq!(
                sum,
                blob.iter().map(|&b| b as u64).sum::<u64>() + blob.len() as u64
            );
        }
    });
}

#[test]
fn map_async_returns_at_once() {
    deadline(30, "map_async", || {
        let pool = pool(2);
        let r = pool.map_async(square, 0..N);
        let r2 = pool.map_async_chunked(square, 0..N, 3);
        assert_eq!(r.get().unwrap(), (0..N).map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(r2.get().unwrap().len() as u64, N);
        let slow = pool.map_async(sleep_ms, vec![200, 200]);
        assert!(!slow.ready());
        assert_eq!(slow.get().unwrap(), vec![200, 200]);
    });
}

#[test]
fn map_fails_with_the_first_error_and_the_pool_goes_on() {
    deadline(30, "map error", || {
        let pool = pool(2);
        let items: Vec<(u64, u64)> = (0..N).map(|i| (i, 7777)).collect();
        match pool.map(panics_on, items) {
            Err(Error::Panicked { message, .. }) => assert_eq!(message, "item 7777 is bad"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        assert_eq!(pool.map(square, 0..N).unwrap().len() as u64, N);
    });
}

/// Tasks whose argument and result are both scalars take a fast path in the caller and the
/// worker; every outcome must still be the one the general path gives, in order.
#[test]
fn scalar_tasks_keep_every_outcome_in_order() {
    deadline(60, "scalars", || {
        let pool = pool(2);
        // Panics in the middle of long runs of values: each item gets its own outcome.
        let out: Vec<_> = pool
            .imap_chunked(square_unless_999, 0..20_000u64, 5_000)
            .collect();
        assert_eq!(out.len(), 20_000);
        for (i, r) in out.iter().enumerate() {
            let i = i as u64;
            match r {
                Err(Error::Panicked { message, .. }) if i % 1000 == 999 => {
                    assert_eq!(message, &format!("{i} ends in 999"));
                }
                Ok(v) if i % 1000 != 999 => assert_eq!(*v, i * i),
                other => panic!("item {i}: {other:?}"),
            }
        }
        match pool.map(square_unless_999, 0..20_000u64) {
            Err(Error::Panicked { message, .. }) => assert!(message.ends_with("999")),
            other => panic!("expected Panicked, got {other:?}"),
        }
        // Other scalar types, signed and floating, at every size of encoding.
        let xs: Vec<i32> = (-70_000..70_000).chain([i32::MIN, i32::MAX]).collect();
        let want: Vec<f64> = xs.iter().map(|&x| x as f64 / 2.0).collect();
        assert_eq!(pool.map(half, xs).unwrap(), want);
        let words = pool.map(describe, 0..20_000u64).unwrap();
        assert_eq!(
            words,
            (0..20_000u64).map(|x| format!("#{x}")).collect::<Vec<_>>()
        );
        let evens = pool.map(is_even, 0..=255u8).unwrap();
        assert_eq!(evens, (0..=255u8).map(|x| x % 2 == 0).collect::<Vec<_>>());
        // Arguments in forms the fast reader leaves to rmp-serde: its answer, per item.
        let nine_as_i64 = [0xd3, 0, 0, 0, 0, 0, 0, 0, 9];
        let float = pool_core::wire::encode(&3.5f64).unwrap();
        let text = pool_core::wire::encode(&"7".to_string()).unwrap();
        let items: [&[u8]; 4] = [&nine_as_i64, &float, &[0x05], &text];
        match pool.apply_encoded(square::NAME, &items).get() {
            Err(Error::ArgsDecode { .. }) => {}
            other => panic!("expected ArgsDecode, got {other:?}"),
        }
        let r = pool
            .apply_encoded(square::NAME, &[&nine_as_i64[..], &[0x05]])
            .get()
            .unwrap();
        let decoded: Vec<u64> = r
            .iter()
            .map(|b| pool_core::wire::decode(b).unwrap())
            .collect();
        assert_eq!(decoded, [81, 25]);
        assert_healthy_square(&pool);
    });
}

fn assert_healthy_square(pool: &Pool) {
    assert_eq!(pool.map(square, 0..N).unwrap().len() as u64, N);
}

#[test]
fn imap_is_lazy_ordered_and_complete() {
    deadline(60, "imap", || {
        let pool = pool(2);
        let v: Vec<u64> = pool.imap(square, 0..N).map(Result::unwrap).collect();
        assert_eq!(v, (0..N).map(|i| i * i).collect::<Vec<_>>());
        let v: Vec<u64> = pool
            .imap_chunked(square, 0..N, 64)
            .map(Result::unwrap)
            .collect();
        assert_eq!(v, (0..N).map(|i| i * i).collect::<Vec<_>>());

        // Per-item errors: the iteration goes on.
        let out: Vec<_> = pool.imap(panics_on, (0..100).map(|i| (i, 50))).collect();
        assert_eq!(out.len(), 100);
        for (i, r) in out.iter().enumerate() {
            if i == 50 {
                assert!(matches!(r, Err(Error::Panicked { .. })), "{r:?}");
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64);
            }
        }
        // Same with chunks: only the bad item fails.
        let out: Vec<_> = pool
            .imap_chunked(panics_on, (0..100).map(|i| (i, 50)), 8)
            .collect();
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        assert!(out[50].is_err());
    });
}

#[test]
fn imap_unordered_yields_everything_once() {
    deadline(60, "imap_unordered", || {
        let pool = pool(2);
        for chunksize in [1, 10, 333] {
            let mut v: Vec<u64> = pool
                .imap_unordered_chunked(square, 0..N, chunksize)
                .map(Result::unwrap)
                .collect();
            v.sort();
            assert_eq!(v, (0..N).map(|i| i * i).collect::<Vec<_>>());
        }
        // Results arrive as they finish: a slow first item does not hold back the rest.
        let order: Vec<u64> = pool
            .imap_unordered(sleep_ms, vec![400, 1, 1, 1])
            .map(Result::unwrap)
            .collect();
        assert_eq!(order.last(), Some(&400), "{order:?}");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 1, 1, 400]);
    });
}

/// The endless-imap measurement, in a process of its own: resident memory is per process, and
/// the other tests of this binary allocate on their threads meanwhile (run here, their
/// allocations were counted as this test's growth). Reports the most items pulled ahead and
/// the growth in KiB.
#[pool_core::task]
fn endless_imap_in_own_process(out: pool_core::Queue<(u64, u64)>) {
    let pool = pool(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = pool.imap_chunked(square, endless, 16);
    // Warm up, then measure over many more items.
    for i in 0..20_000u64 {
        assert_eq!(it.next().unwrap().unwrap(), i * i);
    }
    let rss_before = pool_tests::rss_kib();
    let mut taken = 20_000u64;
    let mut most_ahead = 0;
    for i in 20_000..300_000u64 {
        assert_eq!(it.next().unwrap().unwrap(), i * i);
        taken += 1;
        most_ahead = most_ahead.max(pulled.load(Ordering::Relaxed) as u64 - taken);
    }
    let grown = pool_tests::rss_kib().saturating_sub(rss_before);
    out.put((most_ahead, grown)).unwrap();
}

#[test]
fn imap_over_an_endless_iterator_keeps_memory_flat() {
    deadline(120, "endless imap", || {
        let out = pool_core::Queue::new().unwrap();
        let child = pool_core::Process::new(endless_imap_in_own_process, out.clone())
            .start()
            .unwrap();
        let (ahead, grown) = out.get_timeout(Duration::from_secs(100)).expect("a report");
        child.join();
        assert_eq!(child.exitcode(), Some(0));
        // The input is pulled only a bounded distance ahead of what is consumed.
        assert!(ahead <= 16 * (2 * 2 + 2), "{ahead} items pulled ahead");
        assert!(
            grown < 16 * 1024,
            "memory grew by {grown} KiB over 280,000 items"
        );
    });
}

#[test]
fn dropping_an_imap_early_is_fine() {
    deadline(30, "imap drop", || {
        let pool = pool(2);
        let first: Vec<_> = pool.imap(sleep_ms, vec![1; 100]).take(3).collect();
        assert_eq!(first.len(), 3);
        assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    });
}

#[test]
fn many_threads_share_one_pool() {
    deadline(60, "threads", || {
        let pool = Arc::new(pool(2));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for round in 0..50u64 {
                        let x = t * 1000 + round;
                        assert_eq!(pool.apply(square, x).unwrap(), x * x);
                        let v = pool.map(add, (0..100).map(|i| (i, x as i64))).unwrap();
                        assert_eq!(v[99], 99 + x as i64);
                    }
                    let it: Vec<u64> = pool.imap(square, 0..200).map(Result::unwrap).collect();
                    assert_eq!(it[199], 199 * 199);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn handles_are_send_and_sync() {
    assert_send_sync::<Pool>();
    assert_send_sync::<pool_core::AsyncResult<u64>>();
    assert_send_sync::<Error>();
}

#[test]
fn unknown_task_and_undecodable_arguments_are_errors() {
    deadline(30, "bad input", || {
        let pool = pool(1);
        match pool.apply_named::<_, u64>("no::such::task", 1u64) {
            Err(Error::UnknownTask { name }) => assert_eq!(name, "no::such::task"),
            other => panic!("expected UnknownTask, got {other:?}"),
        }
        match pool.apply_named::<_, u64>(square::NAME, "not a number") {
            Err(Error::ArgsDecode { task, .. }) => assert_eq!(task, square::NAME),
            other => panic!("expected ArgsDecode, got {other:?}"),
        }
        match pool.apply_named::<_, i64>(add::NAME, (1, 2, 3, "x")) {
            Err(Error::ArgsDecode { .. }) => {}
            other => panic!("expected ArgsDecode, got {other:?}"),
        }
        // The right arguments by name work.
        assert_eq!(pool.apply_named::<_, i64>(add::NAME, (40, 2)).unwrap(), 42);
        // A result decoded as the wrong type is the caller's error, clearly.
        match pool.apply_named::<_, String>(square::NAME, 3u64) {
            Err(Error::ResultDecode { .. }) => {}
            other => panic!("expected ResultDecode, got {other:?}"),
        }
        // The worker is unharmed.
        assert_eq!(pool.worker_pids().len(), 1);
        assert_eq!(pool.map(square, 0..N).unwrap().len() as u64, N);
    });
}

#[test]
fn unencodable_results_and_arguments_are_errors() {
    deadline(30, "encode errors", || {
        let pool = pool(1);
        match pool.apply(make_unencodable, ()) {
            Err(Error::ResultEncode { message, .. }) => {
                assert!(message.contains("refuses"), "{message}")
            }
            other => panic!("expected ResultEncode, got {other:?}"),
        }
        match pool.apply(take_unencodable, Unencodable) {
            Err(Error::ArgsEncode { message, .. }) => assert!(message.contains("refuses")),
            other => panic!("expected ArgsEncode, got {other:?}"),
        }
        match pool.map(take_unencodable, vec![Unencodable, Unencodable]) {
            Err(Error::ArgsEncode { .. }) => {}
            other => panic!("expected ArgsEncode, got {other:?}"),
        }
        let items: Vec<_> = pool.imap(take_unencodable, vec![Unencodable]).collect();
        assert!(matches!(items[..], [Err(Error::ArgsEncode { .. })]));
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
    });
}

#[test]
fn zero_processes_is_a_config_error() {
    assert!(matches!(
        Pool::builder().processes(0).build(),
        Err(Error::Config(_))
    ));
}

#[test]
fn default_pool_has_one_worker_per_cpu() {
    deadline(30, "default pool", || {
        let pool = Pool::new().unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(pool.processes(), cpus);
        assert_eq!(pool.worker_pids().len(), cpus);
    });
}

#[test]
fn payloads_larger_than_a_ring_stream_through_intact() {
    deadline(120, "big payloads", || {
        let pool = pool(2);
        // 4 MiB rings: these frames move in pieces, both ways.
        for size in [(4 << 20) - 3, 4 << 20, (9 << 20) + 7, 33 << 20] {
            let blob: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
            let back = pool.apply(echo_bytes, blob.clone()).unwrap();
            assert_eq!(back.len(), blob.len());
            assert!(back == blob, "{size} bytes came back changed");
        }
        // Many big items in one map, with tiny ones mixed in from other threads.
        let blobs: Vec<Vec<u8>> = (0..24).map(|i| vec![i as u8; (1 << 20) + i]).collect();
        let p = std::sync::Arc::new(pool);
        let p2 = std::sync::Arc::clone(&p);
        let tiny = std::thread::spawn(move || p2.map_chunked(square, 0..20_000, 1).unwrap().len());
        let sums = p.map(checksum, blobs.clone()).unwrap();
        assert_eq!(tiny.join().unwrap(), 20_000);
        for (blob, sum) in blobs.iter().zip(sums) {
            assert_eq!(
                sum,
                blob.iter().map(|&b| b as u64).sum::<u64>() + blob.len() as u64
            );
        }
    });
}

/// Big `Vec<u8>` arguments are moved into their jobs and written into the ring from where they
/// lie, instead of being copied into the frame; every size must arrive as it left.
#[test]
fn byte_buffers_arrive_intact_at_every_size() {
    deadline(120, "spliced buffers", || {
        let pool = pool(2);
        let blob = |size: usize, seed: usize| -> Vec<u8> {
            (0..size).map(|i| (i * 31 + seed + i / 251) as u8).collect()
        };
        // Around the splice threshold (64 KiB), half the ring (2 MiB, the largest frame a
        // worker runs in place) and the whole ring (4 MiB), and empty.
        let sizes = [
            0,
            1,
            (64 << 10) - 1,
            64 << 10,
            (64 << 10) + 1,
            (2 << 20) - 20,
            2 << 20,
            (4 << 20) + 5,
            300_000,
        ];
        let blobs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| blob(n, i)).collect();
        for b in &blobs {
            assert!(
                pool.apply(echo_bytes, b.clone()).unwrap() == *b,
                "apply of {}",
                b.len()
            );
        }
        // Chunks of several big and small items each, in every order.
        for chunk in [1, 2, 4, 9] {
            let back = pool.map_chunked(echo_bytes, blobs.clone(), chunk).unwrap();
            for (b, back) in blobs.iter().zip(&back) {
                assert!(
                    back == b,
                    "map, chunks of {chunk}: {} bytes changed",
                    b.len()
                );
            }
            let back = pool
                .map_async_chunked(echo_bytes, blobs.iter().rev().cloned(), chunk)
                .get()
                .unwrap();
            for (b, back) in blobs.iter().rev().zip(&back) {
                assert!(back == b, "map_async, chunks of {chunk}: {} bytes", b.len());
            }
            let back = pool.imap_chunked(echo_bytes, blobs.clone(), chunk);
            for (b, back) in blobs.iter().zip(back) {
                assert!(
                    back.unwrap() == *b,
                    "imap, chunks of {chunk}: {} bytes",
                    b.len()
                );
            }
        }
        // A worker that dies on one buffer fails that item only; every other buffer arrives
        // whole, at the replacement or the other worker.
        let mut items: Vec<Vec<u8>> = (0..30).map(|i| blob((100 << 10) + i, i)).collect();
        items[7][0] = 0xAB;
        items[19][0] = 0xAB;
        let out: Vec<_> = pool.imap(checksum_or_abort, items.clone()).collect();
        for (i, (r, b)) in out.into_iter().zip(&items).enumerate() {
            match r {
                Err(Error::WorkerDied { .. }) if i == 7 || i == 19 => {}
                Ok(sum) if i != 7 && i != 19 => assert_eq!(sum, checksum(b.clone()), "item {i}"),
                other => panic!("item {i}: {other:?}"),
            }
        }
        // A quick task, so several jobs queue at each worker: those behind the crash were never
        // begun, and go out again, whole, to another worker.
        let mut items: Vec<Vec<u8>> = (0..400).map(|i| blob((64 << 10) + i, i)).collect();
        for (i, item) in items.iter_mut().enumerate() {
            item[0] = if i == 150 || i == 300 { 0xAB } else { 0 };
        }
        let lens: Vec<_> = items.iter().map(|b| (b.len(), b.last().copied())).collect();
        let out: Vec<_> = pool.imap(len_or_abort, items).collect();
        for (i, r) in out.into_iter().enumerate() {
            match r {
                Err(Error::WorkerDied { .. }) if i == 150 || i == 300 => {}
                Ok(len) if i != 150 && i != 300 => assert_eq!(len, lens[i], "item {i}"),
                other => panic!("item {i}: {other:?}"),
            }
        }
    });
}

#[test]
fn byte_buffers_sent_by_name_as_sequences_still_decode() {
    deadline(30, "bytes by name", || {
        let pool = pool(1);
        // `apply_named` encodes with plain serde (a sequence); the task's fast path accepts it.
        let v: Vec<u8> = pool
            .apply_named(echo_bytes::NAME, vec![1u8, 2, 200])
            .unwrap();
        assert_eq!(v, vec![1, 2, 200]);
        let sum: u64 = pool.apply_named(checksum::NAME, vec![5u8; 10]).unwrap();
        assert_eq!(sum, 60);
    });
}

#[test]
fn stats_count_tasks_and_workers() {
    deadline(60, "stats", || {
        let pool = pool(2);
        let fresh = pool.stats();
        assert_eq!(fresh.tasks_submitted, 0);
        assert_eq!(fresh.workers_alive, 2);
        assert_eq!(fresh.busy_time, vec![Duration::ZERO; 2]);
        pool.map(square, 0..N).unwrap();
        let s = pool.stats();
        assert_eq!(
            (s.tasks_submitted, s.tasks_completed, s.tasks_failed),
            (N, N, 0)
        );
        // `map` stops submitting at its first error, so how many of the 10 chunks went out
        // depends on timing: at least the failing first one, at most all of them.
        let items: Vec<(u64, u64)> = (0..100).map(|i| (i, 7)).collect();
        assert!(pool.map_chunked(panics_on, items, 10).is_err());
        let _ = pool.apply_named::<_, u64>("no::such::task", 1u64);
        pool.apply(sleep_ms, 30).unwrap();
        // Chunks the failed map left in flight may still be running: wait until every
        // submitted task is accounted for.
        let settle = Instant::now();
        let s = loop {
            let s = pool.stats();
            if s.tasks_completed + s.tasks_failed == s.tasks_submitted {
                break s;
            }
            assert!(
                settle.elapsed() < Duration::from_secs(20),
                "never settled: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let in_map = s.tasks_submitted - N - 2;
        assert!(in_map % 10 == 0 && (10..=100).contains(&in_map), "{s:?}");
        assert_eq!(s.tasks_failed, 1 + 1, "{s:?}");
        assert_eq!(s.tasks_completed, N + (in_map - 1) + 1, "{s:?}");
        assert_eq!(s.workers_replaced, 0);
        assert_eq!(s.queue_depth, 0);
        let busy: Duration = s.busy_time.iter().sum();
        assert!(busy >= Duration::from_millis(30), "{busy:?}");
    });
}

/// A minimal executor: enough to show that `AsyncResult` needs no runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll};
    let waker = pool_tests::park_waker();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn async_results_can_be_awaited() {
    deadline(60, "futures", || {
        let pool = pool(2);
        for i in 0..2000u64 {
            assert_eq!(block_on(pool.apply_async(square, i)).unwrap(), i * i);
        }
        let v = block_on(pool.map_async(square, 0..N)).unwrap();
        assert_eq!(v.len() as u64, N);
        // Awaiting a task that fails gives its error; a terminated pool wakes its awaiters.
        assert!(matches!(
            block_on(pool.apply_async(panics_on, (1, 1))),
            Err(Error::Panicked { .. })
        ));
        let stuck = pool.apply_async(sleep_forever, ());
        let p = Arc::new(pool);
        let p2 = Arc::clone(&p);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            p2.terminate();
        });
        assert!(matches!(block_on(stuck), Err(Error::Terminated)));
        killer.join().unwrap();
    });
}

/// Drains a stream with a waker that unparks this thread: no busy loop, no runtime.
fn collect_stream<S: futures_core::Stream + Unpin>(mut s: S, limit: usize) -> Vec<S::Item> {
    use std::task::{Context, Poll};
    let waker = pool_tests::park_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    while out.len() < limit {
        match std::pin::Pin::new(&mut s).poll_next(&mut cx) {
            Poll::Ready(Some(item)) => out.push(item),
            Poll::Ready(None) => break,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(100)),
        }
    }
    out
}

#[test]
fn imap_is_a_stream() {
    deadline(60, "stream", || {
        let pool = pool(2);
        let v = collect_stream(pool.imap(square, 0..N), usize::MAX);
        assert_eq!(v.len() as u64, N);
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == (i * i) as u64));
        let mut u: Vec<u64> =
            collect_stream(pool.imap_unordered_chunked(square, 0..N, 7), usize::MAX)
                .into_iter()
                .map(Result::unwrap)
                .collect();
        u.sort();
        assert_eq!(u.len() as u64, N);
        // Endless input, bounded look-ahead.
        let first = collect_stream(pool.imap(sleep_ms, std::iter::repeat(1)), 20);
        assert_eq!(first.len(), 20);
    });
}

#[test]
fn map_with_progress_matches_map() {
    deadline(60, "progress", || {
        let pool = pool(2);
        assert_eq!(
            pool.map_with_progress(square, 0..N).unwrap(),
            pool.map(square, 0..N).unwrap()
        );
        let items: Vec<(u64, u64)> = (0..100).map(|i| (i, 42)).collect();
        assert!(matches!(
            pool.map_with_progress(panics_on, items),
            Err(Error::Panicked { .. })
        ));
    });
}
