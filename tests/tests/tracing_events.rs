//! With the `tracing` feature the pool reports workers starting, dying and tasks failing.
//! (Its own binary: it installs a global subscriber.)

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use pool_core::Pool;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records each event as `target level message field=value …`.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let m = event.metadata();
        let mut line = Line(format!("{} {}", m.target(), m.level()));
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn events_for_workers_and_failures() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    pool_tests::deadline(60, "tracing", || {
        let pool = Pool::builder().processes(1).build().unwrap();
        let _ = pool.apply(panics_on, (1, 1));
        let _ = pool.apply(abort_now, ());
        pool.close();
        pool.join().unwrap();
    });
    let lines = recorder.0.lock().unwrap().clone();
    let has = |needle: &[&str]| lines.iter().any(|l| needle.iter().all(|n| l.contains(n)));
    assert!(has(&["pool_core", "worker started"]), "{lines:#?}");
    assert!(has(&["WARN", "task failed", "panicked"]), "{lines:#?}");
    assert!(has(&["WARN", "worker died", "SIGABRT"]), "{lines:#?}");
    assert!(has(&["worker exited"]), "{lines:#?}");
}
