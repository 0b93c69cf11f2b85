//! Big data shared, not copied: `SharedSlice` and `Shared` under every start method, through
//! `shared-helper` (whose `main` carries `#[pool_core::main]`, as the start methods need), and
//! the handle's own rules in this process.

use pool_core::{Pod, SharedSlice, Zeroable};

const METHODS: [&str; 3] = ["fork", "forkserver", "spawn"];

/// Runs `shared-helper MODE METHOD` and returns its `key=value` lines.
fn helper(mode: &str, method: &str) -> std::collections::HashMap<String, String> {
    let out = pool_tests::run_helper(env!("CARGO_BIN_EXE_shared-helper"), &[mode, method], 120);
    eprintln!("shared-helper {mode} {method}:\n{}", out.stdout);
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expect(mode: &str, lines: &[(&str, &str)]) {
    for method in METHODS {
        let got = helper(mode, method);
        for (key, want) in lines {
            assert_eq!(
                got.get(*key).map(String::as_str),
                Some(*want),
                "{mode} under {method}: {key}"
            );
        }
    }
}

#[test]
fn every_start_method_reads_the_bytes_the_parent_wrote() {
    expect(
        "read",
        &[
            ("built_before", "true"),
            ("built_after", "true"),
            ("from_vec", "true"),
        ],
    );
}

#[test]
fn a_thousand_tasks_on_one_handle_map_it_once_per_worker() {
    expect(
        "once",
        &[
            ("tasks", "1000"),
            ("max_mappings_per_worker", "1"),
            ("workers_seen", "2"),
            ("parent_mappings", "1"),
        ],
    );
}

#[test]
fn the_mapping_is_read_only_in_workers_and_in_the_parent() {
    expect(
        "readonly",
        &[
            ("perms", "r--s"),
            ("mprotect", "denied"),
            ("parent_perms", "r--s"),
            ("parent_mprotect", "denied"),
        ],
    );
}

#[test]
fn a_handle_outlives_its_pool() {
    expect(
        "outlive",
        &[
            ("first_pool", "true"),
            ("after_pool", "true"),
            ("second_pool", "true"),
        ],
    );
}

#[test]
fn memory_is_freed_after_the_last_handle() {
    for method in METHODS {
        let got = helper("freed", method);
        for (key, want) in [
            ("sums_ok", "true"),
            ("parent_sum_ok", "true"),
            ("held_fds", "1"),
            ("held_shmem_mib", "256"),
            ("parent_fds", "0"),
            ("parent_mappings", "0"),
            ("parent_shmem_mib", "0"),
            ("worker_mappings", "0"),
            ("worker_fds", "0"),
            ("workers_seen", "2"),
        ] {
            assert_eq!(
                got.get(key).map(String::as_str),
                Some(want),
                "freed under {method}: {key}"
            );
        }
        // Machine-wide, other programs come and go: at least most of the 256 MiB came back.
        let freed: u64 = got["system_freed_mib"].parse().expect("a number");
        assert!(
            freed >= 200,
            "under {method} only {freed} MiB of shared memory were freed"
        );
    }
}

#[test]
fn workers_killed_mid_read_leave_nothing_behind() {
    expect(
        "killed",
        &[
            ("killed", "3"),
            ("after_kill", "true"),
            ("devshm_unchanged", "true"),
            ("parent_fds", "0"),
        ],
    );
}

#[test]
fn an_rkyv_archive_is_read_in_place_by_workers() {
    expect(
        "archived",
        &[("archived", "true"), ("parent_reads", "true")],
    );
}

#[test]
fn stale_and_forged_handles_are_errors_not_other_memory() {
    expect(
        "stale",
        &[
            ("handle_bytes", "40"),
            ("live", "Ok(1000)"),
            ("forged_is_err", "true"),
            ("stale_is_err", "true"),
        ],
    );
}

#[test]
fn builders_agree_and_sub_ranges_nest() {
    let n = 200_003u32; // not a multiple of the 64 KiB blocks `try_from_iter` writes
    let a = SharedSlice::from_vec((0..n).collect()).unwrap();
    let b = SharedSlice::try_from_iter(0..n).unwrap();
    let c = SharedSlice::build(n as usize, |s| {
        for (i, x) in s.iter_mut().enumerate() {
            *x = i as u32;
        }
    })
    .unwrap();
    let d = SharedSlice::try_from(&(0..n).collect::<Vec<_>>()[..]).unwrap();
    assert_eq!(&a[..], &b[..]);
    assert_eq!(&a[..], &c[..]);
    assert_eq!(&a[..], &d[..]);
    let inner = a.slice(100..1000).slice(10..=19);
    assert_eq!(inner.range(), 110..120);
    assert_eq!(&inner[..], &(110..120).collect::<Vec<u32>>()[..]);
    let chunks: Vec<_> = a.chunks_of(70_000).collect();
    assert_eq!(
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
        [70_000, 70_000, 60_003]
    );
    let empty = SharedSlice::<u64>::from_vec(Vec::new()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.chunks_of(4).count(), 0);
}

#[test]
#[should_panic(expected = "out of bounds")]
fn a_sub_range_past_the_end_panics_like_slicing() {
    let a = SharedSlice::from_vec(vec![1u8; 10]).unwrap();
    let _ = a.slice(5..11);
}

#[test]
fn a_handle_travels_in_tens_of_bytes_and_only_as_its_own_type() {
    let big = SharedSlice::build(1 << 24, |s: &mut [u64]| s.fill(9)).unwrap(); // 128 MiB
    let bytes = pool_core::wire::encode(&big.slice(5..1 << 20)).unwrap();
    assert!(bytes.len() < 64, "a handle took {} bytes", bytes.len());
    // Decoded in the same process: the same memory, no new mapping.
    let back: SharedSlice<u64> = pool_core::wire::decode(&bytes).unwrap();
    assert_eq!(back.as_ptr(), big[5..].as_ptr());
    assert_eq!(back.len(), (1 << 20) - 5);
    // As another element type: an error, not a reinterpretation.
    let wrong = pool_core::wire::decode::<SharedSlice<u32>>(&bytes);
    assert!(wrong.is_err(), "decoded as u32: {wrong:?}");
}

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "pool_core::bytemuck")]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    mass: f32,
}

#[test]
fn user_types_derive_pod_through_the_reexport() {
    let ps = SharedSlice::try_from_iter((0..1000).map(|i| Particle {
        pos: [i as f32, 0.0, 1.0],
        mass: 2.0,
    }))
    .unwrap();
    assert_eq!(ps[999].pos[0], 999.0);
    assert_eq!(ps.iter().map(|p| p.mass).sum::<f32>(), 2000.0);
}
