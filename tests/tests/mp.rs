//! The multiprocessing primitives across real processes: handles passed to `Process` children
//! and pool tasks, processes SIGKILLed while they hold a lock or are inside `put`/`get`, no
//! busy-waiting, exit codes, and nothing left in `/dev/shm`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pool_core::{
    task, Array, Barrier, Condition, Event, GetError, JoinableQueue, Lock, OwnerDied, Pipe, Pool,
    Process, Queue, Semaphore, SharedMemory, Value,
};
use pool_tests::{deadline, Rng};

#[task]
fn put_sum(q: Queue<u64>) {
    q.put(10 + 20 + 30).unwrap();
}

#[task]
fn put_square(q: Queue<u64>, x: u64) -> u64 {
    q.put(x * x).unwrap();
    x
}

#[task]
fn add_many(v: Value<u64>, a: Array<u32>, n: u32) {
    for _ in 0..n {
        *v.lock().unwrap_or_else(OwnerDied::into_guard) += 1;
        a.lock().unwrap_or_else(OwnerDied::into_guard)[0] += 1;
    }
}

#[task]
fn hold_lock_forever(lock: Lock, held: Event) {
    let _g = lock.acquire().unwrap_or_else(OwnerDied::into_guard);
    held.set();
    std::thread::sleep(Duration::from_secs(3600));
}

#[task]
fn produce_forever(q: Queue<(u32, u64)>, id: u32) {
    for k in 0.. {
        q.put((id, k)).unwrap();
    }
}

#[task]
fn consume_into(q: Queue<(u32, u64)>, out: Queue<(u32, u64)>) {
    while let Ok(item) = q.get() {
        out.put(item).unwrap();
    }
}

#[task]
fn wait_for_item(q: Queue<u64>) {
    q.get().unwrap();
}

#[task]
fn send_pid(conn: pool_core::Connection<u32>) {
    conn.send(&std::os::unix::process::parent_id()).unwrap();
}

#[task]
fn exit_with(code: i32) {
    std::process::exit(code);
}

#[task]
fn panic_now() {
    panic!("on purpose");
}

#[task]
fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[task]
fn eat(q: JoinableQueue<u32>, eaten: Value<u32>) {
    while let Ok(bun) = q.get() {
        let _ = bun;
        *eaten.lock().unwrap() += 1;
        q.task_done().unwrap();
    }
}

#[task]
fn sync_dance(start: Event, sem: Semaphore, barrier: Barrier, cond: Condition, v: Value<u32>) {
    start.wait();
    sem.acquire();
    *v.lock().unwrap() += 1;
    sem.release();
    barrier.wait();
    let g = cond.acquire().unwrap();
    drop(g);
    cond.notify_all();
}

