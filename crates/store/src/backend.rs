//! The things a job needs, as traits: where its files go ([`Blobs`]), where its
//! record and the dedup index live ([`Records`]), how it reaches a worker and comes
//! back after a crash ([`Queue`], worker half [`Consumer`]), how its progress reaches
//! every front ([`Events`]), and which completion webhooks it still owes ([`Outbox`]).
//!
//! The front and the worker are written against these traits only. The embedded
//! implementation ([`crate::embedded`], one uploads directory and the workers'
//! Unix sockets) is today's server; the distributed one (`crate::nats`: JetStream
//! for records, queue and events; `crate::s3`: an S3-compatible object store for
//! blobs) implements the same contracts. `tests/suite/`
//! holds a suite any implementation must pass (`tests/contract.rs` runs it against
//! the embedded backend, `tests/nats_contract.rs` against a real NATS cluster,
//! `tests/s3_contract.rs` against a real S3-compatible server).
//!
//! Each method's documentation says what a crash at each point leaves: that is
//! the contract the "what a 202 promises" guarantees rest on.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use pixpool_model::{JobEvent, JobId, JobSpec};

use crate::outbox::OutboxEntry;
use crate::record::JobRecord;
use crate::StoreError;

/// A record's version, as [`Records`] counts it: compare-and-swap updates name the
/// revision they read. Opaque: only equality means anything.
pub type Revision = u64;

/// A value and the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its revision.
    pub revision: Revision,
}

/// How hard an update must be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage when the call returns: survives power loss.
    Durable,
    /// Atomic (never torn) but possibly undone by power loss, back to the previous
    /// durable revision: for a state a crash rolls back anyway (`processing`).
    Provisional,
}

/// Names one variant of a job: the job, the preset and the encoded format's file
/// extension. Where it lives is the [`Blobs`] implementation's business.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VariantKey {
    /// The job.
    pub id: JobId,
    /// The preset's name (validated by the server: ASCII letters, digits, `-`, `_`).
    pub preset: String,
    /// The format's extension (`jpg`, `webp`, `png`, `gif`).
    pub extension: &'static str,
}

impl VariantKey {
    /// The key of `id`'s variant for `preset` in the format with `extension`.
    pub fn new(id: &JobId, preset: &str, extension: &'static str) -> VariantKey {
        VariantKey {
            id: id.clone(),
            preset: preset.to_string(),
            extension,
        }
    }
}

impl fmt::Display for VariantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}.{}", self.id, self.preset, self.extension)
    }
}

/// Job ids, as a listing yields them (in no particular order).
pub type IdStream = Pin<Box<dyn Stream<Item = Result<JobId, StoreError>> + Send>>;

/// A stored blob the orphan sweep looks at: its key (the implementation's), the job
/// it belongs to, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgedBlob {
    /// The key, as the implementation lists it.
    pub key: String,
    /// The job whose original or variant it is.
    pub job: JobId,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A blob's bytes, in chunks, as they are read.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

/// A blob being read: its length first (for `Content-Length`), then its bytes.
pub struct Blob {
    /// Its size in bytes.
    pub len: u64,
    /// Its content.
    pub body: BlobStream,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob").field("len", &self.len).finish()
    }
}

/// Originals and variants.
///
/// Keys are the implementation's: [`Blobs::put_original`] and [`Blobs::put_variant`]
/// return the key a record keeps (`SourceRecord::path`, `OutputRecord::path`), and the
/// record is the only place a key is written down.
#[async_trait::async_trait]
pub trait Blobs: Send + Sync + fmt::Debug {
    /// Makes the fully received upload spooled at `spool` (a local file, from
    /// [`crate::Store::part_path`]) job `id`'s original, in a format with file
    /// extension `extension`; returns its key. The spool file is consumed.
    ///
    /// Durable when it returns. A crash before then leaves either the spool file (the
    /// front's recovery removes it) or an original no record names (removed by the
    /// orphan sweep): never a record naming a missing original.
    async fn put_original(
        &self,
        id: &JobId,
        extension: &'static str,
        spool: &std::path::Path,
    ) -> Result<String, StoreError>;

    /// The whole original under `key` (the decoder needs all of it at once).
    async fn get_original(&self, key: &str) -> Result<Vec<u8>, StoreError>;

    /// Removes the original under `key`; a missing one is not an error.
    async fn delete_original(&self, key: &str) -> Result<(), StoreError>;

