//! The job record: one JSON document per job, the same shape on disk and in
//! `GET /jobs/<id>`, so what a client reads is exactly what the server knows.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A server-generated job id: a UUIDv7 in its hyphenated form, so ids sort by
/// creation time. Parsing is the only way to build one from outside, which is
/// what keeps a URL segment from ever reaching the filesystem unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// Hex digits of the creation time (microseconds since the epoch, 52 bits:
/// enough until 2112) that open an id.
const ID_TIME_DIGITS: usize = 13;
/// Hex digits of randomness after the time: 104 bits, so that an id cannot be
/// guessed even knowing when it was made (a v7 UUID has about 32 random bits
/// within one millisecond of one process).
const ID_RANDOM_DIGITS: usize = 26;

impl JobId {
    /// A fresh id: the creation time, then 104 random bits, in lowercase hex.
    /// Ids sort by creation time, which is what the claim queues rely on: within
    /// one process strictly (the time part never repeats nor goes back), so
    /// that only the time part, never the random one, orders them.
    pub fn generate() -> JobId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LAST_MICROS: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = LAST_MICROS.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(last + 1);
            match LAST_MICROS.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next & 0xf_ffff_ffff_ffff,
                Err(seen) => last = seen,
            }
        };
        let mut random = [0u8; ID_RANDOM_DIGITS / 2];
        getrandom::fill(&mut random).expect("the operating system's random source is available");
        let mut s = format!("{micros:0width$x}", width = ID_TIME_DIGITS);
        for b in random {
            s.push_str(&format!("{b:02x}"));
        }
        JobId(s)
    }
    /// Validates an id taken from a URL, a file name or a message: the current
    /// form, or the canonical UUID of ids made before it (still on disk).
    pub fn parse(s: &str) -> Option<JobId> {
        // Exactly one spelling per id: no other spelling of the same id may name a
        // different file.
        let current = s.len() == ID_TIME_DIGITS + ID_RANDOM_DIGITS
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if current {
            return Some(JobId(s.to_string()));
        }
        let u = uuid::Uuid::try_parse(s).ok()?;
        let canon = u.hyphenated().to_string();
        (canon == s).then_some(JobId(canon))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobId::parse(&s).ok_or_else(|| format!("invalid job id {s:?}"))
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted and durably recorded; waiting for its worker.
    Queued,
    /// A worker is running it.
    Processing,
    /// Every output is written.
    Done,
    /// It will not be retried; `error` says why.
    Failed,
}

impl JobState {
    /// Done or failed: nothing more will happen to this job.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

/// An RFC 9457 problem document, used for HTTP errors and for a failed job's reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` or a `urn:pixpool:…`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, stable summary of the kind.
    pub title: String,
    /// The HTTP status this problem maps to.
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
}

impl Problem {
    /// Builds a problem with a `urn:pixpool:problem:<slug>` type.
    pub fn new(slug: &str, title: &str, status: u16, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:pixpool:problem:{slug}"),
            title: title.to_string(),
            status,
            detail: detail.into(),
        }
    }
}

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

/// One written variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The preset that produced it.
    pub preset: String,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// File size.
    pub bytes: u64,
    /// MIME type of the file.
    pub content_type: String,
    /// Path relative to the uploads directory (`processed/<id>-<preset>.<ext>`).
    pub path: String,
    /// Where it is served: `/images/<id>/<preset>`.
    #[serde(default)]
    pub url: String,
    /// BLAKE3 of the file's bytes (hex, first 128 bits): the HTTP `ETag`.
    #[serde(default)]
    pub etag: String,
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
        }
    }
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_reject_anything_but_the_canonical_form() {
        let id = JobId::generate();
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(JobId::parse(&id.as_str().to_uppercase()), None);
        assert_eq!(JobId::parse(&id.as_str()[1..]), None);
        assert_eq!(JobId::parse(&format!("{id}0")), None);
        for bad in ["", "..", "../../etc/passwd", "a/b", "x\0y"] {
            assert_eq!(JobId::parse(bad), None, "{bad:?}");
        }
        // Ids made before the current form stay valid, in their one spelling.
        let legacy = "0193a5b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(JobId::parse(legacy).map(|i| i.0), Some(legacy.to_string()));
        assert_eq!(JobId::parse(&legacy.to_uppercase()), None);
        assert_eq!(JobId::parse(&legacy.replace('-', "")), None);
    }

    #[test]
    fn job_ids_carry_over_96_random_bits_and_sort_by_time() {
        let ids: Vec<JobId> = (0..2000).map(|_| JobId::generate()).collect();
        // Within one millisecond, ids of one process still differ in their random
        // part, and each random digit takes all 16 values across the sample.
        let random: std::collections::HashSet<&str> =
            ids.iter().map(|i| &i.as_str()[ID_TIME_DIGITS..]).collect();
        assert_eq!(random.len(), ids.len());
        const { assert!(ID_RANDOM_DIGITS * 4 >= 96) };
        for digit in ID_TIME_DIGITS..ID_TIME_DIGITS + ID_RANDOM_DIGITS {
            let seen: std::collections::HashSet<u8> =
                ids.iter().map(|i| i.as_str().as_bytes()[digit]).collect();
            assert_eq!(seen.len(), 16, "digit {digit} is not random");
        }
        assert!(
            ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
            "ids of one process sort in the order they were made"
        );
    }

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
    }
}
