//! What one process has recorded, as it is sent to the admin process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::series::{Counter, Gauge, Histogram, Label};

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The observations of one histogram series, over [`DURATION_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// Non-cumulative count per bucket (last: +Inf).
    pub counts: Vec<u64>,
    /// Sum of observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Buckets {
    /// Records one value, in seconds.
    pub fn observe(&mut self, v: f64) {
        if self.counts.len() != DURATION_BUCKETS.len() + 1 {
            self.counts = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds another histogram's observations into this one.
    pub fn merge(&mut self, other: &Buckets) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Everything one process has recorded: cumulative since it started, so a
/// lost datagram costs nothing, and told apart from its successor by `pid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The process's role (`supervisor`, `front`, `worker`, `admin`).
    pub role: Label,
    /// Its slot among the processes of its role.
    pub slot: u32,
    /// Its pid.
    pub pid: u32,
    /// Counters.
    pub counters: BTreeMap<Counter, u64>,
    /// Gauges.
    pub gauges: BTreeMap<Gauge, f64>,
    /// Histograms.
    pub histograms: BTreeMap<Histogram, Buckets>,
}

impl Snapshot {
    /// An empty snapshot of the process `role`/`slot`/`pid`.
    pub fn new(role: Label, slot: u32, pid: u32) -> Snapshot {
        Snapshot {
            role,
            slot,
            pid,
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            histograms: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_and_merge() {
        let mut h = Buckets::default();
        for v in [0.0005, 0.02, 0.02, 100.0] {
            h.observe(v);
        }
        assert_eq!(h.count, 4);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[4], 2);
        assert_eq!(*h.counts.last().expect("inf"), 1);
        let mut total = Buckets::default();
        total.merge(&h);
        total.merge(&h);
        assert_eq!(total.count, 8);
        assert!((total.sum - 2.0 * h.sum).abs() < 1e-9);
    }
}
