use pool_core::task;

#[task]
struct Job {
    id: u64,
}

fn main() {}
