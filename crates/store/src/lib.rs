//! The pixpool job store: the traits a job's storage is reached through
//! ([`backend`]: `Blobs`, `Records`, `Queue`, `Events`, with their crash contracts),
//! and the embedded implementation, where everything the server keeps lives under one
//! uploads directory, so two servers with different `--uploads` never interfere. No
//! other crate builds a path under that directory.
//!
//! # Layout
//! ```text
//! uploads/
//!   tmp/<front>/<id>.part  uploads being streamed by front slot <front> (removed on failure)
//!   tmp/<front>/<id>.pending  a job recorded but not yet acknowledged by a worker
//!                          (a hard link to the upload: no inode of its own)
//!   dedup/<key>            content hash + preset set: a symbolic link to the job id
//!   raw/<id>.<ext>         originals, fsynced before the job exists
//!   processed/<id>-<preset>.<ext>   outputs, written to a temp file then renamed
//!   jobs/<id>.json         the job record (temp file + fsync + rename + dir fsync);
//!                          changed by swapping in a process's fsynced spare file
//!                          (`RENAME_EXCHANGE`; spares are `.spare.<pid>.<n>.tmp`)
//!   claims/<slot>/<id>     a worker's durable claim: "this job is mine and not done"
//!                          (the front's pending marker, renamed)
//!   claims/<slot>/<id>.running  the same claim once the job is in the worker's hands
//!   outbox/<key>.json      a webhook delivery still owed (written before the final record)
//!   run/                   mode 0700: the workers' Unix sockets
//! ```
//!
//! # Modules
//! - [`backend`]: the five traits and their contracts.
//! - `embedded` (feature `runtime`): their implementation over this layout, the accept
//!   sequence and the worker's claim queue.
//! - `nats` (feature `runtime`): `Records`, `Queue`, its worker half and `Events` over
//!   NATS JetStream, for several servers sharing one job queue.
//! - `s3` (feature `runtime`): `Blobs` in an S3-compatible object store, for several
//!   servers sharing one set of originals and variants.
//! - [`record`]: the job record, its states and the problem document.
//! - [`view`]: what a client sees of a record (`GET /jobs/<id>`, a webhook's `data`).
//! - [`outbox`]: the webhook deliveries still owed.
//! - [`remove`]: removing a job and everything that names it.
//! - `sweep` (feature `runtime`): the retention sweep and the orphans it removes.
//! - [`fsutil`]: atomic, durable file replacement; directory fsyncs shared by
//!   concurrent writers.
//! - this file: [`Store`], the paths, the dedup index and the claim directories.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
#[cfg(feature = "runtime")]
pub mod embedded;
pub mod fsutil;
#[cfg(feature = "runtime")]
pub mod nats;
pub mod outbox;
pub mod record;
pub mod remove;
#[cfg(feature = "runtime")]
pub mod s3;
#[cfg(feature = "runtime")]
pub mod sweep;
pub mod view;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use backend::{VariantKey, Versioned};
pub use record::{
    JobId, JobRecord, JobState, OutputRecord, Placeholder, Problem, SourceRecord, StageMillis,
    WebhookState, WebhookStatus,
};