#[test]
fn handles_pass_to_processes_and_pool_tasks() {
    deadline(60, "handles to processes and pool tasks", || {
        let q: Queue<u64> = Queue::new().unwrap();
        let p = Process::new(put_sum, q.clone()).start().unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(20)).unwrap(), 60);
        p.join();
        assert_eq!(p.exitcode(), Some(0));

        // A queue as a pool task's argument (Python refuses this).
        let pool = Pool::builder().processes(2).build().unwrap();
        let xs = pool
            .map(put_square, (0..100u64).map(|x| (q.clone(), x)))
            .unwrap();
        assert_eq!(xs.len(), 100);
        let mut got: Vec<u64> = (0..100).map(|_| q.get().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());

        // Value and Array from four processes at once.
        let v = Value::new(0u64).unwrap();
        let a = Array::<u32>::zeroed(4).unwrap();
        let ps: Vec<_> = (0..4)
            .map(|_| {
                Process::new(add_many, (v.clone(), a.clone(), 1000))
                    .start()
                    .unwrap()
            })
            .collect();
        for p in &ps {
            p.join();
        }
        assert_eq!(v.get(), 4000);
        assert_eq!(a.to_vec(), [4000, 0, 0, 0]);

        // Five children send their parent's pid through one pipe.
        let (rx, tx) = Pipe::simplex::<u32>().unwrap();
        let ps: Vec<_> = (0..5)
            .map(|_| Process::new(send_pid, tx.clone()).start().unwrap())
            .collect();
        for _ in 0..5 {
            assert_eq!(rx.recv().unwrap(), std::process::id());
        }
        for p in ps {
            p.join();
        }

        // Event, Semaphore, Barrier and Condition across three processes.
        let (start, sem, barrier, cond, v) = (
            Event::new().unwrap(),
            Semaphore::new(1).unwrap(),
            Barrier::new(3).unwrap(),
            Condition::new().unwrap(),
            Value::new(0u32).unwrap(),
        );
        let ps: Vec<_> = (0..3)
            .map(|_| {
                let args = (
                    start.clone(),
                    sem.clone(),
                    barrier.clone(),
                    cond.clone(),
                    v.clone(),
                );
                Process::new(sync_dance, args).start().unwrap()
            })
            .collect();
        start.set();
        for p in ps {
            p.join();
            assert_eq!(p.exitcode(), Some(0));
        }
        assert_eq!(v.get(), 3);
        assert_eq!(sem.value(), 1);
    });
}

#[test]
fn exit_codes_follow_python() {
    deadline(60, "exit codes", || {
        let ok = Process::new(nap, 1).start().unwrap();
        ok.join();
        assert_eq!(ok.exitcode(), Some(0));
        let panicked = Process::new(panic_now, ()).start().unwrap();
        panicked.join();
        assert_eq!(panicked.exitcode(), Some(1));
        let exited = Process::new(exit_with, 3).start().unwrap();
        exited.join();
        assert_eq!(exited.exitcode(), Some(3));
        let long = Process::new(nap, 60_000).name("sleeper").start().unwrap();
        assert!(long.is_alive());
        assert_eq!(long.exitcode(), None);
        assert!(!long.join_timeout(Duration::from_millis(50)));
        long.terminate();
        assert!(long.join_timeout(Duration::from_secs(10)));
        assert_eq!(long.exitcode(), Some(-15));
        let long = Process::new(nap, 60_000).start().unwrap();
        long.kill();
        long.join();
        assert_eq!(long.exitcode(), Some(-9));
        assert!(!long.is_alive());
    });
}

#[test]
fn a_lock_whose_owner_was_killed_is_recovered_every_time() {
    deadline(120, "owner-died lock", || {
        let lock = Lock::new().unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..100 {
            let held = Event::new().unwrap();
            let p = Process::new(hold_lock_forever, (lock.clone(), held.clone()))
                .start()
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)), "round {round}");
            // Sometimes the parent is already waiting for the lock when the owner dies.
            let waiter = (rng.below(2) == 0).then(|| {
                let lock = lock.clone();
                std::thread::spawn(move || lock.acquire().is_err())
            });
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
            p.kill();
            p.join();
            match waiter {
                Some(w) => assert!(w.join().unwrap(), "round {round}: the waiter was not told"),
                None => {
                    let taken = lock.acquire_timeout(Duration::from_secs(10));
                    assert!(
                        matches!(taken, Some(Err(_))),
                        "round {round}: owner-died not reported"
                    );
                }
            }
            // Afterwards the lock is clean again.
            assert!(matches!(lock.try_acquire(), Some(Ok(_))), "round {round}");
        }
    });
}

