//! What a client sees of a job: the API's own types, built from the stored
//! record, for `GET /jobs/<id>` (the front) and a webhook's `data` (the courier).
//! The record keeps what the server needs (paths under the uploads directory, the
//! dedup key, the worker slot, the callback URL); none of that is contract.

use crate::{JobRecord, JobState, OutputRecord, Placeholder, Problem, StageMillis, WebhookStatus};
use serde::Serialize;

/// `GET /jobs/<id>`, a long-poll's answer, and the data of `done`/`failed` events.
#[derive(Debug, Serialize)]
pub struct JobView<'a> {
    /// The job id.
    pub id: &'a str,
    /// Where the job is.
    pub state: JobState,
    /// The presets asked for.
    pub presets: &'a [String],
    /// The variants written so far (all of them once done).
    pub outputs: Vec<OutputView<'a>>,
    /// Why it failed, as a problem document.
    pub error: Option<&'a Problem>,
    /// The original, as sniffed.
    pub source: SourceView<'a>,
    /// BLAKE3 of the original's bytes (hex): lets a client check what it sent.
    pub content_hash: Option<&'a str>,
    /// How many times a worker started it.
    pub attempts: u32,
    /// When the 202 was decided (RFC 3339, UTC).
    pub queued_at: &'a str,
    /// When a worker last started it.
    pub started_at: Option<&'a str>,
    /// When it reached done or failed.
    pub finished_at: Option<&'a str>,
    /// Per-stage timings of the last attempt, ms.
    pub stage_ms: Option<&'a StageMillis>,
    /// ThumbHash, BlurHash, dominant colour and aspect ratio, once done.
    pub placeholder: Option<&'a Placeholder>,
    /// Where the completion webhooks stand (`null`: the job has none, or is not final).
    pub webhook: Option<&'a WebhookStatus>,
    /// Where to follow it.
    pub status_url: String,
}

/// One variant, as `outputs[]` and the `output` event show it.
#[derive(Debug, Serialize)]
pub struct OutputView<'a> {
    /// The preset's name.
    pub preset: &'a str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size in bytes.
    pub bytes: u64,
    /// Its media type.
    pub content_type: &'a str,
    /// Where to fetch it (`/images/<id>/<preset>`).
    pub url: &'a str,
    /// Its strong validator (the `ETag`, unquoted).
    pub etag: &'a str,
}

/// The original as the client may see it: never where it lies on disk.
#[derive(Debug, Serialize)]
pub struct SourceView<'a> {
    /// The sniffed format (`jpeg`, `png`, `webp`, `gif`).
    pub format: &'a str,
    /// Its size in bytes.
    pub bytes: u64,
}

impl<'a> JobView<'a> {
    /// The view of `record`.
    pub fn of(record: &'a JobRecord) -> JobView<'a> {
        JobView {
            id: record.id.as_str(),
            state: record.state,
            presets: &record.presets,
            outputs: record.outputs.iter().map(OutputView::of).collect(),
            error: record.error.as_ref(),
            source: SourceView {
                format: &record.source.format,
                bytes: record.source.bytes,
            },
            content_hash: record.content_hash.as_deref(),
            attempts: record.attempts,
            queued_at: &record.queued_at,
            started_at: record.started_at.as_deref(),
            finished_at: record.finished_at.as_deref(),
            stage_ms: record.stage_ms.as_ref(),
            placeholder: record.placeholder.as_ref(),
            webhook: record.webhook.as_ref(),
            status_url: format!("/jobs/{}", record.id),
        }
    }
}

impl<'a> OutputView<'a> {
    /// The view of `output`.
    pub fn of(output: &'a OutputRecord) -> OutputView<'a> {
        OutputView {
            preset: &output.preset,
            width: output.width,
            height: output.height,
            bytes: output.bytes,
            content_type: &output.content_type,
            url: &output.url,
            etag: &output.etag,
        }
    }
}
