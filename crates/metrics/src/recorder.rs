//! The recorder: one per process, created at start-up and handed to whatever
//! records (cloning it shares the same numbers).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::series::{Counter, Gauge, Histogram, Label};
use crate::snapshot::Snapshot;

/// This process's metrics. Cheap to clone: every clone records into the same
/// [`Snapshot`].
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Behind one lock: a record is a map update of a few nanoseconds, and a
    /// snapshot (once a second) must see every series at one instant.
    inner: Arc<Mutex<Snapshot>>,
}

impl Recorder {
    /// The recorder of this process, `role` number `slot`.
    pub fn new(role: &'static str, slot: u32) -> Recorder {
        Recorder {
            inner: Arc::new(Mutex::new(Snapshot::new(
                Label::from(role),
                slot,
                std::process::id(),
            ))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A panic mid-update cannot corrupt a map of numbers beyond one value.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one to a counter.
    pub fn inc(&self, series: Counter) {
        self.add(series, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, series: Counter, n: u64) {
        *self.lock().counters.entry(series).or_default() += n;
    }

    /// Sets a gauge.
    pub fn set(&self, series: Gauge, value: f64) {
        self.lock().gauges.insert(series, value);
    }

    /// Records a duration.
    pub fn observe(&self, series: Histogram, took: Duration) {
        self.lock()
            .histograms
            .entry(series)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::JobOutcome;

    #[test]
    fn clones_record_into_one_snapshot() {
        let a = Recorder::new("worker", 2);
        let b = a.clone();
        a.inc(Counter::Jobs {
            outcome: JobOutcome::Done,
        });
        b.add(
            Counter::Jobs {
                outcome: JobOutcome::Done,
            },
            2,
        );
        b.set(Gauge::QueueDepth { worker: 2 }, 4.0);
        a.observe(Histogram::JobDuration, Duration::from_millis(200));
        let snap = b.snapshot();
        assert_eq!(snap.role.as_str(), "worker");
        assert_eq!((snap.slot, snap.pid), (2, std::process::id()));
        let done = Counter::Jobs {
            outcome: JobOutcome::Done,
        };
        assert_eq!(snap.counters[&done], 3);
        assert_eq!(snap.gauges[&Gauge::QueueDepth { worker: 2 }], 4.0);
        assert_eq!(snap.histograms[&Histogram::JobDuration].count, 1);
    }
}
