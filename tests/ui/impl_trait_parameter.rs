use pool_core::task;

#[task]
fn show(value: impl std::fmt::Display) -> String {
    value.to_string()
}

fn main() {}
