//! Removing a job: what `DELETE /jobs/<id>` and the retention sweep share.
//!
//! The record goes first: from then on no client sees the job, an identical upload
//! makes a new one, and a worker still rendering it finds it gone at its next stage
//! (and removes what it stored). Then the dedup entry (if the job holds it), the
//! variants, the original and the webhooks still owed. Originals are per job, never
//! shared: another job with the same bytes has its own, which this never touches
//! (nothing is ever removed by content hash). A step that fails after the record is
//! gone leaves a file no record names, which the orphan sweep removes.

use pixpool_model::JobState;
use tracing::warn;

use crate::backend::{Blobs, Outbox, Records, VariantKey};
use crate::outbox::{entry_key, Destination};
use crate::{JobRecord, StoreError};

/// The extensions a variant may have: those of `pixpool-imaging`'s output formats
/// (the worker's tests hold the two lists equal).
pub const VARIANT_EXTENSIONS: [&str; 4] = ["jpg", "png", "webp", "avif"];

/// The parts a removal touches.
#[derive(Debug, Clone, Copy)]
pub struct JobParts<'a> {
    /// Records and the dedup index.
    pub records: &'a dyn Records,
    /// Originals and variants.
    pub blobs: &'a dyn Blobs,
    /// Webhooks owed; `None` where none can be (no destination configured).
    pub outbox: Option<&'a dyn Outbox>,
}

/// What a removal gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Bytes of the original and the variants the record listed.
    pub bytes: u64,
}

/// Removes `record`'s job and everything that names it (see the module
/// documentation). `Err` only when the record itself could not be removed: the job
/// is then still there, whole, and the removal may be tried again.
pub async fn remove_job(parts: JobParts<'_>, record: &JobRecord) -> Result<Removed, StoreError> {
    let id = &record.id;
    parts.records.delete(id).await?;
    if let Some(key) = &record.dedup_key {
        if let Err(e) = parts.records.dedup_release(key, id).await {
            warn!(job = %id, cause = %e, "could not release the dedup entry of a removed job");
        }
    }
    if let Err(e) = parts.blobs.delete_variants(&variant_keys(record)).await {
        warn!(job = %id, cause = %e, "could not remove the variants of a removed job");
    }
    if let Err(e) = parts.blobs.delete_original(&record.source.path).await {
        warn!(job = %id, cause = %e, "could not remove the original of a removed job");
    }
    if let Some(outbox) = parts.outbox {
        for state in [JobState::Done, JobState::Failed] {
            for destination in [Destination::Operator, Destination::Callback] {
                let key = entry_key(id, state, destination);
                let removed = match outbox.get(&key).await {
                    Ok(Some(entry)) => outbox.remove(&key, entry.revision).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = removed {
                    warn!(job = %id, cause = %e, "could not remove a webhook owed by a removed job");
                }
            }
        }
    }
    let outputs: u64 = record.outputs.iter().map(|o| o.bytes).sum();
    Ok(Removed {
        bytes: record.source.bytes + outputs,
    })
}

/// Every variant the job can have stored: each preset it names in each output format
/// (a job removed mid-render has variants its record does not list yet).
pub fn variant_keys(record: &JobRecord) -> Vec<VariantKey> {
    record
        .presets
        .iter()
        .flat_map(|preset| {
            VARIANT_EXTENSIONS
                .iter()
                .map(move |ext| VariantKey::new(&record.id, preset, ext))
        })
        .collect()
}
