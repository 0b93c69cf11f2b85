//! The codec: job frames of tiny items (as `map` sends them) and byte buffers.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pool_core::__bench::{decode_job, decode_value, encode_job, encode_value};

fn codec(c: &mut Criterion) {
    let items: Vec<u64> = (0..10_000).collect();
    let frame = encode_job("bench::square", &items);
    let mut group = c.benchmark_group("job frame of 10,000 u64");
    group.throughput(Throughput::Elements(items.len() as u64));
    group.bench_function("encode", |b| b.iter(|| encode_job("bench::square", &items)));
    group.bench_function("decode", |b| b.iter(|| decode_job::<u64>(&frame)));
    group.finish();

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
