use pool_core::task;

#[task]
fn identity<T>(x: T) -> T {
    x
}

fn main() {}
