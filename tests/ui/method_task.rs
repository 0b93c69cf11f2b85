use pool_core::task;

struct Counter(u64);

impl Counter {
    #[task]
    fn bump(&self) -> u64 {
        self.0 + 1
    }
}

fn main() {}
