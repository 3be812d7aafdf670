//! Process metrics: each process records into its own [`Metrics`] and sends a
//! cumulative [`Snapshot`] to the admin process every second (one datagram,
//! framed by [`crate::frame`]); the admin process adds them up and serves
//! Prometheus text. Counters are cumulative per process, so a lost datagram
//! costs nothing and a restarted process is told apart by its pid.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram with [`DURATION_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Non-cumulative count per bucket (last: +Inf).
    pub buckets: Vec<u64>,
    /// Sum of observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        if self.buckets.len() != DURATION_BUCKETS.len() + 1 {
            self.buckets = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds another histogram into this one.
    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Everything one process has recorded. Series are keyed by their full
/// Prometheus name with labels, e.g. `pixpool_http_requests_total{route="upload",code="202"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The process's role (`front`, `worker`, `supervisor`).
    pub role: String,
    /// Its slot.
    pub slot: u32,
    /// Its pid.
    pub pid: u32,
    /// Monotonic counters.
    pub counters: BTreeMap<String, u64>,
    /// Current values.
    pub gauges: BTreeMap<String, f64>,
    /// Distributions.
    pub histograms: BTreeMap<String, Histogram>,
}

/// The process-wide recorder.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Snapshot>,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// This process's recorder.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        // A panic mid-update cannot corrupt a map of numbers beyond one value.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Names the process (done once at start).
    pub fn identify(&self, role: &str, slot: u32) {
        self.with(|s| {
            s.role = role.to_string();
            s.slot = slot;
            s.pid = std::process::id();
        })
    }

    /// Adds `n` to a counter.
    pub fn add(&self, series: &str, n: u64) {
        self.with(|s| *s.counters.entry(series.to_string()).or_default() += n)
    }

    /// Sets a gauge.
    pub fn set(&self, series: &str, v: f64) {
        self.with(|s| {
            s.gauges.insert(series.to_string(), v);
        })
    }

    /// Records a duration in seconds.
    pub fn observe(&self, series: &str, secs: f64) {
        self.with(|s| {
            s.histograms
                .entry(series.to_string())
                .or_default()
                .observe(secs)
        })
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::default();
        self.with(|s| out = s.clone());
        out
    }
}

/// Escapes a label value for the Prometheus text format.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_and_merge() {
        let mut h = Histogram::default();
        for v in [0.0005, 0.02, 0.02, 100.0] {
            h.observe(v);
        }
        assert_eq!(h.count, 4);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[4], 2);
        assert_eq!(*h.buckets.last().expect("inf"), 1);
        let mut total = Histogram::default();
        total.merge(&h);
        total.merge(&h);
        assert_eq!(total.count, 8);
        assert!((total.sum - 2.0 * h.sum).abs() < 1e-9);
    }

    #[test]
    fn snapshots_round_trip_through_the_codec() {
        let m = Metrics::default();
        m.identify("front", 1);
        m.add(
            "pixpool_http_requests_total{route=\"upload\",code=\"202\"}",
            3,
        );
        m.observe("pixpool_job_duration_seconds", 0.2);
        m.set("pixpool_queue_depth{worker=\"0\"}", 4.0);
        let snap = m.snapshot();
        let bytes = crate::frame::encode(&snap).expect("encode");
        let (back, _) = crate::frame::decode::<Snapshot>(&bytes)
            .expect("decode")
            .expect("whole");
        assert_eq!(back, snap);
    }
}