/// Failures of the job store, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A directory of the layout could not be created.
    #[error("could not create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A job record could not be written durably.
    #[error("could not write job record {path}")]
    WriteRecord {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A job record could not be read.
    #[error("could not read job record {path}")]
    ReadRecord {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A job record exists but is not valid JSON of the expected shape (torn write).
    #[error("job record {path} is corrupt")]
    CorruptRecord {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The dedup index could not be read or updated.
    #[error("could not update dedup entry {path}")]
    Dedup {
        /// The entry.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A directory of the layout could not be listed.
    #[error("could not list directory {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A directory's permissions could not be read or restricted.
    #[error("could not restrict the permissions of {path}")]
    Permissions {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A compare-and-swap found another revision (or a create found the job): someone
    /// else changed the record since it was read.
    #[error("job {id} changed meanwhile")]
    Conflict {
        /// The job.
        id: JobId,
    },
    /// A blob could not be written, read or removed.
    #[error("could not store {key}")]
    Blob {
        /// The blob's key.
        key: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blob key that this layout never hands out (a record edited by hand, or from
    /// another backend).
    #[error("{key:?} is not a blob key of this store")]
    BadKey {
        /// The key.
        key: String,
    },
    /// A front's journal of jobs being accepted could not be written.
    #[error("could not write the pending marker {path}")]
    Journal {
        /// The marker.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blocking storage task could not run to its end (it panicked).
    #[error("a storage task failed: {0}")]
    Task(String),
    /// A step against the NATS servers failed (the distributed backend): the servers
    /// are unreachable, JetStream refused, or an answer timed out.
    #[error("NATS: could not {step}")]
    Nats {
        /// What was being done ("update job record 0190…").
        step: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step against the S3 object store failed (the distributed backend): the bucket
    /// is missing or refused the credentials, the endpoint is unreachable, or a request
    /// timed out after its bounded retries.
    #[error("S3: could not {step}")]
    S3 {
        /// What was being done ("upload original pixpool/originals/0190….jpg").
        step: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `--store` URL that is not `s3://BUCKET[/PREFIX]`.
    #[error("{url:?} is not a store URL s3://BUCKET[/PREFIX]: {reason}")]
    S3Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A KV entry exists but is not JSON of the expected shape.
    #[error("NATS KV entry {key} is corrupt")]
    CorruptEntry {
        /// The entry's key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A claim marker could not be created, removed or listed.
    #[error("could not update claim {path}")]
    Claim {
        /// The claim file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Whether a shared service (NATS, S3) did not answer or refused for now: the
    /// client may retry shortly (503), unlike a local disk's failure (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Nats { .. } | StoreError::S3 { .. })
    }
}

/// Handle on one uploads directory. Cheap to clone; holds only paths.
#[derive(Debug, Clone)]
pub struct Store {
    /// The uploads directory itself; every other path is below it.
    root: PathBuf,
    /// Where the workers' Unix sockets live (mode 0700). Defaults to `root/run`.
    run_dir: PathBuf,
}

impl Store {
    /// Opens (and creates where missing) the layout under `root`. `run_dir`
    /// overrides where the IPC sockets go (e.g. a systemd `RuntimeDirectory`).
    pub fn open(root: &Path, run_dir: Option<&Path>) -> Result<Store, StoreError> {
        let root = absolute(root);
        let run_dir = run_dir.map(absolute).unwrap_or_else(|| root.join("run"));
        let store = Store { root, run_dir };
        for dir in store.layout_dirs() {
            create_dir(&dir, DIR_MODE)?;
        }
        // A claim fsynced in a directory whose own name is lost in a power cut
        // is lost too. At every process start, so that a `claims/<slot>` that
        // a crashed worker had just made is durable before anything goes in it.
        for dir in [store.root.clone(), store.claims_root()] {
            fsutil::sync_dir(&dir).map_err(|source| StoreError::CreateDir { path: dir, source })?;
        }
        create_dir(&store.run_dir, 0o700)?;
        // An existing run dir may have been created with a looser mode: the sockets
        // in it accept jobs, so only the service's user may enter it.
        fs::set_permissions(&store.run_dir, fs::Permissions::from_mode(0o700)).map_err(
            |source| StoreError::CreateDir {
                path: store.run_dir.clone(),
                source,
            },
        )?;
        Ok(store)
    }

    /// The directories of the layout, root first (the run directory apart:
    /// it has a mode of its own).
    pub fn layout_dirs(&self) -> [PathBuf; 8] {
        [
            self.root.clone(),
            self.tmp_dir(),
            self.raw_dir(),
            self.processed_dir(),
            self.jobs_dir(),
            self.claims_root(),
            self.root.join("dedup"),
            self.outbox_dir(),
        ]
    }

    /// Takes from each existing directory of the layout the permission bits
    /// `umask` withholds from new ones, so a tree made under a looser mask is
    /// private too. Files are left as they are: the directories above them
    /// no longer let anyone else reach them.
    pub fn restrict_dirs(&self, umask: u32) -> Result<(), StoreError> {
        for dir in self.layout_dirs() {
            let err = |source| StoreError::Permissions {
                path: dir.clone(),
                source,
            };
            let mode = fs::metadata(&dir).map_err(err)?.permissions().mode() & 0o7777;
            if mode & umask != 0 {
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode & !umask))
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    /// The uploads directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Where uploads are streamed before they become jobs.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Where originals live.
    pub fn raw_dir(&self) -> PathBuf {
        self.root.join(RAW)
    }
    /// Where outputs live.
    pub fn processed_dir(&self) -> PathBuf {
        self.root.join(PROCESSED)
    }
    /// Where job records live.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }
    /// Where webhook deliveries still owed wait ([`crate::outbox`]).
    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }
    /// The runtime directory holding the IPC sockets.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
    /// The Unix socket of worker `slot`.
    pub fn worker_socket(&self, slot: u32) -> PathBuf {
        self.run_dir.join(format!("worker-{slot}.sock"))
    }
    /// The record file of a job.
    pub fn record_path(&self, id: &JobId) -> PathBuf {
        self.jobs_dir().join(format!("{id}.json"))
    }
    /// The spool directory of front `slot`: only that front's process writes here.
    pub fn spool_dir(&self, front: u32) -> PathBuf {
        self.tmp_dir().join(front.to_string())
    }
    /// The streaming temp file of an upload on front `front`.
    pub fn part_path(&self, front: u32, id: &JobId) -> PathBuf {
        self.spool_dir(front).join(format!("{id}.part"))
    }
    /// The marker of a job recorded by front `front` and not yet acknowledged.
    pub fn pending_path(&self, front: u32, id: &JobId) -> PathBuf {
        self.spool_dir(front).join(format!("{id}.pending"))
    }
    /// The dedup index entry for `key`.
    pub fn dedup_path(&self, key: &str) -> PathBuf {
        self.root.join("dedup").join(key)
    }
    /// The key (path relative to the uploads directory) of job `id`'s original.
    pub fn original_key(id: &JobId, extension: &str) -> String {
        format!("{RAW}/{id}.{extension}")
    }
    /// The key of a variant.
    pub fn variant_key(key: &VariantKey) -> String {
        format!("{PROCESSED}/{key}")
    }
    /// Where a variant lives.
    pub fn output_path(&self, key: &VariantKey) -> PathBuf {
        self.processed_dir().join(key.to_string())
    }
    /// The file a blob key names: only `raw/<name>` and `processed/<name>`, a plain
    /// name, are keys of this layout (a record must not lead a reader anywhere else).
    pub fn key_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let plain = |name: &str| {
            !name.is_empty()
                && !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match key.split_once('/') {
            Some((dir @ (RAW | PROCESSED), name)) if plain(name) => {
                Ok(self.root.join(dir).join(name))
            }
            _ => Err(StoreError::BadKey {
                key: key.to_string(),
            }),
        }
    }
    /// The claim directory of worker `slot`.
    pub fn claim_dir(&self, slot: u32) -> PathBuf {
        self.root.join("claims").join(slot.to_string())
    }

    /// Bytes available to this (unprivileged) process on the uploads file system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(std::io::Error::from)?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let (avail, frag) = (
            u64::from(st.blocks_available()),
            u64::from(st.fragment_size()),
        );
        Ok(avail.saturating_mul(frag))
    }

    /// Writes `record` durably (temp file, fsync, rename, directory fsync), at revision 0:
    /// for tools and tests; servers go through [`Records`](backend::Records).
    pub fn write_record(&self, record: &JobRecord) -> Result<(), StoreError> {
        let path = self.record_path(&record.id);
        let bytes = record::encode(record, 0).map_err(|e| StoreError::WriteRecord {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        fsutil::replace_durably(&path, &bytes)
            .map_err(|source| StoreError::WriteRecord { path, source })
    }

    /// Replaces the existing record with `record` at `revision` (no compare: the caller
    /// holds the record's lock); a record deleted meanwhile is a conflict.
    #[cfg(feature = "runtime")]
    pub(crate) fn write_record_at(
        &self,
        record: &JobRecord,
        revision: backend::Revision,
        durability: backend::Durability,
    ) -> Result<(), StoreError> {
        let path = self.record_path(&record.id);
        let bytes = record::encode(record, revision).map_err(|e| StoreError::WriteRecord {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let durable = matches!(durability, backend::Durability::Durable);
        match fsutil::replace_existing(&path, &bytes, durable) {
            Ok(()) => Ok(()),
            // Deleted under its lock holder (DELETE takes no lock): it stays deleted.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Conflict {
                id: record.id.clone(),
            }),
            Err(source) => Err(StoreError::WriteRecord { path, source }),
        }
    }

    /// Reads a job record; `Ok(None)` when there is no such job.
    pub fn read_record(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.read_versioned(id)?.map(|v| v.value))
    }

    /// Reads a job record and its revision; `Ok(None)` when there is no such job.
    pub fn read_versioned(&self, id: &JobId) -> Result<Option<Versioned<JobRecord>>, StoreError> {
        read_replaced(&self.record_path(id), record::decode, |read| {
            (read.value.id != *id).then(|| format!("the file names job {}", read.value.id))
        })
    }

    /// Takes the dedup entry `key` for job `id`, atomically across processes: the entry
    /// is a symbolic link whose target is the holder's id, and `symlink(2)` fails if the
    /// name exists. Returns the job that holds it when another upload got there first.
    ///
    /// A link is whole the moment it exists (its target is in the inode), so there is
    /// no content to fsync and no temp file: one system call. Not fsynced: an entry lost
    /// in a power cut costs an identical upload its dedup, never a job. An entry that
    /// names no job (a regular file from an older version, torn by a crash, or garbage)
    /// is treated as absent and replaced by one `rename`.
    pub fn dedup_claim(&self, key: &str, id: &JobId) -> Result<Option<JobId>, StoreError> {
        let path = self.dedup_path(key);
        let err = |source| StoreError::Dedup {
            path: path.clone(),
            source,
        };
        // Each round either settles or saw the entry vanish under it (released by its
        // holder between our attempt and our read): a few rounds suffice unless
        // something keeps deleting it.
        for _ in 0..DEDUP_CLAIM_ROUNDS {
            match std::os::unix::fs::symlink(id.as_str(), &path) {
                Ok(()) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e)),
            }
            match read_dedup_entry(&path) {
                Ok(Some(holder)) => return Ok(Some(holder)),
                Ok(None) => {
                    tracing::warn!(entry = %path.display(), "torn dedup entry; replacing it");
                    let tmp = path.with_file_name(format!(".{key}.{id}.tmp"));
                    let replaced = std::os::unix::fs::symlink(id.as_str(), &tmp)
                        .and_then(|()| fs::rename(&tmp, &path));
                    if replaced.is_err() {
                        let _ = fs::remove_file(&tmp);
                    }
                    return replaced.map(|()| None).map_err(err);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Err(err(io::Error::other(
            "the entry kept changing; giving up on dedup for this upload",
        )))
    }

    /// The job holding dedup entry `key`, if any (an unreadable entry counts as none).
    pub fn dedup_holder(&self, key: &str) -> Result<Option<JobId>, StoreError> {
        let path = self.dedup_path(key);
        match read_dedup_entry(&path) {
            Ok(holder) => Ok(holder),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Dedup { path, source }),
        }
    }

    /// Removes dedup entry `key` if (and only if) job `id` holds it.
    pub fn dedup_release(&self, key: &str, id: &JobId) -> Result<(), StoreError> {
        if self.dedup_holder(key)?.as_ref() == Some(id) {
            let path = self.dedup_path(key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Dedup { path, source }),
            }
        }
        Ok(())
    }

    /// Whether any worker holds a claim on job `id`, queued or running.
    pub fn is_claimed(&self, id: &JobId) -> bool {
        let Ok(slots) = fs::read_dir(self.root.join("claims")) else {
            return false;
        };
        slots.flatten().any(|slot| {
            let dir = slot.path();
            dir.join(id.as_str()).exists() || dir.join(running_name(id)).exists()
        })
    }

    /// Cleans up after a previous process of front slot `front` that died:
    /// half-streamed uploads are deleted, and a job that was recorded but never
    /// acknowledged by a worker (so never answered 202) is removed entirely —
    /// original, record and dedup entry. Returns (spool files, jobs) removed.
    pub fn recover_front(&self, front: u32) -> Result<(usize, usize), StoreError> {
        let dir = self.spool_dir(front);
        create_dir(&dir, 0o755)?;
        let entries = fs::read_dir(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let (mut parts, mut jobs) = (0, 0);
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".pending").and_then(JobId::parse) {
                let record = self.read_record(&id).ok().flatten();
                let orphan = !self.is_claimed(&id)
                    && record.as_ref().is_none_or(|r| r.state == JobState::Queued);
                if orphan {
                    match &record {
                        Some(rec) => {
                            let _ = fs::remove_file(self.root.join(&rec.source.path));
                            if let Some(key) = &rec.dedup_key {
                                let _ = self.dedup_release(key, &id);
                            }
                        }
                        // Died between moving the original and writing the record.
                        None => self.remove_originals(&id),
                    }
                    let _ = fs::remove_file(self.record_path(&id));
                    jobs += 1;
                }
            } else {
                parts += 1;
            }
            let _ = fs::remove_file(&path);
        }
        Ok((parts, jobs))
    }

    /// Removes `raw/<id>.*`: the original of a job that has no record.
    fn remove_originals(&self, id: &JobId) {
        let Ok(entries) = fs::read_dir(self.raw_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stem = name
                .to_str()
                .and_then(|n| n.split_once('.'))
                .map(|(s, _)| s);
            if stem == Some(id.as_str()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// What a crash of any process can leave behind and nothing else removes:
    /// temp and spare files of records, outbox entries, dedup entries and outputs
    /// (`.<name>.tmp`), and
    /// originals with no record (a front killed between moving the upload into
    /// `raw/` and recording its job: it was never answered 202). Call it only
    /// while no front or worker runs (the supervisor, before it starts them).
    pub fn sweep_orphans(&self) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        for dir in [
            self.jobs_dir(),
            self.root.join("dedup"),
            self.processed_dir(),
            self.outbox_dir(),
        ] {
            for entry in list(&dir)? {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.')
                    && name.ends_with(".tmp")
                    && fs::remove_file(entry.path()).is_ok()
                {
                    swept.temp_files += 1;
                }
            }
        }
        for entry in list(&self.raw_dir())? {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.split_once('.'))
                .and_then(|(stem, _)| JobId::parse(stem))
            else {
                continue;
            };
            if !self.record_path(&id).exists() && fs::remove_file(entry.path()).is_ok() {
                swept.originals += 1;
            }
        }
        Ok(swept)
    }

    /// Durably records that worker `slot` owns job `id` until it is finished.
    pub fn claim(&self, slot: u32, id: &JobId) -> Result<(), StoreError> {
        self.claim_pending(slot, id, None)
    }

    /// [`Store::claim`], taking over the pending marker front `front` made for the job
    /// ([`Store::pending_path`]): the marker is renamed into the claim, so accepting a
    /// job creates one file fewer and removes one fewer. Without the marker (the front
    /// gave up on this worker and tried another), a new claim is created.
    pub fn claim_pending(
        &self,
        slot: u32,
        id: &JobId,
        front: Option<u32>,
    ) -> Result<(), StoreError> {
        let dir = self.claim_dir(slot);
        let path = dir.join(id.as_str());
        let res = (|| {
            self.make_claim_dir(slot)?;
            let moved = match front {
                Some(front) => match fs::rename(self.pending_path(front, id), &path) {
                    Ok(()) => true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                },
                None => false,
            };
            if !moved {
                fs::File::create(&path)?;
            }
            fsutil::sync_dir(&dir)
        })();
        res.map_err(|source| StoreError::Claim { path, source })
    }

    /// Takes job `id` into worker `slot`'s hands: its queued claim in `owner`'s
    /// directory becomes `claims/<slot>/<id>.running`, by one `rename`, so that of
    /// two workers taking the same job (its owner, and a sibling helping it) exactly
    /// one gets it. `Ok(false)`: the claim is gone, another worker took it.
    ///
    /// A claim already running in `slot`'s directory (taken earlier by this slot, or
    /// by its predecessor before a crash) counts as taken; so does a running claim
    /// of `owner` when `owner` is a retired slot (`owner >= workers`) whose jobs this
    /// worker adopted at start-up. A live sibling's running claim is never taken.
    ///
    /// The rename is not fsynced: lost in a crash, the claim is back where it was
    /// and the job runs again, which is harmless; it is never lost.
    pub fn take(
        &self,
        slot: u32,
        owner: u32,
        workers: u32,
        id: &JobId,
    ) -> Result<bool, StoreError> {
        let mine = self.claim_dir(slot);
        self.make_claim_dir(slot)
            .map_err(|source| StoreError::Claim {
                path: mine.clone(),
                source,
            })?;
        let to = mine.join(running_name(id));
        let mut from = vec![self.claim_dir(owner).join(id.as_str())];
        if owner >= workers && owner != slot {
            from.push(self.claim_dir(owner).join(running_name(id)));
        }
        for path in from {
            match fs::rename(&path, &to) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Claim { path, source }),
            }
        }
        Ok(to.exists())
    }

    /// Worker `slot` helps a busy sibling: the oldest queued claim of a live slot
    /// (`< workers`) that is running a job right now is taken, as by [`Store::take`],
    /// and its id returned. A sibling that is idle is left alone (it will start its
    /// queue itself), so with work for everyone, jobs run where they were routed.
    pub fn steal(&self, slot: u32, workers: u32) -> Result<Option<JobId>, StoreError> {
        let mut candidates = Vec::new();
        for owner in (0..workers).filter(|&s| s != slot) {
            let dir = self.claim_dir(owner);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::Claim { path: dir, source }),
            };
            let (mut busy, mut queued) = (false, Vec::new());
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                match name.strip_suffix(RUNNING) {
                    Some(_) => busy = true,
                    None => queued.extend(JobId::parse(name).map(|id| (owner, id))),
                }
            }
            if busy {
                candidates.extend(queued);
            }
        }
        // Ids sort by creation time: the oldest first, as its owner would run them.
        candidates.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
        for (owner, id) in candidates {
            if self.take(slot, owner, workers, &id)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Drops the claim of worker `slot` on job `id` (the job reached a final
    /// state), running or still queued.
    pub fn release(&self, slot: u32, id: &JobId) -> Result<(), StoreError> {
        let dir = self.claim_dir(slot);
        for path in [dir.join(running_name(id)), dir.join(id.as_str())] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Claim { path, source }),
            }
        }
        Ok(())
    }

    /// The claims a worker `slot` of `workers` must take over at start-up: its own,
    /// and those of slots that no longer exist (`s >= workers`, with `s % workers == slot`).
    /// Returns `(owning slot, job id)` pairs, oldest job first (ids sort by time).
    pub fn claims_to_recover(
        &self,
        slot: u32,
        workers: u32,
    ) -> Result<Vec<(u32, JobId)>, StoreError> {
        let base = self.root.join("claims");
        let mut out = Vec::new();
        let entries = match fs::read_dir(&base) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(StoreError::Claim { path: base, source }),
        };
        for entry in entries.flatten() {
            let Some(owner) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let mine = owner == slot || (owner >= workers && owner % workers.max(1) == slot);
            if !mine {
                continue;
            }
            let dir = entry.path();
            let claims =
                fs::read_dir(&dir).map_err(|source| StoreError::Claim { path: dir, source })?;
            for claim in claims.flatten() {
                let name = claim.file_name();
                let Some(name) = name.to_str() else { continue };
                let id = name.strip_suffix(RUNNING).unwrap_or(name);
                if let Some(id) = JobId::parse(id) {
                    out.push((owner, id));
                }
            }
        }
        out.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
        Ok(out)
    }
}

/// What [`Store::sweep_orphans`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Temp files of interrupted writes.
    pub temp_files: usize,
    /// Originals whose job was never recorded.
    pub originals: usize,
}

/// The entries of `dir`; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StoreError::List {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The directory of originals, and the first part of their keys.
pub(crate) const RAW: &str = "raw";

/// The directory of variants, and the first part of their keys.
pub(crate) const PROCESSED: &str = "processed";

/// The holder a dedup entry names: a link's target, or (written by older versions) a
/// regular file's content. `Ok(None)`: it names no job.
fn read_dedup_entry(path: &Path) -> io::Result<Option<JobId>> {
    let named = match fs::read_link(path) {
        Ok(target) => target.to_str().map(str::to_string),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let bytes = fs::read(path)?;
            std::str::from_utf8(&bytes)
                .ok()
                .map(|s| s.trim().to_string())
        }
        Err(e) => return Err(e),
    };
    Ok(named.as_deref().and_then(JobId::parse))
}

