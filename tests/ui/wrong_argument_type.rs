use pool_core::{task, Pool};

#[task]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let pool = Pool::new().unwrap();
    let _ = pool.apply(square, "seven");
}
