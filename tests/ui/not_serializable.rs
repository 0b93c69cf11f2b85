use pool_core::task;

struct Handle {
    fd: i32,
}

#[task]
fn close_it(handle: Handle) -> i32 {
    handle.fd
}

fn main() {}
