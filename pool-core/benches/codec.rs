//! The codec: job frames of tiny items (as `map` sends them), the worker's loop over them, the
//! results decoded as `map` does, and byte buffers.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pool_core::__bench::{
    decode_job, decode_map_results, decode_value, encode_job, encode_map_chunk, encode_value,
    run_job, ParsedResults,
};

#[pool_core::task]
fn square(x: u64) -> u64 {
    x * x
}

fn codec(c: &mut Criterion) {
    const N: u32 = 10_000;
    // Values as large as a big map's: 5-byte arguments, 9-byte results.
    let base = 40_000_000u64;
    let items: Vec<u64> = (base..base + N as u64).collect();
    let frame = encode_job("bench::square", &items);
    let mut group = c.benchmark_group("job frame of 10,000 u64");
    group.throughput(Throughput::Elements(items.len() as u64));
    group.bench_function("encode", |b| b.iter(|| encode_job("bench::square", &items)));
    group.bench_function("decode", |b| b.iter(|| decode_job::<u64>(&frame)));
    group.finish();

    // The three steps of a map chunk, each over recycled buffers as in `map`.
    let job = encode_map_chunk::<square>(Vec::new(), &mut items.iter().copied(), N);
    let mut results = Vec::new();
    run_job(&job, &mut results);
    let results = ParsedResults::new(results);
    let mut group = c.benchmark_group("map chunk of 10,000 square(u64)");
    group.throughput(Throughput::Elements(N as u64));
    let mut buf = Vec::new();
    group.bench_function("encode (caller)", |b| {
        b.iter(|| {
            buf =
                encode_map_chunk::<square>(std::mem::take(&mut buf), &mut items.iter().copied(), N);
        })
    });
    let mut out = Vec::new();
    group.bench_function("run (worker)", |b| b.iter(|| run_job(&job, &mut out)));
    let mut decoded: Vec<u64> = Vec::with_capacity(N as usize);
    group.bench_function("decode (caller)", |b| {
        b.iter(|| {
            decoded.clear();
            decode_map_results(&results, N, &mut decoded);
        })
    });
    group.finish();
    assert_eq!(decoded[1], (base + 1) * (base + 1));

    let blob: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let mut encoded = Vec::new();
    encode_value(&mut encoded, &blob);
    let mut group = c.benchmark_group("1 MiB Vec<u8>");
    group.throughput(Throughput::Bytes(blob.len() as u64));
    group.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(blob.len() + 8);
        b.iter(|| {
            buf.clear();
            encode_value(&mut buf, &blob)
        })
    });
    group.bench_function("decode", |b| b.iter(|| decode_value::<Vec<u8>>(&encoded)));
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
