//! The webhook outbox as files: `outbox/<key>.json`, each the entry and its revision,
//! put whole by a rename, changed by compare-and-swap under an `flock` (swapped with a
//! spare file, as records are).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::backend::{Outbox, Revision, Versioned};
use crate::outbox::{is_entry_key, OutboxEntry};
use crate::{fsutil, Store, StoreError};

/// [`Outbox`] in the uploads directory.
#[derive(Debug, Clone)]
pub struct FileOutbox {
    store: Store,
}

impl FileOutbox {
    /// The outbox of `store`.
    pub fn new(store: Store) -> FileOutbox {
        FileOutbox { store }
    }
}

#[derive(Serialize)]
struct Stored<'a> {
    revision: u64,
    #[serde(flatten)]
    entry: &'a OutboxEntry,
}

#[derive(Deserialize)]
struct Loaded {
    revision: u64,
    #[serde(flatten)]
    entry: OutboxEntry,
}

/// Times a change re-opens an entry that was replaced between its open and its lock.
const LOCK_ROUNDS: usize = 64;

fn path_of(store: &Store, key: &str) -> Result<PathBuf, StoreError> {
    if !is_entry_key(key) {
        return Err(StoreError::BadKey { key: key.into() });
    }
    Ok(store.outbox_dir().join(format!("{key}.json")))
}

fn write_err(path: &std::path::Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::WriteRecord {
        path: path.to_path_buf(),
        source,
    }
}

fn parse(bytes: &[u8]) -> serde_json::Result<Versioned<OutboxEntry>> {
    let loaded: Loaded = serde_json::from_slice(bytes)?;
    Ok(Versioned {
        value: loaded.entry,
        revision: loaded.revision,
    })
}

fn decode(path: &std::path::Path, bytes: &[u8]) -> Result<Versioned<OutboxEntry>, StoreError> {
    parse(bytes).map_err(|source| StoreError::CorruptRecord {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &std::path::Path, entry: &OutboxEntry, revision: u64) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(&Stored { revision, entry })
        .map_err(|e| write_err(path)(io::Error::other(e)))?;
    fsutil::replace_durably(path, &bytes).map_err(write_err(path))
}

/// Runs `change` on the current entry under `key`, locked, if its revision is
/// `expected`: `Some(entry)` writes it at the next revision, `None` removes it.
fn change_blocking(
    store: &Store,
    key: &str,
    expected: Revision,
    change: Option<&OutboxEntry>,
) -> Result<Option<Revision>, StoreError> {
    let path = path_of(store, key)?;
    let err = write_err(&path);
    for _ in 0..LOCK_ROUNDS {
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let locked = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| err(io::Error::from(errno)))?;
        let ours = locked.metadata().map_err(&err)?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        }
        let mut bytes = Vec::new();
        (&*locked).read_to_end(&mut bytes).map_err(&err)?;
        let current = decode(&path, &bytes)?;
        if current.revision != expected {
            // Replaced since it was read: an update is refused; a removal leaves the
            // newer entry to be delivered.
            return match change {
                Some(_) => Err(StoreError::Conflict {
                    id: current.value.job,
                }),
                None => Ok(None),
            };
        }
        return match change {
            Some(entry) => {
                let next = expected.wrapping_add(1);
                let bytes = serde_json::to_vec(&Stored {
                    revision: next,
                    entry,
                })
                .map_err(|e| err(io::Error::other(e)))?;
                // Swapped with a spare, as records are: a courier's leases free no inode.
                match fsutil::replace_existing(&path, &bytes, true) {
                    Ok(()) => Ok(Some(next)),
                    // Removed under our lock by a job's deletion (which takes none).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(err(e)),
                }
            }
            None => {
                fs::remove_file(&path).map_err(&err)?;
                fsutil::sync_dir(&store.outbox_dir()).map_err(&err)?;
                Ok(None)
            }
        };
    }
    Err(err(io::Error::other(
        "the outbox entry kept being replaced; giving up",
    )))
}

#[async_trait::async_trait]
impl Outbox for FileOutbox {
    async fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        let (store, entry) = (self.store.clone(), entry.clone());
        blocking(move || {
            let path = path_of(&store, &entry.key())?;
            // A fresh revision from the clock: a courier holding the entry it replaces
            // finds its compare-and-swap refused.
            let revision = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            write(&path, &entry, revision)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned<OutboxEntry>>, StoreError> {
        let path = path_of(&self.store, key)?;
        let key = key.to_string();
        blocking(move || {
            crate::read_replaced(&path, parse, |read| {
                let held = read.value.key();
                (held != key).then(|| format!("the file holds entry {held}"))
            })
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.store.outbox_dir();
        blocking(move || {
            let list = fs::read_dir(&dir).map_err(|source| StoreError::List {
                path: dir.clone(),
                source,
            })?;
            let mut keys = Vec::new();
            for entry in list.flatten() {
                let name = entry.file_name();
                let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if is_entry_key(key) {
                    keys.push(key.to_string());
                }
            }
            Ok(keys)
        })
        .await
    }

    async fn update(
        &self,
        entry: &OutboxEntry,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let (store, entry) = (self.store.clone(), entry.clone());
        blocking(move || {
            change_blocking(&store, &entry.key(), expected, Some(&entry))?.ok_or(
                StoreError::Conflict {
                    id: entry.job.clone(),
                },
            )
        })
        .await
    }

    async fn remove(&self, key: &str, expected: Revision) -> Result<(), StoreError> {
        let (store, key) = (self.store.clone(), key.to_string());
        blocking(move || change_blocking(&store, &key, expected, None).map(|_| ())).await
    }
}
