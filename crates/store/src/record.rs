//! The job record: one JSON document per job, the same shape on disk and in
//! `GET /jobs/<id>`, so what a client reads is exactly what the server knows.

use std::time::SystemTime;

// Shared with the wire protocol, which must not depend on the store: defined
// in `pixpool-model`, re-exported so `pixpool_store::JobId` paths keep working.
pub use pixpool_model::{JobId, JobState, OutputRecord, Placeholder, Problem};
use serde::{Deserialize, Serialize};

/// The original upload as the server saw it (never the client's name or type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Path of the original relative to the uploads directory (`raw/<id>.<ext>`).
    pub path: String,
    /// Format sniffed from the magic bytes (`jpeg`, `png`, `webp`, `gif`).
    pub format: String,
    /// Size in bytes as received.
    pub bytes: u64,
}

/// Milliseconds spent per pipeline stage on the last attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageMillis {
    /// Reading and decoding the original.
    pub decode: f64,
    /// Resizing to every preset.
    pub resize: f64,
    /// Encoding and writing every output.
    pub encode: f64,
}

/// The whole record of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: JobId,
    /// Where the job is.
    pub state: JobState,
    /// The presets asked for, by name.
    pub presets: Vec<String>,
    /// What was written (empty until done).
    #[serde(default)]
    pub outputs: Vec<OutputRecord>,
    /// Why the job failed (`null` otherwise).
    #[serde(default)]
    pub error: Option<Problem>,
    /// The original.
    pub source: SourceRecord,
    /// BLAKE3 of the original's bytes (hex), computed while it streamed in.
    #[serde(default)]
    pub content_hash: Option<String>,
    /// The dedup index entry this job holds (content hash + preset set).
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// How many times a worker started it.
    #[serde(default)]
    pub attempts: u32,
    /// The worker slot that claimed it, once claimed.
    #[serde(default)]
    pub worker: Option<u32>,
    /// When the 202 was decided (RFC 3339, UTC).
    pub queued_at: String,
    /// When a worker last started it.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it reached done or failed.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Per-stage timings of the last attempt.
    #[serde(default)]
    pub stage_ms: Option<StageMillis>,
    /// What a front-end shows while the image loads (once done).
    #[serde(default)]
    pub placeholder: Option<Placeholder>,
    /// The upload's own completion webhook (`callback_url`), as accepted at the door.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Where the completion webhooks stand, once the job is final and has any.
    #[serde(default)]
    pub webhook: Option<WebhookStatus>,
}

/// The completion webhooks of a final job, all destinations together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStatus {
    /// `pending` until every destination is `delivered`; `failed` once one gave up.
    pub state: WebhookState,
    /// Delivery attempts so far, every destination counted.
    pub attempts: u32,
    /// The HTTP status of the last answer (`null`: none yet, or no answer).
    pub last_status: Option<u16>,
}

/// See [`WebhookStatus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookState {
    /// Not yet delivered everywhere; attempts go on.
    Pending,
    /// Every destination answered 2xx.
    Delivered,
    /// A destination answered 410, or its attempts ran out.
    Failed,
}

impl JobRecord {
    /// A freshly accepted job.
    pub fn queued(id: JobId, source: SourceRecord, presets: Vec<String>) -> JobRecord {
        JobRecord {
            id,
            state: JobState::Queued,
            presets,
            outputs: Vec::new(),
            error: None,
            source,
            content_hash: None,
            dedup_key: None,
            attempts: 0,
            worker: None,
            queued_at: now_rfc3339(),
            started_at: None,
            finished_at: None,
            stage_ms: None,
            placeholder: None,
            callback_url: None,
            webhook: None,
        }
    }
}

/// A record as stored: its revision beside its fields, so that a compare-and-swap
/// reads both in one read. Records written before revisions existed read as revision 0.
#[derive(Serialize)]
struct Stored<'a> {
    revision: u64,
    #[serde(flatten)]
    record: &'a JobRecord,
}

#[derive(Deserialize)]
struct Loaded {
    #[serde(default)]
    revision: u64,
    #[serde(flatten)]
    record: JobRecord,
}

/// The stored form of `record` at `revision`.
pub(crate) fn encode(record: &JobRecord, revision: u64) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec_pretty(&Stored { revision, record })
}

/// A stored record and its revision.
pub(crate) fn decode(bytes: &[u8]) -> serde_json::Result<crate::backend::Versioned<JobRecord>> {
    let loaded: Loaded = serde_json::from_slice(bytes)?;
    Ok(crate::backend::Versioned {
        value: loaded.record,
        revision: loaded.revision,
    })
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_json() {
        let rec = JobRecord::queued(
            JobId::generate(),
            SourceRecord {
                path: "raw/x.jpg".into(),
                format: "jpeg".into(),
                bytes: 3,
            },
            vec!["medium".into()],
        );
        let json = serde_json::to_string(&rec).expect("serialize");
        let back: JobRecord = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, rec);
        assert!(json.contains(r#""state":"queued""#), "{json}");
        assert!(json.contains(r#""error":null"#), "{json}");
        // Stored with its revision; a record from before revisions reads as 0.
        let stored = encode(&rec, 7).expect("encode");
        let got = decode(&stored).expect("decode");
        assert_eq!((got.value, got.revision), (rec.clone(), 7));
        assert_eq!(decode(json.as_bytes()).expect("decode").revision, 0);
    }
}
