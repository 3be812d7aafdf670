//! The retention sweep (`--retain`): jobs finished longer ago than the retention are
//! removed as `DELETE /jobs/<id>` removes them, and what crashes leave in the uploads
//! directory is removed once it is old enough that nothing is still writing it.
//!
//! Incremental: the records are listed as a stream and handled a few at a time with a
//! pause between batches, from the sweeper's own process, so the API never waits on a
//! sweep however many jobs there are.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use pixpool_model::JobId;
use tracing::{debug, warn};

use crate::backend::{Blobs, Records};
use crate::remove::{remove_job, JobParts};
use crate::{JobRecord, Store};

/// How a sweep paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Records looked at between two pauses.
    pub batch: usize,
    /// The pause.
    pub pause: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            batch: 64,
            pause: Duration::from_millis(20),
        }
    }
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Jobs past the retention.
    pub jobs: u64,
    /// Files no job names (temp files, spooled uploads, originals, variants, dedup
    /// entries).
    pub orphans: u64,
    /// Bytes given back.
    pub bytes: u64,
}

impl std::ops::AddAssign for Reclaimed {
    fn add_assign(&mut self, other: Reclaimed) {
        self.jobs += other.jobs;
        self.orphans += other.orphans;
        self.bytes += other.bytes;
    }
}

/// Whether `record` finished more than `retain` before `now`.
pub fn expired(record: &JobRecord, retain: Duration, now: SystemTime) -> bool {
    if !record.state.is_final() {
        return false;
    }
    let Some(finished) = record
        .finished_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    else {
        return false;
    };
    now.duration_since(finished).is_ok_and(|age| age > retain)
}

/// Removes every job that finished more than `retain` ago.
pub async fn sweep_expired(parts: JobParts<'_>, retain: Duration, pace: Pace) -> Reclaimed {
    let mut reclaimed = Reclaimed::default();
    let mut ids = parts.records.ids();
    let mut seen = 0usize;
    while let Some(id) = ids.next().await {
        seen += 1;
        if seen.is_multiple_of(pace.batch.max(1)) {
            tokio::time::sleep(pace.pause).await;
        }
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                warn!(cause = %e, "could not list the job records; the sweep stops here");
                break;
            }
        };
        let record = match parts.records.get(&id).await {
            Ok(Some(read)) => read.value,
            Ok(None) => continue,
            Err(e) => {
                debug!(job = %id, cause = %e, "unreadable record skipped by the sweep");
                continue;
            }
        };
        if !expired(&record, retain, SystemTime::now()) {
            continue;
        }
        match remove_job(parts, &record).await {
            Ok(removed) => {
                reclaimed.jobs += 1;
                reclaimed.bytes += removed.bytes;
            }
            Err(e) => warn!(job = %id, cause = %e, "could not remove an expired job"),
        }
    }
    reclaimed
}

/// A file of the uploads directory the sweep may remove, and the job it belongs to
/// (`None`: a temp file, removed for its age alone).
struct Candidate {
    path: PathBuf,
    job: Option<JobId>,
    bytes: u64,
}

/// Originals and variants looked at per sweep (the next sweep goes on from there).
pub const BLOBS_PER_SWEEP: usize = 2000;

/// Removes originals and variants older than `age` whose job has no record, a page of
/// [`BLOBS_PER_SWEEP`] after `cursor` (moved on; back to the start after the last
/// page), paced as `pace` says: the uploads directory's or the bucket's alike.
pub async fn sweep_blobs(
    blobs: &dyn Blobs,
    records: &dyn Records,
    age: Duration,
    cursor: &mut Option<String>,
    pace: Pace,
) -> Reclaimed {
    let page = match blobs.aged(age, cursor.as_deref(), BLOBS_PER_SWEEP).await {
        Ok(page) => page,
        Err(e) => {
            warn!(cause = %e, "could not list the stored blobs for orphans");
            return Reclaimed::default();
        }
    };
    *cursor = match page.last() {
        Some(last) if page.len() >= BLOBS_PER_SWEEP => Some(last.key.clone()),
        _ => None,
    };
    let mut reclaimed = Reclaimed::default();
    for (n, blob) in page.iter().enumerate() {
        if (n + 1).is_multiple_of(pace.batch.max(1)) {
            tokio::time::sleep(pace.pause).await;
        }
        // Only a record known to be absent makes a blob an orphan.
        if !matches!(records.get(&blob.job).await, Ok(None)) {
            continue;
        }
        match blobs.delete_aged(blob).await {
            Ok(()) => {
                reclaimed.orphans += 1;
                reclaimed.bytes += blob.bytes;
                debug!(key = %blob.key, "orphaned blob removed");
            }
            Err(e) => warn!(key = %blob.key, cause = %e, "could not remove an orphaned blob"),
        }
    }
    reclaimed
}

