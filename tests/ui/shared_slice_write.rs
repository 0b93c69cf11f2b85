use pool_core::{task, SharedSlice};

#[task]
fn scale(data: SharedSlice<f64>) -> f64 {
    data[0] = 2.0;
    data[0]
}

fn main() {}
