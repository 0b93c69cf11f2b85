use pool_core::task;

#[task]
unsafe fn poke(addr: usize) -> u8 {
    *(addr as *const u8)
}

fn main() {}
