//! pixpool's metrics: every series the server records, typed, and the one
//! place each becomes Prometheus text.
//!
//! Each process creates one [`Recorder`] at start-up and hands clones of it to
//! whatever records (the front's and the worker's configuration, the
//! supervisor's loop); once a second it sends the recorder's [`Snapshot`] to
//! the admin process, framed by `pixpool-protocol`'s codec. The admin process
//! adds the snapshots up and writes them out with an [`Exposition`].
//!
//! # Layout
//! - [`series`]: the metric [`Family`]s (name, type, help, label names) and the
//!   typed series: [`Counter`], [`Gauge`], [`Histogram`].
//! - [`snapshot`]: what a process has recorded, as it crosses to the admin.
//! - [`recorder`]: the per-process handle that records.
//! - [`text`]: the Prometheus text exposition.
//!
//! No async runtime and no I/O: the supervisor links this crate.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod recorder;
pub mod series;
pub mod snapshot;
pub mod text;

pub use recorder::Recorder;
pub use series::{Counter, Family, Gauge, Histogram, JobOutcome, Kind, Label, Series, Stage};
pub use snapshot::{Buckets, Snapshot, DURATION_BUCKETS};
pub use text::Exposition;
