//! `Pool(4)` with `apply_async` for five tasks, then `close` and `join`.

use pool_core::{task, Pool};

#[task]
fn cube(x: u64) -> u64 {
    x * x * x
}

#[pool_core::main]
fn main() -> Result<(), pool_core::Error> {
    let pool = Pool::builder().processes(4).build()?;
    let pending: Vec<_> = (1..=5).map(|x| (x, pool.apply_async(cube, x))).collect();
    pool.close();
    pool.join()?;
    for (x, r) in pending {
        println!("{x} cubed is {}", r.get()?);
    }
    Ok(())
}
