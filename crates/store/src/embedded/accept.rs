//! The durable sequence that makes a received upload a job, and its undoing.
//!
//! 1. a "pending" marker in the front's spool directory: a front that dies at any
//!    later step is undone by the next one in its slot ([`Store::recover_front`]);
//! 2. the original stored ([`Blobs::put_original`], durable);
//! 3. the record created ([`Records::create`], durable);
//! 4. the caller queues the job, then [`Admitted::confirm`] (marker removed) or
//!    [`Admitted::undo`] (record, original and marker removed): a job never queued
//!    was never answered 202 and leaves nothing.
//!
//! [`recover`] finishes, through the traits, what a front killed mid-sequence left:
//! the distributed backend's counterpart of [`Store::recover_front`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pixpool_model::JobId;

use crate::backend::{Blobs, Queue, Records};
use crate::record::{JobRecord, JobState, SourceRecord};
use crate::{Store, StoreError};

/// A fully received upload, spooled at [`Store::part_path`] of its front.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The job id the server gave it.
    pub id: JobId,
    /// The sniffed format's name (`jpeg`, …).
    pub format: &'static str,
    /// The sniffed format's file extension (`jpg`, …).
    pub extension: &'static str,
    /// Its size as received.
    pub bytes: u64,
    /// BLAKE3 of its bytes, hex.
    pub content_hash: String,
    /// The presets asked for.
    pub presets: Vec<String>,
    /// The dedup entry the upload holds, if any.
    pub dedup_key: Option<String>,
    /// The upload's own completion webhook, checked by the front.
    pub callback_url: Option<String>,
}

/// An upload made a job: original and record durable, not yet queued.
#[derive(Debug)]
pub struct Admitted {
    record: JobRecord,
    marker: PathBuf,
    blobs: Arc<dyn Blobs>,
    records: Arc<dyn Records>,
}

/// Runs steps 1–3 for `upload` on front `front`. On error nothing of it is left but the
/// spool file, which the caller removes.
pub async fn accept(
    store: &Store,
    blobs: &Arc<dyn Blobs>,
    records: &Arc<dyn Records>,
    front: u32,
    upload: Upload,
) -> Result<Admitted, StoreError> {
    let id = upload.id.clone();
    let marker = store.pending_path(front, &id);
    make_marker(&store.part_path(front, &id), &marker).await?;
    let key = match blobs
        .put_original(&id, upload.extension, &store.part_path(front, &id))
        .await
    {
        Ok(key) => key,
        Err(e) => {
            remove_marker(&marker).await;
            return Err(e);
        }
    };
    let mut record = JobRecord::queued(
        id,
        SourceRecord {
            path: key,
            format: upload.format.to_string(),
            bytes: upload.bytes,
        },
        upload.presets,
    );
    record.content_hash = Some(upload.content_hash);
    record.dedup_key = upload.dedup_key;
    record.callback_url = upload.callback_url;
    let admitted = Admitted {
        record,
        marker,
        blobs: blobs.clone(),
        records: records.clone(),
    };
    if let Err(e) = records.create(&admitted.record).await {
        // Not `undo`: a conflict means the record is someone else's.
        let _ = admitted
            .blobs
            .delete_original(&admitted.record.source.path)
            .await;
        remove_marker(&admitted.marker).await;
        return Err(e);
    }
    Ok(admitted)
}

/// The marker is a second name of the spool file rather than a file of its own: no inode
/// is allocated for it, and none freed when it (renamed into the worker's claim) goes,
/// which on ext4 makes every later file creation cheaper. A file system without hard
/// links gets an empty file.
async fn make_marker(part: &Path, marker: &Path) -> Result<(), StoreError> {
    let linked = match tokio::fs::hard_link(part, marker).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A marker left by a run that died: ours replaces it.
            tokio::fs::remove_file(marker).await.ok();
            tokio::fs::hard_link(part, marker).await
        }
        Err(e) => Err(e),
    };
    if linked.is_ok() {
        return Ok(());
    }
    tokio::fs::File::create(marker)
        .await
        .map(drop)
        .map_err(|source| StoreError::Journal {
            path: marker.to_path_buf(),
            source,
        })
}

async fn remove_marker(marker: &PathBuf) {
    match tokio::fs::remove_file(marker).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(cause = %e, marker = %marker.display(), "could not remove a pending marker")
        }
    }
}

impl Admitted {
    /// The job's record as created.
    pub fn record(&self) -> &JobRecord {
        &self.record
    }

    /// The job is queued: from now on it is the queue's to finish.
    pub async fn confirm(self) {
        remove_marker(&self.marker).await;
    }

    /// The job could not be queued: its record and original go (the marker last, so a
    /// crash half-way is finished by the front's recovery).
    pub async fn undo(self) {
        if let Err(e) = self.records.delete(&self.record.id).await {
            tracing::warn!(cause = %e, "could not remove the record of a job never queued");
        }
        if let Err(e) = self.blobs.delete_original(&self.record.source.path).await {
            tracing::warn!(cause = %e, "could not remove the original of a job never queued");
        }
        remove_marker(&self.marker).await;
    }
}

/// Undoes what a front that died in slot `front` left in its spool directory, asking
/// the backend rather than the local files: partial uploads go; a pending marker whose
/// job is recorded `queued` but not in the queue was never answered 202, and its
/// record, original and dedup entry go too. A marker whose job the queue has (or that
/// is past `queued`) is the queue's: only the marker goes. One the backend cannot
/// answer for now stays, for the next start. Returns (partial uploads, jobs undone).
///
/// A front that died between storing the original and recording the job leaves an
/// original no record names; only the orphan sweep can find it.
pub async fn recover(
    store: &Store,
    front: u32,
    records: &dyn Records,
    blobs: &dyn Blobs,
    queue: &dyn Queue,
) -> Result<(usize, usize), StoreError> {
    let dir = store.spool_dir(front);
    let listed = {
        let dir = dir.clone();
        super::blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
            let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
            Ok(entries
                .flatten()
                .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                .collect::<Vec<_>>())
        })
        .await?
    };
    let (mut parts, mut jobs) = (0, 0);
    for (path, name) in listed {
        if let Some(id) = name.strip_suffix(".pending").and_then(JobId::parse) {
            match undo_unqueued(&id, records, blobs, queue).await {
                Ok(undone) => jobs += usize::from(undone),
                Err(e) => {
                    tracing::warn!(cause = %e, job_id = %id, "cannot tell yet whether an interrupted upload was queued; leaving it for the next start");
                    continue;
                }
            }
        } else {
            parts += 1;
        }
        remove_marker(&path).await;
    }
    Ok((parts, jobs))
}

/// Removes job `id` if it is recorded `queued` but the queue does not have it.
async fn undo_unqueued(
    id: &JobId,
    records: &dyn Records,
    blobs: &dyn Blobs,
    queue: &dyn Queue,
) -> Result<bool, StoreError> {
    let Some(found) = records.get(id).await? else {
        return Ok(false);
    };
    let rec = found.value;
    if rec.state != JobState::Queued || queue.is_queued(id).await? {
        return Ok(false);
    }
    records.delete(id).await?;
    blobs.delete_original(&rec.source.path).await?;
    if let Some(key) = &rec.dedup_key {
        records.dedup_release(key, id).await?;
    }
    Ok(true)
}
