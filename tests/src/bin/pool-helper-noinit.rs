//! A program that forgets `pool_core::init()`: building a spawn pool must fail clearly (its
//! re-run binary cannot attach as a worker), and when this binary is itself run as a would-be
//! worker, its own pool refuses to start instead of spawning further.

use pool_core::{Pool, StartMethod};

fn main() {
    match Pool::builder()
        .processes(1)
        .start_method(StartMethod::Spawn)
        .build()
    {
        Ok(_) => println!("built"),
        Err(err) => println!("error={err}"),
    }
}
