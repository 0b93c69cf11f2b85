//! A program of its own for the shared-data tests (its `main` carries `#[pool_core::main]`, so
//! every start method works). Each mode takes a start method (`fork`, `forkserver`, `spawn`)
//! and prints `key=value` lines for `tests/tests/shared.rs` to check:
//!
//! - `read`: workers read exactly the bytes the parent wrote, through whole and sub-range
//!   handles, with data built before and after the pool.
//! - `once`: 1,000 tasks on one handle; how many mappings of it each worker holds.
//! - `readonly`: what a worker's mapping allows (its `/proc/self/maps` permissions, and whether
//!   `mprotect` can make it writable).
//! - `outlive`: a handle outliving the pool it was used with, then used with another.
//! - `freed`: after the parent drops its last handle, the descriptors and mappings left in the
//!   parent and in the workers, and the parent's shared resident memory.
//! - `killed`: workers killed in the middle of reading; the pool goes on; nothing in `/dev/shm`.
//! - `archived` (feature `rkyv` of pool-core): an rkyv archive read in place by workers.
//! - `stale`: a handle that reaches a worker after its creator dropped the data, and a forged
//!   one.

use std::time::{Duration, Instant};

use pool_core::rkyv::{self, Archive};
use pool_core::{task, Pool, Shared, SharedSlice};
use pool_tests::{pool_of, start_method};

/// The value at index `i` of the test data: distinct everywhere, so a wrong offset shows.
fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
}

#[task]
fn sum_window(w: SharedSlice<u64>) -> (u64, u64, u64) {
    let s = w.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    (w.range().start as u64, w.len() as u64, s)
}

/// This worker's pid and how many mappings of shared data (`SharedSlice`/`Shared` memfds) it
/// has, from `/proc/self/maps`.
#[task]
fn mappings(w: SharedSlice<u64>) -> (u32, usize, u64) {
    (std::process::id(), shared_mappings(), w[0])
}

/// The same without a handle: what a worker holds between tasks (pid, mappings,
/// descriptors).
#[task]
fn mappings_now(_x: u64) -> (u32, usize, usize) {
    std::thread::sleep(Duration::from_millis(20));
    (std::process::id(), shared_mappings(), shared_fds())
}

fn shared_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("memfd:pool-core-shared"))
        .count()
}

/// The permissions of the mapping that holds `w`, and what `mprotect(PROT_WRITE)` on it says.
#[task]
fn protection(w: SharedSlice<u64>) -> (String, String) {
    let addr = w.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let perms = maps
        .lines()
        .find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a <= addr && addr < b).then(|| rest[..4].to_string())
        })
        .unwrap_or_default();
    let page = addr & !4095;
    // SAFETY: mprotect on a page of a live mapping of this process; if it succeeded the page
    // would only become writable, which nothing here then writes.
    let rc = unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    let outcome = if rc == 0 {
        "allowed".to_string()
    } else {
        format!("denied ({})", std::io::Error::last_os_error())
    };
    (perms, outcome)
}

/// Reads half the window, then is killed (SIGKILL, as from outside) in the middle of reading.
#[task]
fn killed_mid_read(w: SharedSlice<u64>) -> u64 {
    let half = &w[..w.len() / 2];
    let s = half.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    if s != u64::MAX {
        // SAFETY: kill sends a signal to this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    s
}

/// Decodes a handle from raw bytes, as a worker decodes a task's argument.
#[task]
fn decode_handle(bytes: Vec<u8>) -> Result<u64, String> {
    pool_core::wire::decode::<SharedSlice<u64>>(&bytes)
        .map(|s| s.iter().sum())
        .map_err(|e| e.to_string())
}

#[derive(Archive, rkyv::Serialize)]
#[rkyv(crate = pool_core::rkyv)]
struct Table {
    name: String,
    rows: Vec<(u32, String)>,
}

#[task]
fn lookup(t: Shared<Table>, i: u32) -> (String, String) {
    let row = &t.rows[i as usize];
    (t.name.to_string(), format!("{}:{}", row.0, row.1))
}

fn devshm() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Descriptors of this process that are shared-data memfds.
fn shared_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|p| p.to_string_lossy().contains("memfd:pool-core-shared"))
                .count()
        })
        .unwrap_or(0)
}

