//! Five children send their parent's pid through one pipe; the parent reads all five.

use pool_core::{task, Connection, Pipe, Process};

#[task]
fn send_parent_pid(conn: Connection<u32>) {
    conn.send(&std::os::unix::process::parent_id()).unwrap();
}

#[pool_core::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (receiver, sender) = Pipe::simplex::<u32>()?;
    let children: Vec<_> = (0..5)
        .map(|_| Process::new(send_parent_pid, sender.clone()).start())
        .collect::<Result<_, _>>()?;
    let me = std::process::id();
    let mut matches = 0;
    for _ in 0..5 {
        let pid = receiver.recv()?;
        println!("received {pid} (my pid is {me})");
        matches += usize::from(pid == me);
    }
    for child in &children {
        child.join();
    }
    println!("{matches} of 5 children sent their parent's pid");
    Ok(())
}
