//! The webhook outbox in KV bucket `pixpool_outbox` (key = the entry key, value =
//! the entry's JSON, revision = the KV revision).

use async_nats::jetstream::kv;

use super::nats_err;
use super::records::{wrong_revision, KvRecords};
use crate::backend::{Outbox, Revision, Versioned};
use crate::outbox::{is_entry_key, OutboxEntry};
use crate::StoreError;

/// [`Outbox`] in a KV bucket, shared by every host's courier.
#[derive(Debug, Clone)]
pub struct KvOutbox {
    bucket: kv::Store,
}

impl KvOutbox {
    pub(super) fn new(bucket: kv::Store) -> KvOutbox {
        KvOutbox { bucket }
    }
}

fn checked(key: &str) -> Result<&str, StoreError> {
    if is_entry_key(key) {
        Ok(key)
    } else {
        Err(StoreError::BadKey { key: key.into() })
    }
}

fn encode(entry: &OutboxEntry) -> Result<bytes::Bytes, StoreError> {
    serde_json::to_vec(entry)
        .map(Into::into)
        .map_err(|source| StoreError::CorruptEntry {
            key: entry.key(),
            source,
        })
}

#[async_trait::async_trait]
impl Outbox for KvOutbox {
    async fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        let key = entry.key();
        self.bucket
            .put(checked(&key)?, encode(entry)?)
            .await
            .map(|_| ())
            .map_err(|e| nats_err(format!("write outbox entry {key}"), e))
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned<OutboxEntry>>, StoreError> {
        let Some(live) = KvRecords::live(&self.bucket, checked(key)?).await? else {
            return Ok(None);
        };
        let value =
            serde_json::from_slice(&live.value).map_err(|source| StoreError::CorruptEntry {
                key: key.into(),
                source,
            })?;
        Ok(Some(Versioned {
            value,
            revision: live.revision,
        }))
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        use futures_util::TryStreamExt;
        let keys = self
            .bucket
            .keys()
            .await
            .map_err(|e| nats_err("list the outbox", e))?;
        keys.try_collect::<Vec<String>>()
            .await
            .map_err(|e| nats_err("list the outbox", e))
    }

    async fn update(
        &self,
        entry: &OutboxEntry,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let key = entry.key();
        match self
            .bucket
            .update(checked(&key)?, encode(entry)?, expected)
            .await
        {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_revision(&e) => {
                Err(StoreError::Conflict {
                    id: entry.job.clone(),
                })
            }
            Err(e) => Err(nats_err(format!("update outbox entry {key}"), e)),
        }
    }

    async fn remove(&self, key: &str, expected: Revision) -> Result<(), StoreError> {
        match self
            .bucket
            .purge_expect_revision(checked(key)?, Some(expected))
            .await
        {
            Ok(()) => Ok(()),
            // Someone else changed it since: theirs to finish.
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_revision(&e) => {
                Ok(())
            }
            Err(e) => Err(nats_err(format!("remove outbox entry {key}"), e)),
        }
    }
}
