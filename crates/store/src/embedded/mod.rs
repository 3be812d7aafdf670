//! The embedded backend: everything under one uploads directory, jobs handed to the
//! workers over their Unix sockets. What `cargo run --release` runs, with no external
//! service.
//!
//! - [`FileRecords`]: one JSON file per job (`jobs/<id>.json`), compare-and-swap under
//!   an `flock` of the record; the dedup index as symbolic links (`dedup/<key>`).
//! - [`FileBlobs`]: originals in `raw/`, variants in `processed/`, each appearing whole
//!   by a rename.
//! - [`ClaimQueue`]: the worker's half of the queue — a durable claim per job
//!   (`claims/<slot>/<id>`), a bounded in-memory FIFO, help for busy siblings. The
//!   front's half is its dispatcher (round-robin over the workers' sockets).
//! - [`Bus`]: job events within one process; the sockets carry them between processes.
//! - [`FileOutbox`]: the webhook outbox, one file per owed delivery (`outbox/<key>.json`).
//! - [`accept`]: the durable sequence that makes an upload a job.

mod accept;
mod blobs;
mod bus;
mod outbox;
mod queue;
mod records;

pub use accept::{accept, recover, Admitted, Upload};
pub use blobs::FileBlobs;
pub use bus::Bus;
pub use outbox::FileOutbox;
pub use queue::{AdmitError, ClaimQueue};
pub use records::FileRecords;

use crate::StoreError;

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