    /// Stores a variant; returns its key. Readers see all of it or nothing, at once;
    /// it is durable only after [`Blobs::sync_variants`] (a crash before may lose it,
    /// never tear it). Storing the same key again replaces it.
    async fn put_variant(&self, key: &VariantKey, data: Bytes) -> Result<String, StoreError>;

    /// Makes the variants stored under `keys` durable (one flush for a job's variants).
    async fn sync_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError>;

    /// A stored variant, streamed; `None` when there is none.
    async fn get_variant(&self, key: &VariantKey) -> Result<Option<Blob>, StoreError>;

    /// Removes variants; missing ones are not an error.
    async fn delete_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError>;

    /// Up to `limit` originals and variants last written more than `age` ago, in key
    /// order after `after` (a cursor: the last key of the previous page), each with its
    /// job: what the orphan sweep checks against the records, a page at a time.
    async fn aged(
        &self,
        age: Duration,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgedBlob>, StoreError>;

    /// Removes a blob [`Blobs::aged`] listed; a missing one is not an error.
    async fn delete_aged(&self, blob: &AgedBlob) -> Result<(), StoreError>;

    /// Whether the storage answers now; the error says why not. Asked every few
    /// seconds for `/readyz`, so it is one cheap request at most.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Job records and the dedup index.
///
/// Every change of a record is a compare-and-swap on the revision its writer read, so a
/// worker presumed dead that comes back cannot overwrite a newer state.
#[async_trait::async_trait]
pub trait Records: Send + Sync + fmt::Debug {
    /// Writes a new record, durably; [`StoreError::Conflict`] if the job exists.
    /// A crash before it returns leaves no record or the whole record, never a torn one.
    async fn create(&self, record: &JobRecord) -> Result<Revision, StoreError>;

    /// The record of `id` and its revision; `None` when there is no such job.
    async fn get(&self, id: &JobId) -> Result<Option<Versioned<JobRecord>>, StoreError>;

    /// Replaces the record of `record.id` if its revision is still `expected`;
    /// otherwise [`StoreError::Conflict`] and nothing changes. Returns the new revision.
    /// A crash leaves the old record or the new, whole (with [`Durability::Provisional`],
    /// power loss may bring back the previous durable one).
    async fn update(
        &self,
        record: &JobRecord,
        expected: Revision,
        durability: Durability,
    ) -> Result<Revision, StoreError>;

    /// Removes the record of `id`; a missing one is not an error.
    async fn delete(&self, id: &JobId) -> Result<(), StoreError>;

    /// The id of every job with a record, streamed (a store of millions is never held
    /// in memory at once). A job created or removed meanwhile may or may not be in it.
    fn ids(&self) -> IdStream;

    /// Takes dedup entry `key` for job `id` if nobody holds it (create-if-absent, atomic
    /// across every front); otherwise returns the holder. It need not be durable: an
    /// entry lost in a crash costs an identical upload its dedup, never a job.
    async fn dedup_claim(&self, key: &str, id: &JobId) -> Result<Option<JobId>, StoreError>;

    /// Removes dedup entry `key` if, and only if, job `id` holds it.
    async fn dedup_release(&self, key: &str, id: &JobId) -> Result<(), StoreError>;

    /// Whether the records answer now; the error says why not. Asked every few
    /// seconds for `/readyz`, so it is one cheap request at most.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A worker's answer to [`Queue::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// Which worker took it (for logs).
    pub worker: u32,
    /// Jobs waiting on that worker, this one included.
    pub queue_depth: u32,
}

/// Why [`Queue::enqueue`] did not place a job.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// Every worker's queue is full (or no worker is connected): retry shortly.
    #[error("every image worker is busy; retry shortly")]
    AllBusy,
    /// The queue could not make the job durable.
    #[error("the queue could not take the job: {0}")]
    Failed(String),
}

/// The front's half of the job queue: hands a job to the workers.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + fmt::Debug {
    /// Places `job`. `Ok` means the job is durably queued: whatever crashes from now
    /// on, some worker runs it (the 202 rests on this). `Err`: it was not queued, and
    /// the caller undoes what it recorded.
    async fn enqueue(&self, job: &JobSpec) -> Result<Enqueued, EnqueueError>;

    /// Whether job `id` is durably queued or running (acknowledged by the queue and not
    /// yet acked by a worker): an upload identical to it may wait for it.
    async fn is_queued(&self, id: &JobId) -> Result<bool, StoreError>;

