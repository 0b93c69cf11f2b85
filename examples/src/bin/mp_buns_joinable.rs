//! The buns again with a `JoinableQueue`: daemon consumers mark each bun done, and the baker
//! waits with `join()` until every bun is eaten. The daemons end with the program.

use pool_core::{task, JoinableQueue, Process, Value};

#[task]
fn consumer(q: JoinableQueue<u32>, id: u32, eaten: Value<u32>) {
    loop {
        let bun = q.get().unwrap();
        println!("consumer {id} ate bun {bun}");
        *eaten.lock().unwrap() += 1;
        q.task_done().unwrap();
    }
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let q = JoinableQueue::new()?;
    let eaten = Value::new(0u32)?;
    let _eaters: Vec<_> = (1..=10)
        .map(|id| {
            Process::new(consumer, (q.clone(), id, eaten.clone()))
                .daemon(true)
                .start()
        })
        .collect::<Result<_, _>>()?;
    for bun in 1..=30 {
        q.put(bun).unwrap();
    }
    q.join();
    println!(
        "all {} buns eaten; the daemon consumers stop with the program",
        eaten.get()
    );
    Ok(())
}
