//! Two tasks registered under one name stop the pool from starting, with both named.
//! (Its own binary: the clash makes every pool in this binary refuse to start.)

use pool_core::{task, Error, Pool};

#[task(name = "shared.name")]
fn first(x: u64) -> u64 {
    x + 1
}

mod other {
    #[pool_core::task(name = "shared.name")]
    pub(crate) fn second(x: u64) -> u64 {
        x + 2
    }
}

#[test]
fn duplicate_names_are_reported_at_pool_start_naming_both() {
    match Pool::builder().processes(1).build() {
        Err(Error::DuplicateTask {
            name,
            first: a,
            second: b,
        }) => {
            assert_eq!(name, "shared.name");
            let both = format!("{a} | {b}");
            assert!(
                both.contains("duplicate::first (tests/tests/duplicate.rs:"),
                "{both}"
            );
            assert!(
                both.contains("duplicate::other::second (tests/tests/duplicate.rs:"),
                "{both}"
            );
            let message = Error::DuplicateTask {
                name,
                first: a,
                second: b,
            }
            .to_string();
            assert!(message.contains("#[task(name"), "{message}");
        }
        other => panic!("expected DuplicateTask, got {other:?}"),
    }
    // The functions themselves still work in-process.
    assert_eq!(first(1) + other::second(1), 5);
}
