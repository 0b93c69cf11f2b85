//! A producer bakes numbered buns; ten consumers eat them. The producer ends with one `None`
//! per consumer, the sentinel that tells it to stop.

use pool_core::{task, Process, Queue, Value};

const BUNS: u32 = 30;
const CONSUMERS: u32 = 10;

#[task]
fn producer(q: Queue<Option<u32>>) {
    for bun in 1..=BUNS {
        q.put(Some(bun)).unwrap();
    }
    for _ in 0..CONSUMERS {
        q.put(None).unwrap();
    }
}

#[task]
fn consumer(q: Queue<Option<u32>>, id: u32, eaten: Value<u32>) {
    while let Ok(Some(bun)) = q.get() {
        println!("consumer {id} ate bun {bun}");
        *eaten.lock().unwrap() += 1;
    }
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let q = Queue::new()?;
    let eaten = Value::new(0u32)?;
    let baker = Process::new(producer, q.clone()).name("producer").start()?;
    let eaters: Vec<_> = (1..=CONSUMERS)
        .map(|id| Process::new(consumer, (q.clone(), id, eaten.clone())).start())
        .collect::<Result<_, _>>()?;
    baker.join();
    for e in &eaters {
        e.join();
    }
    println!("all {} buns eaten by {CONSUMERS} consumers", eaten.get());
    Ok(())
}
