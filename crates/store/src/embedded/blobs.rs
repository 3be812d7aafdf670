//! Originals and variants as files under the uploads directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use pixpool_model::JobId;
use tokio::io::AsyncReadExt;

use super::blocking;
use crate::backend::{AgedBlob, Blob, Blobs, VariantKey};
use crate::{fsutil, Store, StoreError};

/// Chunk size when a variant is streamed out.
const READ_CHUNK: usize = 64 * 1024;

/// [`Blobs`] in the uploads directory.
#[derive(Debug, Clone)]
pub struct FileBlobs {
    store: Store,
}

impl FileBlobs {
    /// The blobs of `store`.
    pub fn new(store: Store) -> FileBlobs {
        FileBlobs { store }
    }
}

fn blob_err(key: &str) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Blob {
        key: key.to_string(),
        source,
    }
}

fn remove_quietly(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Blobs for FileBlobs {
    async fn put_original(
        &self,
        id: &JobId,
        extension: &'static str,
        spool: &Path,
    ) -> Result<String, StoreError> {
        let key = Store::original_key(id, extension);
        let (store, spool, k) = (self.store.clone(), spool.to_path_buf(), key.clone());
        blocking(move || {
            let path = store.key_path(&k)?;
            // The client's name is never a path: the server's id and sniffed format are.
            fs::rename(&spool, &path)
                .and_then(|()| fsutil::sync_dir(&store.raw_dir()))
                .map_err(blob_err(&k))
        })
        .await?;
        Ok(key)
    }

    async fn get_original(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.store.key_path(key)?;
        tokio::fs::read(&path).await.map_err(blob_err(key))
    }

    async fn delete_original(&self, key: &str) -> Result<(), StoreError> {
        let (path, k) = (self.store.key_path(key)?, key.to_string());
        blocking(move || remove_quietly(&path).map_err(blob_err(&k))).await
    }

    async fn put_variant(&self, key: &VariantKey, data: Bytes) -> Result<String, StoreError> {
        let path = self.store.output_path(key);
        let name = Store::variant_key(key);
        let k = name.clone();
        blocking(move || fsutil::replace_unflushed(&path, &data).map_err(blob_err(&k))).await?;
        Ok(name)
    }

    async fn sync_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError> {
        let store = self.store.clone();
        let paths: Vec<(String, PathBuf)> = keys
            .iter()
            .map(|k| (Store::variant_key(k), store.output_path(k)))
            .collect();
        blocking(move || {
            for (key, path) in &paths {
                fs::File::open(path)
                    .and_then(|f| f.sync_data())
                    .map_err(blob_err(key))?;
            }
            // The renames themselves.
            fsutil::sync_dir(&store.processed_dir()).map_err(blob_err("processed/"))
        })
        .await
    }

    async fn get_variant(&self, key: &VariantKey) -> Result<Option<Blob>, StoreError> {
        let path = self.store.output_path(key);
        let name = Store::variant_key(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(blob_err(&name)(e)),
        };
        let len = file.metadata().await.map_err(blob_err(&name))?.len();
        // Read as sent: a variant never changes once renamed into place (a re-run
        // renames a new file over it; this one stays readable through its handle).
        let body = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(file))),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Some(Blob {
            len,
            body: Box::pin(body),
        }))
    }

    async fn aged(
        &self,
        age: std::time::Duration,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgedBlob>, StoreError> {
        let (store, after) = (self.store.clone(), after.map(str::to_string));
        blocking(move || {
            let now = std::time::SystemTime::now();
            let mut keys = Vec::new();
            for (dir, name) in [
                (store.raw_dir(), crate::RAW),
                (store.processed_dir(), crate::PROCESSED),
            ] {
                let entries = match fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(StoreError::List { path: dir, source }),
                };
                for entry in entries.flatten() {
                    let file = entry.file_name();
                    let Some(file) = file.to_str() else { continue };
                    let key = format!("{name}/{file}");
                    if after.as_deref().is_some_and(|a| key.as_str() <= a) {
                        continue;
                    }
                    keys.push(key);
                }
            }
            keys.sort_unstable();
            let mut aged = Vec::new();
            for key in keys {
                if aged.len() >= limit {
                    break;
                }
                let Some(job) = key
                    .split_once('/')
                    .and_then(|(_, file)| file.split(['.', '-']).next())
                    .and_then(JobId::parse)
                else {
                    continue;
                };
                let Ok(path) = store.key_path(&key) else {
                    continue;
                };
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|a| a > age);
                if old {
                    aged.push(AgedBlob {
                        key,
                        job,
                        bytes: meta.len(),
                    });
                }
            }
            Ok(aged)
        })
        .await
    }

    async fn delete_aged(&self, blob: &AgedBlob) -> Result<(), StoreError> {
        let path = self.store.key_path(&blob.key)?;
        remove_quietly(&path).map_err(blob_err(&blob.key))
    }

    async fn delete_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError> {
        let store = self.store.clone();
        let keys = keys.to_vec();
        blocking(move || {
            for key in &keys {
                remove_quietly(&store.output_path(key)).map_err(blob_err(&key.to_string()))?;
            }
            Ok(())
        })
        .await
    }
}
