use pool_core::task;

#[task]
fn label(code: u32) -> &'static str {
    if code == 0 { "ok" } else { "error" }
}

fn main() {}