/// Removes, in the uploads directory of `store`, what no running process writes any
/// more and no job names, once older than `age`: temp files of interrupted writes,
/// uploads spooled by a front that died, and dedup entries whose job has no record
/// (`records` decides, so that it works in either mode). Originals and variants are
/// [`sweep_blobs`]'s.
pub async fn sweep_orphans(store: &Store, records: &dyn Records, age: Duration) -> Reclaimed {
    let listing = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || candidates(&store, age)).await
    };
    let candidates = match listing {
        Ok(c) => c,
        Err(e) => {
            warn!(cause = %e, "could not list the uploads directory for orphans");
            return Reclaimed::default();
        }
    };
    let mut reclaimed = Reclaimed::default();
    for candidate in candidates {
        if let Some(id) = &candidate.job {
            // Only a record known to be absent makes a file an orphan.
            if !matches!(records.get(id).await, Ok(None)) {
                continue;
            }
        }
        match fs::remove_file(&candidate.path) {
            Ok(()) => {
                reclaimed.orphans += 1;
                reclaimed.bytes += candidate.bytes;
                debug!(path = %candidate.path.display(), "orphan removed");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %candidate.path.display(), cause = %e, "could not remove an orphan")
            }
        }
    }
    reclaimed
}

/// The files old enough to be looked at (see [`sweep_orphans`]).
fn candidates(store: &Store, age: Duration) -> Vec<Candidate> {
    let now = SystemTime::now();
    let old = |meta: &fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|a| a > age)
    };
    let mut out = Vec::new();
    let mut visit = |dir: &Path, job_of: &dyn Fn(&str) -> Option<Option<JobId>>| {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // `symlink_metadata`: a dedup entry is a link whose target is no file.
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() || !old(&meta) {
                continue;
            }
            let temp = name.starts_with('.') && name.ends_with(".tmp");
            let job = if temp { Some(None) } else { job_of(name) };
            if let Some(job) = job {
                out.push(Candidate {
                    path: entry.path(),
                    job,
                    bytes: meta.len(),
                });
            }
        }
    };
    // Originals, variants, records and outbox entries: only their temp files here.
    visit(&store.raw_dir(), &|_| None);
    visit(&store.processed_dir(), &|_| None);
    visit(&store.jobs_dir(), &|_| None);
    visit(&store.outbox_dir(), &|_| None);
    // Dedup entries: links naming a job.
    let dedup = store.root().join("dedup");
    visit(&dedup, &|name| {
        fs::read_link(dedup.join(name))
            .ok()
            .and_then(|t| t.to_str().and_then(JobId::parse))
            .map(Some)
    });
    // Uploads a front was streaming when it died (`.part`; a `.pending` marker is the
    // front's journal, finished by its recovery).
    if let Ok(spools) = fs::read_dir(store.tmp_dir()) {
        for spool in spools.flatten() {
            visit(&spool.path(), &|name| {
                name.ends_with(".part").then_some(None)
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SourceRecord;
    use pixpool_model::JobState;

    fn record(state: JobState, finished_at: Option<&str>) -> JobRecord {
        let mut rec = JobRecord::queued(
            JobId::generate(),
            SourceRecord {
                path: "raw/x.jpg".into(),
                format: "jpeg".into(),
                bytes: 1,
            },
            vec!["thumb".into()],
        );
        rec.state = state;
        rec.finished_at = finished_at.map(str::to_string);
        rec
    }

    #[test]
    fn only_jobs_finished_longer_ago_than_the_retention_expire() {
        let now = humantime::parse_rfc3339("2026-12-04T12:00:00Z").expect("time");
        let day = Duration::from_secs(86_400);
        let old = Some("2026-12-02T12:00:00.000Z");
        let recent = Some("2026-12-04T11:00:00.000Z");
        assert!(expired(&record(JobState::Done, old), day, now));
        assert!(expired(&record(JobState::Failed, old), day, now));
        assert!(!expired(&record(JobState::Done, recent), day, now));
        // Not final, whatever its dates say: a job is never swept from under a worker.
        assert!(!expired(&record(JobState::Processing, old), day, now));
        assert!(!expired(&record(JobState::Queued, old), day, now));
        assert!(!expired(&record(JobState::Done, None), day, now));
        assert!(!expired(
            &record(JobState::Done, Some("yesterday")),
            day,
            now
        ));
    }
}
