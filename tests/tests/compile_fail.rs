//! `#[task]` rejects what a worker could not run, with an error at the offending token; and the
//! pool's calls are typed, so wrong arguments or plain functions do not compile.

#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
