use pool_core::task;

#[task(nmae = "square")]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {}
