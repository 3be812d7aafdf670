//! Job records as files, changed by compare-and-swap.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{Flock, FlockArg};
use pixpool_model::JobId;

use super::blocking;
use crate::backend::{Durability, Records, Revision, Versioned};
use crate::record::JobRecord;
use crate::{fsutil, Store, StoreError};

/// [`Records`] in the uploads directory.
#[derive(Debug, Clone)]
pub struct FileRecords {
    store: Store,
}

impl FileRecords {
    /// The records of `store`.
    pub fn new(store: Store) -> FileRecords {
        FileRecords { store }
    }
}

/// Times an update re-opens a record that was replaced between its open and its lock.
const LOCK_ROUNDS: usize = 64;

impl FileRecords {
    /// Creates the record by renaming a fsynced temp file to its name without replacing
    /// (`RENAME_NOREPLACE` fails if the name exists): two creators cannot both win.
    fn create_blocking(store: &Store, record: &JobRecord) -> Result<Revision, StoreError> {
        let path = store.record_path(&record.id);
        let err = |source| StoreError::WriteRecord {
            path: path.clone(),
            source,
        };
        let bytes = crate::record::encode(record, 1).map_err(|e| err(io::Error::other(e)))?;
        let linked = fsutil::write_then(&path, &bytes, true, |tmp, path| {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                tmp,
                nix::fcntl::AT_FDCWD,
                path,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(io::Error::from)
        });
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Conflict {
                    id: record.id.clone(),
                })
            }
            Err(e) => return Err(err(e)),
        }
        fsutil::sync_dir(&store.jobs_dir()).map_err(err)?;
        Ok(1)
    }

    /// Locks the current file of the record (re-opening it if a writer renamed a new
    /// one over it meanwhile), compares revisions, writes the new record, unlocks.
    fn update_blocking(
        store: &Store,
        record: &JobRecord,
        expected: Revision,
        durability: Durability,
    ) -> Result<Revision, StoreError> {
        let path = store.record_path(&record.id);
        let err = |source| StoreError::WriteRecord {
            path: path.clone(),
            source,
        };
        let conflict = || StoreError::Conflict {
            id: record.id.clone(),
        };
        for _ in 0..LOCK_ROUNDS {
            let file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(conflict()),
                Err(e) => return Err(err(e)),
            };
            let locked = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| err(io::Error::from(errno)))?;
            let ours = locked.metadata().map_err(err)?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(conflict()),
                Err(e) => return Err(err(e)),
            }
            let mut bytes = Vec::new();
            (&*locked).read_to_end(&mut bytes).map_err(err)?;
            let current =
                crate::record::decode(&bytes).map_err(|source| StoreError::CorruptRecord {
                    path: path.clone(),
                    source,
                })?;
            if current.revision != expected {
                return Err(conflict());
            }
            let next = expected.wrapping_add(1);
            store.write_record_at(record, next, durability)?;
            return Ok(next);
        }
        Err(err(io::Error::other(
            "the record kept being replaced; giving up",
        )))
    }
}

#[async_trait::async_trait]
impl Records for FileRecords {
    async fn create(&self, record: &JobRecord) -> Result<Revision, StoreError> {
        let (store, record) = (self.store.clone(), record.clone());
        blocking(move || FileRecords::create_blocking(&store, &record)).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<Versioned<JobRecord>>, StoreError> {
        let (store, id) = (self.store.clone(), id.clone());
        blocking(move || store.read_versioned(&id)).await
    }

    async fn update(
        &self,
        record: &JobRecord,
        expected: Revision,
        durability: Durability,
    ) -> Result<Revision, StoreError> {
        let (store, record) = (self.store.clone(), record.clone());
        blocking(move || FileRecords::update_blocking(&store, &record, expected, durability)).await
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let path = self.store.record_path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::WriteRecord { path, source }),
        }
    }

    fn ids(&self) -> crate::backend::IdStream {
        // The directory is read on a blocking thread, a batch at a time.
        let dir = self.store.jobs_dir();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<JobId, StoreError>>(256);
        tokio::task::spawn_blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(source) => {
                    let _ = tx.blocking_send(Err(StoreError::List { path: dir, source }));
                    return;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(id) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(JobId::parse)
                else {
                    continue;
                };
                if tx.blocking_send(Ok(id)).is_err() {
                    return;
                }
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    async fn dedup_claim(&self, key: &str, id: &JobId) -> Result<Option<JobId>, StoreError> {
        let (store, key, id) = (self.store.clone(), key.to_string(), id.clone());
        blocking(move || store.dedup_claim(&key, &id)).await
    }

    async fn dedup_release(&self, key: &str, id: &JobId) -> Result<(), StoreError> {
        let (store, key, id) = (self.store.clone(), key.to_string(), id.clone());
        blocking(move || store.dedup_release(&key, &id)).await
    }
}
