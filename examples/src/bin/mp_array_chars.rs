//! A shared array of 100 bytes (characters) rewritten by a child.

use pool_core::{task, Array, Process};

#[task]
fn shout(a: Array<u8>) {
    for c in a.lock().unwrap().iter_mut() {
        *c = c.to_ascii_uppercase();
    }
}

fn text(a: &Array<u8>) -> String {
    let bytes = a.to_vec();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let mut bytes = [0u8; 100];
    let message = b"hello from the parent process";
    bytes[..message.len()].copy_from_slice(message);
    let a = Array::new(&bytes)?;
    println!("before: {} ({} bytes)", text(&a), a.len());
    Process::new(shout, a.clone()).start()?.join();
    println!("after:  {}", text(&a));
    Ok(())
}