/// `Shmem` of the whole machine, in MiB.
fn system_shmem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// `RssShmem` of this process, in KiB.
fn rss_shmem_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn check_read(pool: &Pool, data: &SharedSlice<u64>) -> bool {
    // Windows of uneven size, and a handle to a sub-range of a sub-range.
    let windows: Vec<SharedSlice<u64>> = data.chunks_of(33_333).collect();
    let got = pool.map(sum_window, windows.clone()).expect("map");
    let want: Vec<(u64, u64, u64)> = windows
        .iter()
        .map(|w| {
            let s = (w.range().start..w.range().end).fold(0u64, |a, i| a.wrapping_add(pattern(i)));
            (w.range().start as u64, w.len() as u64, s)
        })
        .collect();
    let inner = data.slice(1000..200_000).slice(5..10);
    let one = pool.apply(sum_window, inner).expect("apply");
    let want_one = (
        1005u64,
        5u64,
        (1005..1010).fold(0u64, |a, i| a.wrapping_add(pattern(i))),
    );
    got == want && one == want_one
}

#[pool_core::main]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, method] = &args[..] else {
        panic!("usage: shared-helper MODE METHOD");
    };
    let method = start_method(method);
    let n = 1 << 20; // 8 MiB of u64
    match mode.as_str() {
        "read" => {
            let before = SharedSlice::build(n, |s| {
                for (i, x) in s.iter_mut().enumerate() {
                    *x = pattern(i);
                }
            })
            .expect("build");
            let pool = pool_of(method);
            let after = SharedSlice::try_from_iter((0..n).map(pattern)).expect("from_iter");
            let from_vec = SharedSlice::from_vec((0..n).map(pattern).collect()).expect("from_vec");
            println!("built_before={}", check_read(&pool, &before));
            println!("built_after={}", check_read(&pool, &after));
            println!("from_vec={}", check_read(&pool, &from_vec));
        }
        "once" => {
            let pool = pool_of(method);
            let data = SharedSlice::from_vec((0..n).map(pattern).collect()).expect("data");
            let windows: Vec<SharedSlice<u64>> = data.chunks_of(n / 1000).take(1000).collect();
            let got = pool.map_chunked(mappings, windows, 1).expect("map");
            let mut per_worker = std::collections::BTreeMap::new();
            for (pid, count, _) in &got {
                let e = per_worker.entry(*pid).or_insert(0);
                *e = (*e).max(*count);
            }
            println!("tasks={}", got.len());
            println!(
                "max_mappings_per_worker={}",
                per_worker.values().max().copied().unwrap_or(0)
            );
            println!("workers_seen={}", per_worker.len());
            println!("parent_mappings={}", shared_mappings());
        }
        "readonly" => {
            let pool = pool_of(method);
            let data = SharedSlice::from_vec(vec![7u64; n]).expect("data");
            let (perms, mprotect) = pool
                .apply(protection, data.slice(4096..8192))
                .expect("apply");
            println!("perms={perms}");
            println!("mprotect={}", mprotect.split(' ').next().unwrap_or(""));
            // The parent's own mapping is as read-only.
            let (perms, mprotect) = protection(data.clone());
            println!("parent_perms={perms}");
            println!(
                "parent_mprotect={}",
                mprotect.split(' ').next().unwrap_or("")
            );
        }
        "outlive" => {
            let data = SharedSlice::try_from_iter((0..n).map(pattern)).expect("data");
            {
                let pool = pool_of(method);
                println!("first_pool={}", check_read(&pool, &data));
                pool.close();
                pool.join().expect("join");
            }
            let s = data.iter().fold(0u64, |a, &x| a.wrapping_add(x));
            let want = (0..n).fold(0u64, |a, i| a.wrapping_add(pattern(i)));
            println!("after_pool={}", s == want);
            let pool = pool_of(method);
            println!("second_pool={}", check_read(&pool, &data));
        }
        "freed" => {
            let pool = pool_of(method);
            let shm_before = rss_shmem_kib();
            let system_before = system_shmem_mib();
            let data = SharedSlice::build(32 * n, |s| s.fill(3)).expect("data"); // 256 MiB
            let sums = pool.map(sum_window, data.chunks_of(n)).expect("map");
            println!("sums_ok={}", sums.iter().all(|s| s.2 == 3 * n as u64));
            // The parent reads it all too, so its own mapping is resident.
            println!(
                "parent_sum_ok={}",
                data.iter().sum::<u64>() == 3 * 32 * n as u64
            );
            println!("held_fds={}", shared_fds());
            println!("held_shmem_mib={}", (rss_shmem_kib() - shm_before) / 1024);
            let system_held = system_shmem_mib();
            println!(
                "system_held_mib={}",
                system_held.saturating_sub(system_before)
            );
            drop(sums);
            drop(data);
            println!("parent_fds={}", shared_fds());
            println!("parent_mappings={}", shared_mappings());
            println!(
                "parent_shmem_mib={}",
                rss_shmem_kib().saturating_sub(shm_before) / 1024
            );
            // Idle workers drop their mappings within a quarter of a second; then every task
            // (on either worker) sees none.
            std::thread::sleep(Duration::from_millis(600));
            let seen = pool.map_chunked(mappings_now, 0..40u64, 1).expect("map");
            let pids: std::collections::BTreeSet<u32> = seen.iter().map(|s| s.0).collect();
            println!(
                "worker_mappings={}",
                seen.iter().map(|s| s.1).max().unwrap_or(99)
            );
            println!(
                "worker_fds={}",
                seen.iter().map(|s| s.2).max().unwrap_or(99)
            );
            println!("workers_seen={}", pids.len());
            // Machine-wide shared memory fell by (about) the data's size. Other programs may
            // allocate meanwhile, so this is a floor, not an equality.
            println!(
                "system_freed_mib={}",
                system_held.saturating_sub(system_shmem_mib())
            );
        }
        "killed" => {
            let shm = devshm();
            let pool = pool_of(method);
            let data = SharedSlice::from_vec((0..n).map(pattern).collect()).expect("data");
            let mut killed = 0;
            for round in 0..3 {
                let t = Instant::now();
                let r = pool.apply_async(killed_mid_read, data.slice(round * 1000..));
                match r.get_timeout(Duration::from_secs(20)) {
                    Err(pool_core::Error::WorkerDied { .. }) => killed += 1,
                    other => println!("round {round}: {other:?} after {:?}", t.elapsed()),
                }
            }
            println!("killed={killed}");
            println!("after_kill={}", check_read(&pool, &data));
            drop(pool);
            drop(data);
            println!("devshm_unchanged={}", devshm() == shm);
            println!("parent_fds={}", shared_fds());
        }
        "archived" => {
            let pool = pool_of(method);
            let table = Table {
                name: "squares".into(),
                rows: (0..10_000u32).map(|i| (i * i, format!("row{i}"))).collect(),
            };
            let shared = Shared::new(&table).expect("archive");
            let got = pool
                .map(
                    lookup,
                    (0..10_000u32).step_by(997).map(|i| (shared.clone(), i)),
                )
                .expect("map");
            let ok = got
                .iter()
                .zip((0..10_000u32).step_by(997))
                .all(|((name, row), i)| name == "squares" && *row == format!("{}:row{i}", i * i));
            println!("archived={ok}");
            println!("parent_reads={}", shared.rows[3].1 == "row3");
        }
        "stale" => {
            let pool = pool_of(method);
            let data = SharedSlice::from_vec(vec![1u64; 1000]).expect("data");
            let bytes = pool_core::wire::encode(&data).expect("encode");
            println!("handle_bytes={}", bytes.len());
            println!(
                "live={:?}",
                pool.apply(decode_handle, bytes.clone()).expect("apply")
            );
            // A forged handle: the same bytes with one byte of the token changed.
            let mut forged = bytes.clone();
            forged[10] ^= 0x5a; // inside the token
            let forged = pool.apply(decode_handle, forged).expect("apply");
            println!("forged_is_err={}", forged.is_err());
            // A handle whose data was dropped before any worker saw it.
            let gone = SharedSlice::from_vec(vec![2u64; 1000]).expect("data");
            let gone_bytes = pool_core::wire::encode(&gone).expect("encode");
            drop(gone);
            let stale = pool.apply(decode_handle, gone_bytes).expect("apply");
            println!("stale_is_err={}", stale.is_err());
            eprintln!("stale: {stale:?}");
        }
        other => panic!("unknown mode {other}"),
    }
}
