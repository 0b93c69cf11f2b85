//! A child computes 10 + 20 + 30 and sends the result back to its parent, once through a
//! `Queue` and once through a `Pipe`.

use pool_core::{task, Connection, Pipe, Process, Queue};

#[task]
fn sum_to_queue(q: Queue<u32>) {
    q.put(10 + 20 + 30).unwrap();
}

#[task]
fn sum_to_pipe(conn: Connection<u32>) {
    conn.send(&(10 + 20 + 30)).unwrap();
    conn.close();
}

#[pool_core::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let q = Queue::new()?;
    let child = Process::new(sum_to_queue, q.clone()).start()?;
    println!("from the queue: {}", q.get()?);
    child.join();

    let (parent_end, child_end) = Pipe::new()?;
    let child = Process::new(sum_to_pipe, child_end).start()?;
    println!("from the pipe: {}", parent_end.recv()?);
    child.join();
    Ok(())
}