    /// Whether the queue takes jobs now; the error says why not. Asked every few
    /// seconds for `/readyz`, so it is one cheap request at most.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One job handed to a worker by its [`Consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The job.
    pub id: JobId,
    /// Presets from the enqueue; `None` when redelivered after a crash (read them
    /// from the record).
    pub presets: Option<Vec<String>>,
    /// The implementation's handle on this delivery (embedded: the slot whose claim
    /// directory holds the job).
    pub owner: u32,
    /// Server-side failures of this job in this process so far (they space and bound
    /// its retries; in memory only: a full disk may not let the record count them).
    /// NATS: the job's earlier deliveries, counted by the server across workers.
    pub retries: u32,
    /// Taken from a busy sibling's queue (embedded) rather than handed to this worker.
    pub stolen: bool,
    /// Which delivered message this is, for the consumer that handed it out (NATS: the
    /// key of the message to ack in the consumer's table; embedded: always 0).
    pub token: u64,
}

/// The worker's half of the job queue.
///
/// A delivered job stays the consumer's until [`Consumer::ack`]: if the process dies
/// first, the job is delivered again (to its successor, or to another worker) — at
/// least once, never lost. Work must therefore be idempotent, which variant keys are.
#[async_trait::async_trait]
pub trait Consumer: Send + Sync + fmt::Debug {
    /// The next job for this worker, waiting while there is none; `None` once
    /// [`Consumer::close`] has been called. Cancel-safe: a caller may stop waiting
    /// (drop the future in a `select!`) without a job being lost.
    async fn next(&self) -> Option<Delivery>;

    /// Takes `delivery` into this worker's hands before running it. `Ok(false)`: another
    /// worker has it (a sibling took it meanwhile): skip it without acking.
    async fn start(&self, delivery: &Delivery) -> Result<bool, StoreError>;

    /// The job reached a final state (its record says so): it is never delivered again.
    /// A crash before this returns delivers it again, which finds it final.
    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError>;

    /// Delivers the job again after `wait` (a server-side failure, retried); resolves
    /// once it is queued again, so callers spawn it. The job stays this consumer's
    /// meanwhile: a crash before then delivers it again too.
    async fn retry(&self, delivery: Delivery, wait: Duration);

    /// Lets go of `delivery` without telling the queue anything: its record shows that
    /// another worker owns the job now (this one was presumed dead), so neither an ack
    /// nor a retry of this copy is this worker's to send.
    fn abandon(&self, delivery: &Delivery) {
        let _ = delivery;
    }

    /// Jobs waiting for this worker (for heartbeats and metrics).
    fn waiting(&self) -> usize;

    /// Stops [`Consumer::next`] from handing out more jobs; those waiting stay queued
    /// for the next consumer.
    fn close(&self);
}

/// A stream of job events, as a subscriber receives them.
pub type EventStream = Pin<Box<dyn Stream<Item = EventItem> + Send>>;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    /// An event.
    Event(JobEvent),
    /// Events were lost (a slow subscriber, a reconnection): re-read the records.
    Gap,
}

/// Progress of jobs, fanned out to every front.
///
/// Delivery is best effort and ordered per job: an event may be lost (a subscriber is
/// then told [`EventItem::Gap`]), never reordered for one job; the record is the truth,
/// and a final event is published only once the record is final.
pub trait Events: Send + Sync + fmt::Debug {
    /// Publishes `event` to every subscriber, on any front; never blocks.
    fn publish(&self, event: JobEvent);

    /// Every event published from now on.
    fn subscribe(&self) -> EventStream;
}

/// The webhook outbox ([`crate::outbox`]): entries keyed by [`OutboxEntry::key`].
///
/// Written by workers (before a job's final record), read and changed by the
/// courier. Every change but [`Outbox::put`] is a compare-and-swap on the revision
/// read, so couriers on several hosts never both hold one entry.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync + fmt::Debug {
    /// Writes `entry`, replacing one of the same key; durable when it returns.
    async fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError>;

    /// The entry under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Versioned<OutboxEntry>>, StoreError>;

    /// The keys of every entry, in no particular order.
    async fn keys(&self) -> Result<Vec<String>, StoreError>;

    /// Replaces the entry if its revision is still `expected`; otherwise
    /// [`StoreError::Conflict`] (or it is gone). Returns the new revision.
    async fn update(&self, entry: &OutboxEntry, expected: Revision)
        -> Result<Revision, StoreError>;

    /// Removes the entry under `key` if its revision is still `expected`; a missing one,
    /// or one replaced since (a newer event owed), is left as it is, without an error.
    async fn remove(&self, key: &str, expected: Revision) -> Result<(), StoreError>;
}