/// Rounds of symlink-then-read before [`Store::dedup_claim`] gives up.
const DEDUP_CLAIM_ROUNDS: usize = 16;

/// Reads of a file that is torn or names another item before it counts as corrupt.
const READ_ROUNDS: usize = 3;

/// Reads and decodes a file that [`fsutil::replace_existing`] changes; `Ok(None)` if
/// there is none. A read that caught the file swapped out and being rewritten as a
/// writer's spare is torn, or `foreign` (another item's: it says how) finds it; the
/// name holds a whole file again by the next read. A file still so after
/// [`READ_ROUNDS`] reads is corrupt.
pub(crate) fn read_replaced<T>(
    path: &Path,
    decode: impl Fn(&[u8]) -> serde_json::Result<T>,
    foreign: impl Fn(&T) -> Option<String>,
) -> Result<Option<T>, StoreError> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::ReadRecord {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let why = match decode(&bytes) {
            Ok(read) => match foreign(&read) {
                None => return Ok(Some(read)),
                Some(why) => serde::de::Error::custom(why),
            },
            Err(e) => e,
        };
        if rounds >= READ_ROUNDS {
            return Err(StoreError::CorruptRecord {
                path: path.to_path_buf(),
                source: why,
            });
        }
    }
}

impl Store {
    /// `claims/`, holding one directory per worker slot.
    fn claims_root(&self) -> PathBuf {
        self.root.join("claims")
    }

