"""CPython multiprocessing.Pool on the workloads of pool-core's `throughput` benchmark.

Run by `cargo run --release -p pool-examples --bin throughput`; prints one JSON object per line:
{"workload": ..., "value": ..., "unit": ..., "n": ...}.
Usage: mp_bench.py WORKERS SCALE   (SCALE 1.0 = full sizes, 0.1 = --quick)
"""
import array
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


try:
    import numpy
except ImportError:  # the shared-scan row then sums in pure Python
    numpy = None

_SHM = None
WINDOW = 1 << 17  # u64s: 1 MiB


def attach(name):
    """Pool initializer: open the shared-scan block once per worker."""
    global _SHM
    from multiprocessing import shared_memory
    # Forked workers share the parent's resource tracker, so this attach registers nothing new
    # and the parent's unlink is the only one.
    _SHM = shared_memory.SharedMemory(name=name)


def window_sum(i):
    a = i * WINDOW
    if numpy is not None:
        return int(numpy.frombuffer(_SHM.buf, dtype=numpy.uint64, count=WINDOW, offset=a * 8).sum())
    return sum(_SHM.buf.cast("Q")[a:a + WINDOW]) & 0xFFFFFFFFFFFFFFFF


def shared_scan(workers, scale):
    """shared-scan: distinct 1 MiB windows of a 1 GiB shared_memory block of u64 i at i."""
    from multiprocessing import shared_memory
    windows = max(int(1000 * scale), 10)
    length = -(-windows * 1024 // 1000) * WINDOW
    shm = shared_memory.SharedMemory(create=True, size=length * 8)
    try:
        if numpy is not None:
            numpy.frombuffer(shm.buf, dtype=numpy.uint64)[:] = numpy.arange(length, dtype=numpy.uint64)
        else:
            view = shm.buf.cast("Q")
            for a in range(0, length, WINDOW):
                view[a:a + WINDOW] = memoryview(array.array("Q", range(a, a + WINDOW)))
            del view
        with Pool(workers, initializer=attach, initargs=(shm.name,)) as p:
            p.apply(square, (1,))
            first = timed(lambda: p.map(window_sum, range(windows)))
            # Warm: the median of five maps after two untimed ones, as for pool-core.
            warm = sorted([timed(lambda: p.map(window_sum, range(windows))) for _ in range(7)][2:])
        scanned = windows * WINDOW * 8
        how = "numpy" if numpy is not None else "pure Python"
        emit("shared-scan", scanned / warm[2] / 1e9, "GB/s", windows, how)
        emit("shared-scan-first", scanned / first / 1e9, "GB/s", windows, how)
    finally:
        shm.close()
        shm.unlink()


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


def emit(workload, value, unit, n, how=None):
    row = {"workload": workload, "value": value, "unit": unit, "n": n}
    if how:
        row["how"] = how
    print(json.dumps(row), flush=True)


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

    shared_scan(workers, scale)

    n = int(200_000 * scale)
    emit("queue-small", queue_rate(n, None), "items/s", n)
    n = max(int(2_000 * scale), 100)
    emit("queue-1mib", queue_rate(n, os.urandom(1 << 20)) * (1 << 20) / 1e9, "GB/s", n)


if __name__ == "__main__":
    main()