#[test]
fn processes_killed_inside_put_and_get_cost_at_most_their_own_item() {
    deadline(240, "queue under SIGKILL", || {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut killed_producers, mut killed_consumers, mut items) = (0, 0, 0u64);
        for round in 0..40 {
            let q: Queue<(u32, u64)> = Queue::with_limits(Some(64), 1 << 20).unwrap();
            let out: Queue<(u32, u64)> = Queue::new().unwrap();
            let producers: Vec<_> = (0..3)
                .map(|id| {
                    Process::new(produce_forever, (q.clone(), id))
                        .start()
                        .unwrap()
                })
                .collect();
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    Process::new(consume_into, (q.clone(), out.clone()))
                        .start()
                        .unwrap()
                })
                .collect();
            std::thread::sleep(Duration::from_millis(5 + rng.below(30)));
            // Kill one producer and one consumer at random moments, then stop the others.
            let victim = rng.below(3) as usize;
            producers[victim].kill();
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            let cvictim = rng.below(2) as usize;
            consumers[cvictim].kill();
            killed_producers += 1;
            killed_consumers += 1;
            for p in &producers {
                p.kill();
                p.join();
            }
            // The surviving consumer drains what is left, then stops on close.
            q.close();
            for c in &consumers {
                assert!(
                    c.join_timeout(Duration::from_secs(20)),
                    "round {round}: consumer stuck"
                );
            }
            let mut seen: HashMap<u32, Vec<u64>> = HashMap::new();
            while let Ok(item) = out.try_get() {
                seen.entry(item.0).or_default().push(item.1);
                items += 1;
            }
            assert_eq!(q.len(), 0, "round {round}: items left behind");
            // Per producer: no duplicate, and at most one gap of one item over all producers
            // (the item the killed consumer was taking). (Two consumers relay items, so their
            // order in `out` is not the queue's; FIFO is checked on its own below.)
            let mut missing = 0;
            for (id, ks) in &mut seen {
                ks.sort_unstable();
                for w in ks.windows(2) {
                    assert!(
                        w[1] > w[0],
                        "round {round}: producer {id} item {} twice",
                        w[0]
                    );
                    missing += w[1] - w[0] - 1;
                }
            }
            assert!(
                missing <= 1,
                "round {round}: {missing} items lost in the middle"
            );
        }
        eprintln!(
            "queue under SIGKILL: 40 rounds, {killed_producers} producers and \
             {killed_consumers} consumers killed, {items} items checked"
        );
    });
}

#[task]
fn send_forever(conn: pool_core::Connection<(u32, u64)>, id: u32) {
    for k in 0.. {
        conn.send(&(id, k)).unwrap();
    }
}

#[test]
fn senders_killed_inside_send_leave_the_pipe_whole() {
    deadline(120, "pipe under SIGKILL", || {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut received = 0u64;
        for round in 0..20 {
            let (rx, tx) = Pipe::simplex::<(u32, u64)>().unwrap();
            let senders: Vec<_> = (0..3)
                .map(|id| {
                    Process::new(send_forever, (tx.clone(), id))
                        .start()
                        .unwrap()
                })
                .collect();
            let mut next = [0u64; 3];
            let mut read = |n: usize, next: &mut [u64; 3]| {
                for _ in 0..n {
                    let (id, k) = rx.recv().unwrap();
                    // One reader: each sender's messages arrive in order, without a gap.
                    assert_eq!(k, next[id as usize], "round {round}: sender {id}");
                    next[id as usize] += 1;
                    received += 1;
                }
            };
            read(200 + rng.below(2000) as usize, &mut next);
            for s in &senders {
                std::thread::sleep(Duration::from_micros(rng.below(500)));
                s.kill();
                s.join();
            }
            // Everything the killed senders finished sending is still there, in order.
            while let Ok((id, k)) = rx.recv_timeout(Duration::from_millis(1)) {
                assert_eq!(
                    k, next[id as usize],
                    "round {round}: sender {id} after the kills"
                );
                next[id as usize] += 1;
                received += 1;
            }
            // And the pipe still works.
            tx.send(&(9, 9)).unwrap();
            assert_eq!(rx.recv().unwrap(), (9, 9));
        }
        eprintln!("pipe under SIGKILL: 20 rounds, 60 senders killed, {received} messages checked");
    });
}

