"""CPython multiprocessing.Pool on the workloads of pool-core's `throughput` benchmark.

Run by `cargo run --release -p pool-examples --bin throughput`; prints one JSON object per line:
{"workload": ..., "value": ..., "unit": ..., "n": ...}.
Usage: mp_bench.py WORKERS SCALE   (SCALE 1.0 = full sizes, 0.1 = --quick)
"""
import json
import os
import statistics
import sys
import time
from multiprocessing import Pool, Process, Queue


def square(x):
    return x * x


def busy(n):
    s = 0
    for i in range(n):
        s = (s + i * i) % 1000003
    return s


def checksum(b):
    return sum(b[::4096]) + len(b)


def produce(q, n, item):
    for i in range(n):
        q.put(item if item is not None else i)


def queue_rate(n, item):
    """Items/s from a producer process to this one through a multiprocessing.Queue."""
    q = Queue(maxsize=1024)
    p = Process(target=produce, args=(q, n, item))
    t = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get()
    dt = time.perf_counter() - t
    p.join()
    return n / dt


def emit(workload, value, unit, n):
    print(json.dumps({"workload": workload, "value": value, "unit": unit, "n": n}), flush=True)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    workers = int(sys.argv[1])
    scale = float(sys.argv[2])

    t0 = time.perf_counter()
    p = Pool(workers)
    p.apply(square, (1,))
    first = time.perf_counter() - t0
    p.close()
    join = timed(p.join)
    emit("startup-first-result", first * 1e3, "ms", 1)
    emit("startup-join-idle", join * 1e3, "ms", 1)

    # ~3 ms of pure computation per task, calibrated here.
    k = 1000
    while True:
        dt = timed(lambda: busy(k))
        if dt >= 0.003:
            break
        k = int(k * max(1.2, 0.003 / max(dt, 1e-6)))
    with Pool(workers) as p:
        p.map(square, range(1000))
        n = int(4_000_000 * scale)
        dt = timed(lambda: p.map(square, range(n)))
        emit("map-tiny", n / dt, "tasks/s", n)
        n = int(100_000 * scale)
        dt = timed(lambda: p.map(square, range(n), chunksize=1))
        emit("map-chunk1", n / dt, "tasks/s", n)
        n = int(100_000 * scale)

        def burst():
            rs = [p.apply_async(square, (i,)) for i in range(n)]
            for r in rs:
                r.get()

        dt = timed(burst)
        emit("apply-async", n / dt, "tasks/s", n)
        n = int(20_000 * scale)
        lat = []
        for i in range(n):
            t = time.perf_counter()
            p.apply(square, (i,))
            lat.append(time.perf_counter() - t)
        lat.sort()
        emit("apply-latency-p50", lat[len(lat) // 2] * 1e6, "us", n)
        emit("apply-latency-p99", lat[int(len(lat) * 0.99)] * 1e6, "us", n)

        tasks = max(int(400 * scale), 2 * workers)
        serial = timed(lambda: [busy(k) for _ in range(tasks)])
        par = timed(lambda: p.map(busy, [k] * tasks))
        emit("cpu", serial / par, "x speed-up", tasks)

        blob = os.urandom(1 << 20)
        count = max(int(200 * scale), 20)
        blobs = [blob[i:] + blob[:i] for i in range(count)]
        dt = timed(lambda: p.map(checksum, blobs))
        emit("bytes", count * (1 << 20) / dt / 1e9, "GB/s", count)

    n = int(200_000 * scale)
    emit("queue-small", queue_rate(n, None), "items/s", n)
    n = max(int(2_000 * scale), 100)
    emit("queue-1mib", queue_rate(n, os.urandom(1 << 20)) * (1 << 20) / 1e9, "GB/s", n)


if __name__ == "__main__":
    main()
