//! Garbage on the wire gives errors, never a panic or a hang: every decoder, over mutated valid
//! frames and random bytes (the stable-toolchain companion of the cargo-fuzz target in `fuzz/`).

use pool_core::__bench::{decode_any_frame, encode_job};
use pool_tests::Rng;

#[test]
fn mutated_and_random_frames_never_panic() {
    let seeds: Vec<Vec<u8>> = vec![
        encode_job("t::square", &[1u64, 2, 3, u64::MAX]),
        encode_job("t::bytes", &[vec![7u8; 300], vec![]]),
        encode_job("t::pair", &[("x".to_string(), vec![1i64, -2])]),
        // A result frame: kind, status, count 3, errors 1, then three outcomes.
        {
            let mut f = vec![3u8, 0, 3, 0, 0, 0, 1, 0, 0, 0];
            f.extend([0, 1, 0, 0, 0, 7]); // ok: the MessagePack 7
            f.extend([1, 9, 0, 0, 0, 1, 0, 0, 0, b'p', b'f', b':', b'1', b'2']); // a panic
            f.extend([2, 3, 0, 0, 0, b'b', b'a', b'd']); // bad arguments
            f
        },
        vec![3u8, 1],
        vec![2u8],
        // A fixed-width job (a map of u64): kind 4, name, count 3, width 9, three items.
        {
            let mut f = vec![4u8, 9, 0];
            f.extend(b"t::square");
            f.extend([3, 0, 0, 0, 9]);
            for v in [1u64, 1 << 40, u64::MAX] {
                f.push(0xcf);
                f.extend(v.to_be_bytes());
            }
            f
        },
        // Fixed-width results: kind, status 2, count 3, errors 0, width 9, three values.
        {
            let mut f = vec![3u8, 2, 3, 0, 0, 0, 0, 0, 0, 0, 9];
            for v in [1u64, 1 << 40, u64::MAX] {
                f.push(0xcf);
                f.extend(v.to_be_bytes());
            }
            f
        },
    ];
    let mut rng = Rng(0xfeed_f00d_dead_beef);
    let mut cases = 0u64;
    for seed in &seeds {
        decode_any_frame(seed);
        for _ in 0..30_000 {
            let mut f = seed.clone();
            match rng.next_u64() % 4 {
                0 => f.truncate((rng.next_u64() % (f.len() as u64 + 1)) as usize),
                1 => {
                    for _ in 0..1 + rng.next_u64() % 4 {
                        if !f.is_empty() {
                            let i = (rng.next_u64() % f.len() as u64) as usize;
                            f[i] ^= 1 << (rng.next_u64() % 8);
                        }
                    }
                }
                2 => {
                    // A length field set to something huge.
                    if f.len() > 8 {
                        let i = (rng.next_u64() % (f.len() as u64 - 4)) as usize;
                        f[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                    }
                }
                _ => {
                    f = (0..rng.next_u64() % 64)
                        .map(|_| rng.next_u64() as u8)
                        .collect()
                }
            }
            decode_any_frame(&f);
            cases += 1;
        }
    }
    assert_eq!(cases, 30_000 * seeds.len() as u64);
}
