//! The pixpool job store: everything the server keeps lives under one uploads
//! directory, so two servers with different `--uploads` never interfere.
//!
//! # Layout
//! ```text
//! uploads/
//!   tmp/<id>.part          uploads being streamed (removed on failure, swept at start)
//!   raw/<id>.<ext>         originals, fsynced before the job exists
//!   processed/<id>-<preset>.<ext>   outputs, written to a temp file then renamed
//!   jobs/<id>.json         the job record (temp file + fsync + rename + dir fsync)
//!   claims/<slot>/<id>     a worker's durable claim: "this job is mine and not done"
//!   run/                   mode 0700: the workers' Unix sockets
//! ```
//!
//! # Modules
//! - [`record`]: the job record, its states and the problem document.
//! - [`fsutil`]: atomic, durable file replacement.
//! - this file: [`Store`], the paths and the claim directory.
#![deny(missing_docs)]

pub mod fsutil;
pub mod record;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use record::{JobId, JobRecord, JobState, OutputRecord, Problem, SourceRecord, StageMillis};

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
        for dir in [
            store.root.clone(),
            store.tmp_dir(),
            store.raw_dir(),
            store.processed_dir(),
            store.jobs_dir(),
            store.root.join("claims"),
        ] {
            create_dir(&dir, 0o755)?;
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
        self.root.join("raw")
    }
    /// Where outputs live.
    pub fn processed_dir(&self) -> PathBuf {
        self.root.join("processed")
    }
    /// Where job records live.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
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
    /// The streaming temp file of an upload.
    pub fn part_path(&self, id: &JobId) -> PathBuf {
        self.tmp_dir().join(format!("{id}.part"))
    }
    /// The claim directory of worker `slot`.
    pub fn claim_dir(&self, slot: u32) -> PathBuf {
        self.root.join("claims").join(slot.to_string())
    }

    /// Writes `record` durably (temp file, fsync, rename, directory fsync).
    pub fn write_record(&self, record: &JobRecord) -> Result<(), StoreError> {
        let path = self.record_path(&record.id);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| StoreError::WriteRecord {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        fsutil::replace_durably(&path, &bytes)
            .map_err(|source| StoreError::WriteRecord { path, source })
    }

    /// Reads a job record; `Ok(None)` when there is no such job.
    pub fn read_record(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let path = self.record_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::ReadRecord { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::CorruptRecord { path, source })
    }

    /// Durably records that worker `slot` owns job `id` until it is finished.
    pub fn claim(&self, slot: u32, id: &JobId) -> Result<(), StoreError> {
        let dir = self.claim_dir(slot);
        let path = dir.join(id.as_str());
        let res = (|| {
            fs::create_dir_all(&dir)?;
            fs::File::create(&path)?;
            fsutil::sync_dir(&dir)
        })();
        res.map_err(|source| StoreError::Claim { path, source })
    }

    /// Drops the claim of worker `slot` on job `id` (the job reached a final state).
    pub fn release(&self, slot: u32, id: &JobId) -> Result<(), StoreError> {
        let path = self.claim_dir(slot).join(id.as_str());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Claim { path, source }),
        }
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
                if let Some(id) = claim.file_name().to_str().and_then(JobId::parse) {
                    out.push((owner, id));
                }
            }
        }
        out.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
        Ok(out)
    }
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