#[test]
fn items_of_one_producer_arrive_in_order() {
    deadline(60, "fifo", || {
        #[task]
        fn count_to(q: Queue<u64>, n: u64) {
            for i in 0..n {
                q.put(i).unwrap();
            }
        }
        let q: Queue<u64> = Queue::bounded(100).unwrap();
        let p = Process::new(count_to, (q.clone(), 100_000))
            .start()
            .unwrap();
        for i in 0..100_000 {
            assert_eq!(q.get().unwrap(), i);
        }
        p.join();
        assert_eq!(p.exitcode(), Some(0));
    });
}

#[test]
fn blocked_calls_sleep_in_the_kernel_and_wake_fast() {
    deadline(60, "no busy-waiting", || {
        let q: Queue<u64> = Queue::new().unwrap();
        let p = Process::new(wait_for_item, q.clone()).start().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let cpu = |pid: u32| -> u64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap() // utime + stime
        };
        let before = cpu(p.pid());
        std::thread::sleep(Duration::from_millis(500));
        let used = cpu(p.pid()) - before;
        assert!(used <= 2, "a blocked get used {used} clock ticks in 500 ms");
        q.put(1).unwrap();
        assert!(p.join_timeout(Duration::from_secs(10)));

        // Wake-up latency across processes: put here, get there, put back.
        #[task]
        fn echo(a: Queue<u64>, b: Queue<u64>, n: u64) {
            for _ in 0..n {
                let x = a.get().unwrap();
                b.put(x).unwrap();
            }
        }
        let (a, b) = (Queue::<u64>::new().unwrap(), Queue::<u64>::new().unwrap());
        let n = 2000;
        let p = Process::new(echo, (a.clone(), b.clone(), n))
            .start()
            .unwrap();
        let mut rtts = Vec::new();
        for i in 0..n {
            let t = Instant::now();
            a.put(i).unwrap();
            assert_eq!(b.get().unwrap(), i);
            rtts.push(t.elapsed());
        }
        p.join();
        rtts.sort();
        let p50 = rtts[rtts.len() / 2];
        eprintln!("queue round trip between two processes: p50 {p50:?}");
        assert!(p50 < Duration::from_millis(5), "p50 round trip {p50:?}");
    });
}

#[test]
fn joinable_queue_with_daemon_consumers() {
    deadline(60, "joinable queue", || {
        let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
        let eaten = Value::new(0u32).unwrap();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                Process::new(eat, (q.clone(), eaten.clone()))
                    .daemon(true)
                    .start()
                    .unwrap()
            })
            .collect();
        for bun in 0..1000 {
            q.put(bun).unwrap();
        }
        assert!(q.join_timeout(Duration::from_secs(30)));
        assert_eq!(eaten.get(), 1000);
        assert!(q.task_done().is_err());
        q.close();
        for c in consumers {
            assert!(c.join_timeout(Duration::from_secs(10)));
        }
    });
}

#[test]
fn nothing_is_left_in_dev_shm() {
    let list = || -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = list();
    {
        let _objects: Vec<_> = (0..50)
            .map(|_| {
                (
                    Queue::<u8>::new().unwrap(),
                    Lock::new().unwrap(),
                    Value::new(1u8).unwrap(),
                    Pipe::new::<u8>().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            list(),
            before,
            "memfd-backed objects never appear in /dev/shm"
        );
        let name = format!("pool-core-test-{}", std::process::id());
        let shm = SharedMemory::create(&name, 1 << 16).unwrap();
        let path = format!("/dev/shm/{name}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private to the user");
        let other = shm.clone();
        drop(shm);
        assert!(
            std::path::Path::new(&path).exists(),
            "a handle is still alive"
        );
        drop(other);
        assert!(
            !std::path::Path::new(&path).exists(),
            "removed with the last handle"
        );
    }
    assert_eq!(list(), before);
    assert!(matches!(
        Queue::<u8>::new().unwrap().try_get(),
        Err(GetError::Empty)
    ));
}
