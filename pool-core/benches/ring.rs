//! The shared-memory ring: bytes through per second for frames of several sizes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pool_core::__bench::LoopbackRing;

fn ring(c: &mut Criterion) {
    let ring = LoopbackRing::new();
    let mut group = c.benchmark_group("ring round trip");
    for size in [64usize, 4 << 10, 1 << 20, 16 << 20] {
        let frame = vec![7u8; size];
        let mut out = vec![0u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| ring.round_trip(&frame, &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
