//! Job records and the dedup index in JetStream KV buckets.

use async_nats::jetstream::{kv, stream};
use pixpool_model::JobId;

use super::{kv_key, nats_err, unanswered_retried};
use crate::backend::{Durability, Records, Revision, Versioned};
use crate::record::JobRecord;
use crate::StoreError;

/// [`Records`] in KV buckets `pixpool_jobs` and `pixpool_dedup`.
///
/// Revisions are the KV revisions (stream sequences of the bucket), so a
/// compare-and-swap is the server's "expected last subject sequence" check: of two
/// writers at one revision, the server lets one through. Every write is acknowledged
/// once a majority of the bucket's replicas stored it (and on disk at once where the
/// servers run with `sync_interval: always`), so [`Durability`] makes no difference.
#[derive(Debug, Clone)]
pub struct KvRecords {
    jobs: kv::Store,
    dedup: kv::Store,
}

impl KvRecords {
    pub(super) fn new(jobs: kv::Store, dedup: kv::Store) -> KvRecords {
        KvRecords { jobs, dedup }
    }

    /// The live entry of `key` in `store`: a delete or purge marker reads as none.
    ///
    /// Asked of the bucket's leader, not of any replica (the KV client's direct get):
    /// a follower may not have applied a write the leader acknowledged yet, and a job
    /// answered 202 must never read as absent (a worker would drop it, a client get a
    /// 404). Without a quorum there is no leader, and the read fails.
    pub(super) async fn live(store: &kv::Store, key: &str) -> Result<Option<Live>, StoreError> {
        let subject = format!("$KV.{}.{key}", store.name);
        let read = unanswered_retried(|| store.stream.get_last_raw_message_by_subject(&subject));
        let message = match read.await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None)
            }
            Err(e) => return Err(nats_err(format!("read KV entry {key}"), e)),
        };
        let removed = message
            .headers
            .get(KV_OPERATION)
            .is_some_and(|op| op.as_str() != "PUT");
        Ok((!removed).then(|| Live {
            value: message.payload,
            revision: message.sequence,
        }))
    }
}

/// The header a KV write names its operation in (`PUT`, `DEL`, `PURGE`; none: put).
const KV_OPERATION: &str = "KV-Operation";

/// A KV entry's value and revision.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) value: bytes::Bytes,
    pub(super) revision: u64,
}

fn encode(record: &JobRecord) -> Result<bytes::Bytes, StoreError> {
    serde_json::to_vec(record)
        .map(Into::into)
        .map_err(|source| StoreError::CorruptEntry {
            key: record.id.to_string(),
            source,
        })
}

#[async_trait::async_trait]
impl Records for KvRecords {
    async fn create(&self, record: &JobRecord) -> Result<Revision, StoreError> {
        let key = record.id.to_string();
        let value = encode(record)?;
        match unanswered_retried(|| self.jobs.create(&key, value.clone())).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || wrong_revision(&e) => {
                Err(StoreError::Conflict {
                    id: record.id.clone(),
                })
            }
            Err(e) => Err(nats_err(format!("create job record {key}"), e)),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<Versioned<JobRecord>>, StoreError> {
        let key = id.to_string();
        let Some(entry) = KvRecords::live(&self.jobs, &key).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&entry.value)
            .map_err(|source| StoreError::CorruptEntry { key, source })?;
        Ok(Some(Versioned {
            value,
            revision: entry.revision,
        }))
    }

    async fn update(
        &self,
        record: &JobRecord,
        expected: Revision,
        _durability: Durability,
    ) -> Result<Revision, StoreError> {
        let key = record.id.to_string();
        // A deleted record's last revision is its delete marker's, which no reader
        // was given: an update of a deleted job is a conflict, never a resurrection.
        let value = encode(record)?;
        match unanswered_retried(|| self.jobs.update(&key, value.clone(), expected)).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_revision(&e) => {
                Err(StoreError::Conflict {
                    id: record.id.clone(),
                })
            }
            Err(e) => Err(nats_err(format!("update job record {key}"), e)),
        }
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        // Purge, not delete: no history is kept of a removed job, and its key reads
        // as absent either way.
        self.jobs
            .purge(id.to_string())
            .await
            .map_err(|e| nats_err(format!("delete job record {id}"), e))
    }

    fn ids(&self) -> crate::backend::IdStream {
        use futures_util::StreamExt;
        let jobs = self.jobs.clone();
        let listing =
            async move {
                match jobs.keys().await {
                    Ok(keys) => keys
                        .map(|key| match key {
                            Ok(key) => JobId::parse(&key).ok_or_else(|| {
                                nats_err(
                                    "list the job records",
                                    std::io::Error::other(format!("{key:?} is not a job id")),
                                )
                            }),
                            Err(e) => Err(nats_err("list the job records", e)),
                        })
                        .boxed(),
                    Err(e) => futures_util::stream::once(async move {
                        Err(nats_err("list the job records", e))
                    })
                    .boxed(),
                }
            };
        Box::pin(futures_util::stream::once(listing).flatten())
    }

    async fn dedup_claim(&self, key: &str, id: &JobId) -> Result<Option<JobId>, StoreError> {
        let kv_key = kv_key(key)?;
        // Create-if-absent, retried when the holder went away between the failed
        // create and the read (then the entry is free again).
        for _ in 0..8 {
            let claim = unanswered_retried(|| self.dedup.create(&kv_key, id.to_string().into()));
            match claim.await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || wrong_revision(&e) => {}
                Err(e) => return Err(nats_err(format!("claim dedup entry {key}"), e)),
            }
            if let Some(entry) = KvRecords::live(&self.dedup, &kv_key).await? {
                let holder = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(JobId::parse);
                return holder.map(Some).ok_or_else(|| {
                    // Written by something other than this backend: refused, as a
                    // corrupt record is, rather than taken for a job.
                    nats_err(
                        format!("read dedup entry {key}"),
                        std::io::Error::other("it holds no job id"),
                    )
                });
            }
            // A racing write not yet committed, or a holder just gone: try again
            // once it has settled.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(nats_err(
            format!("claim dedup entry {key}"),
            std::io::Error::other("the entry kept changing hands"),
        ))
    }

    async fn dedup_release(&self, key: &str, id: &JobId) -> Result<(), StoreError> {
        let kv_key = kv_key(key)?;
        let Some(entry) = KvRecords::live(&self.dedup, &kv_key).await? else {
            return Ok(());
        };
        if entry.value != id.to_string().as_bytes() {
            return Ok(());
        }
        // At the revision read: if another upload took the entry since, its newer
        // revision makes this purge fail, and the entry stays that upload's.
        match self
            .dedup
            .purge_expect_revision(&kv_key, Some(entry.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_revision(&e) => {
                Ok(())
            }
            Err(e) => Err(nats_err(format!("release dedup entry {key}"), e)),
        }
    }

    /// Both buckets' stream info, asked of the server (the client's copy is a cache).
    async fn ready(&self) -> Result<(), StoreError> {
        for kv in [&self.jobs, &self.dedup] {
            super::has_leader(&kv.stream, &format!("KV bucket {}", kv.name)).await?;
        }
        Ok(())
    }
}

/// Whether `e` is the server refusing a write at a stale revision. The client maps
/// only JetStream error 10071 to its "wrong last revision"; a clustered stream with
/// several writes to one key in flight answers 10164 (also "wrong last sequence"),
/// which the client reports as "other", inside its error chain.
pub(super) fn wrong_revision(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::{Error, ErrorCode};
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(js) = c.downcast_ref::<Error>() {
            let code = js.error_code();
            return code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        cause = c.source();
    }
    false
}
