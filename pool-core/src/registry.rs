//! The table of registered tasks, looked up by name in the workers.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::task::TaskEntry;
use crate::Error;

inventory::collect!(TaskEntry);

type Table = HashMap<&'static str, &'static TaskEntry>;

/// Built once in the parent (before the first fork), so workers inherit it ready to use.
static TABLE: OnceLock<Result<Table, Error>> = OnceLock::new();

fn table() -> &'static Result<Table, Error> {
    TABLE.get_or_init(|| {
        let mut table: Table = HashMap::new();
        for entry in inventory::iter::<TaskEntry> {
            if let Some(other) = table.insert(entry.name, entry) {
                let mut both = [other.describe(), entry.describe()];
                both.sort();
                let [first, second] = both;
                return Err(Error::DuplicateTask {
                    name: entry.name.to_owned(),
                    first,
                    second,
                });
            }
        }
        Ok(table)
    })
}

/// Checks that no two tasks share a name.
pub(crate) fn check() -> Result<(), Error> {
    table().as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The task registered as `name`.
pub(crate) fn lookup(name: &str) -> Option<&'static TaskEntry> {
    table().as_ref().ok()?.get(name).copied()
}

/// Whether any registered task retries its panics (`#[task(retry_on_panic)]`): if none does, the
/// collector never needs to keep a job's frame once it is sent.
pub(crate) fn any_retries_panics() -> bool {
    table()
        .as_ref()
        .is_ok_and(|t| t.values().any(|e| e.retry_on_panic))
}
