use pool_core::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let pool = Pool::new().unwrap();
    let _ = pool.apply(square, 7);
}