    /// Creates `claims/<slot>` if it is missing, and then fsyncs `claims/`: a
    /// claim fsynced in a directory whose own name is not yet durable could
    /// vanish with it in a power cut, after its job got a 202.
    fn make_claim_dir(&self, slot: u32) -> io::Result<()> {
        let dir = self.claim_dir(slot);
        match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => fsutil::sync_dir(&self.claims_root()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            // `claims/` itself is gone (deleted by hand): remade, both made durable.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&dir)?;
                fsutil::sync_dir(&self.claims_root())?;
                fsutil::sync_dir(&self.root)
            }
            Err(e) => Err(e),
        }
    }
}

/// Mode asked for the layout's directories: the process umask decides (the
/// supervisor sets one, 0027 by default: 0750), whichever way an operator
/// chose to set it.
const DIR_MODE: u32 = 0o777;

/// The suffix of a claim whose job is in a worker's hands.
const RUNNING: &str = ".running";

fn running_name(id: &JobId) -> String {
    format!("{}{RUNNING}", id.as_str())
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The strong validator of an output: the first 128 bits of its BLAKE3, in hex.
/// The worker puts it in the record; the front recomputes it for a variant it
/// serves before the record lists it. Both must agree, so it is defined once.
pub fn output_etag(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

/// An error and its sources, `: `-separated: the form used in problem details
/// and log lines, so a cause is never lost behind its context.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str) -> (Store, PathBuf) {
        let root = std::env::temp_dir().join(format!("pixpool-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        (Store::open(&root, None).expect("open store"), root)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_torn_dedup_entry_counts_as_absent_and_is_replaced() {
        let (store, root) = store("dedup-torn");
        let (first, second) = (JobId::generate(), JobId::generate());
        for torn in [&b""[..], b"garbage", b"\xff\xfe", b"../../etc/passwd"] {
            fs::write(store.dedup_path("k"), torn).expect("tear the entry");
            assert_eq!(store.dedup_holder("k").expect("read"), None);
            // Before the fix this recursed without bound (stack overflow, SIGABRT).
            assert_eq!(store.dedup_claim("k", &first).expect("claim"), None);
            assert_eq!(store.dedup_holder("k").expect("read"), Some(first.clone()));
            assert_eq!(
                store.dedup_claim("k", &second).expect("claim"),
                Some(first.clone())
            );
            store.dedup_release("k", &first).expect("release");
        }
        // A link to anything but an id is torn too.
        std::os::unix::fs::symlink("../../etc/passwd", store.dedup_path("k")).expect("link");
        assert_eq!(store.dedup_holder("k").expect("read"), None);
        assert_eq!(store.dedup_claim("k", &first).expect("claim"), None);
        store.dedup_release("k", &first).expect("release");
        // An entry written by an older version (a file holding the id) still counts.
        fs::write(store.dedup_path("old"), first.as_str()).expect("legacy entry");
        assert_eq!(
            store.dedup_claim("old", &second).expect("claim"),
            Some(first.clone())
        );
        store.dedup_release("old", &first).expect("release");
        assert_eq!(
            names(&root.join("dedup")),
            Vec::<String>::new(),
            "no temp file left"
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn orphans_of_a_crash_are_swept_and_live_files_kept() {
        let (store, root) = store("orphans");
        let (live, orphan) = (JobId::generate(), JobId::generate());
        let rec = JobRecord::queued(
            live.clone(),
            SourceRecord {
                path: format!("raw/{live}.jpg"),
                format: "jpeg".into(),
                bytes: 1,
            },
            vec!["medium".into()],
        );
        store.write_record(&rec).expect("record");
        for (dir, name) in [
            ("raw", format!("{live}.jpg")),
            ("raw", format!("{orphan}.png")),
            ("raw", "not-an-id.jpg".to_string()),
            ("jobs", format!(".{orphan}.json.4242.tmp")),
            ("dedup", format!(".abc-def.{orphan}.tmp")),
            ("processed", format!(".{orphan}-medium.jpg.tmp")),
            ("processed", format!("{live}-medium.jpg")),
        ] {
            fs::write(root.join(dir).join(name), b"x").expect("write");
        }
        let swept = store.sweep_orphans().expect("sweep");
        assert_eq!(
            swept,
            Swept {
                temp_files: 3,
                originals: 1
            }
        );
        assert_eq!(
            names(&root.join("raw")),
            [format!("{live}.jpg"), "not-an-id.jpg".to_string()]
        );
        assert_eq!(names(&root.join("jobs")), [format!("{live}.json")]);
        assert_eq!(names(&root.join("dedup")), Vec::<String>::new());
        assert_eq!(
            names(&root.join("processed")),
            [format!("{live}-medium.jpg")]
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_claim_takes_over_the_fronts_pending_marker() {
        let (store, root) = store("pending");
        let (marked, unmarked) = (JobId::generate(), JobId::generate());
        fs::create_dir_all(store.spool_dir(1)).expect("spool dir");
        fs::write(store.pending_path(1, &marked), b"").expect("marker");
        store.claim_pending(0, &marked, Some(1)).expect("claim");
        // The front tried this worker after another took its marker: a new claim.
        store.claim_pending(0, &unmarked, Some(1)).expect("claim");
        assert!(!store.pending_path(1, &marked).exists(), "the marker moved");
        assert!(store.is_claimed(&marked) && store.is_claimed(&unmarked));
        assert_eq!(names(&store.spool_dir(1)), Vec::<String>::new());
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_job_is_taken_once_whoever_tries() {
        let (store, root) = store("take");
        let id = JobId::generate();
        store.claim(0, &id).expect("claim");
        assert!(store.is_claimed(&id));
        // Its owner and a sibling race for it: one rename wins.
        assert!(store.take(1, 0, 2, &id).expect("sibling takes it"));
        assert!(!store.take(0, 0, 2, &id).expect("owner finds it gone"));
        assert_eq!(names(&store.claim_dir(0)), Vec::<String>::new());
        assert_eq!(
            names(&store.claim_dir(1)),
            [format!("{}.running", id.as_str())]
        );
        assert!(store.is_claimed(&id), "a running claim is a claim");
        // Taking it again in the same slot (a restarted worker) is a no-op success.
        assert!(store.take(1, 1, 2, &id).expect("already mine"));
        store.release(1, &id).expect("release");
        assert!(!store.is_claimed(&id));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn only_a_busy_siblings_queued_claims_are_stolen_oldest_first() {
        let (store, root) = store("steal");
        let (running, older, newer) = (JobId::generate(), JobId::generate(), JobId::generate());
        for id in [&running, &older, &newer] {
            store.claim(0, id).expect("claim");
        }
        // Worker 0 is idle (nothing running): its queue is its own to start.
        assert_eq!(store.steal(1, 2).expect("steal"), None);
        assert!(store.take(0, 0, 2, &running).expect("owner starts one"));
        // Now it is busy: worker 1 takes the oldest queued job, then the next.
        assert_eq!(store.steal(1, 2).expect("steal"), Some(older.clone()));
        assert_eq!(store.steal(1, 2).expect("steal"), Some(newer.clone()));
        assert_eq!(
            store.steal(1, 2).expect("steal"),
            None,
            "a running job is never stolen"
        );
        assert_eq!(
            names(&store.claim_dir(1)),
            [
                format!("{}.running", older.as_str()),
                format!("{}.running", newer.as_str())
            ]
        );
        // A worker does not steal from itself, and a lone worker has nobody to help.
        store.claim(0, &JobId::generate()).expect("claim");
        assert_eq!(store.steal(0, 2).expect("steal"), None);
        assert_eq!(store.steal(0, 1).expect("steal"), None);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn running_claims_are_recovered_and_adopted_from_retired_slots() {
        let (store, root) = store("recover");
        let (mine, retired) = (JobId::generate(), JobId::generate());
        store.claim(0, &mine).expect("claim");
        store.claim(2, &retired).expect("claim");
        assert!(store.take(0, 0, 3, &mine).expect("take"));
        assert!(store.take(2, 2, 3, &retired).expect("take"));
        // The server restarts with 2 workers: slot 0 gets its own running job back
        // and adopts retired slot 2's, running or not.
        let got = store.claims_to_recover(0, 2).expect("recover");
        assert_eq!(got, vec![(0, mine.clone()), (2, retired.clone())]);
        assert!(store.take(0, 0, 2, &mine).expect("own running claim"));
        assert!(store
            .take(0, 2, 2, &retired)
            .expect("retired slot's running claim"));
        assert_eq!(names(&store.claim_dir(2)), Vec::<String>::new());
        // A live sibling's running claim is never taken.
        let busy = JobId::generate();
        store.claim(1, &busy).expect("claim");
        assert!(store.take(1, 1, 2, &busy).expect("take"));
        assert!(!store.take(0, 1, 2, &busy).expect("not a retired slot"));
        let _ = fs::remove_dir_all(root);
    }
}
