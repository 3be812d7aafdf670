//! `POST /upload`: stream the `image` part to disk, sniff it, record the job,
//! hand it to a worker, answer 202 — never holding the file in memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use multer::{Constraints, Multipart, SizeLimit};
use pixpool_imaging::{Format, Limits};
use pixpool_protocol::JobSpec;
use pixpool_store::backend::{Enqueued, Records};
use pixpool_store::embedded::Upload;
use pixpool_store::{JobId, JobRecord, JobState};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use tracing::{info, instrument, warn};

use crate::body::{json, Body};
use crate::framing::FramingError;
use crate::pace::{Pace, PaceError};
use crate::problem::ApiError;
use crate::State;

/// Bytes kept from the start of the file for sniffing the format.
const HEAD_LEN: usize = 64 * 1024;

/// Write buffer between the socket and the spool file: large enough that the
/// blocking-pool hop of each file write is amortised over many network chunks.
const SPOOL_BUFFER: usize = 256 * 1024;

/// Limit for the small text fields (`presets`, `callback_url`).
const TEXT_FIELD_LIMIT: u64 = 4 * 1024;

/// The 202 (or, for a finished duplicate, 200) body.
#[derive(Debug, Serialize)]
struct Accepted<'a> {
    id: &'a str,
    state: JobState,
    status_url: String,
    deduplicated: bool,
}

/// The spool file this request streamed to; removed on drop (once the job is
/// accepted, the store has moved it and there is nothing left to remove).
#[derive(Debug)]
struct Spooled {
    path: PathBuf,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The streamed `image` part.
#[derive(Debug)]
struct Received {
    file: Spooled,
    format: Format,
    bytes: u64,
    /// BLAKE3 of the content, hex.
    hash: String,
}

/// How long an upload waits for an identical, concurrent upload that holds
/// the dedup entry to record its job, before treating the entry as stale.
const DEDUP_WAIT: Duration = Duration::from_secs(5);

/// Handles one upload.
#[instrument(skip_all, fields(job_id))]
pub async fn upload(
    state: &std::sync::Arc<State>,
    req: Request<Incoming>,
    client: Option<crate::Client>,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| ApiError::NotMultipart(e.to_string()))?;
    let query_presets = req.uri().query().and_then(|q| query_param(q, "presets"));
    // Checked before the body is read when it comes in the query.
    let query_callback = req
        .uri()
        .query()
        .and_then(|q| query_value(q, "callback_url"));
    if let Some(url) = &query_callback {
        check_callback(state, url).await?;
    }
    // Refuse before the disk fills: an original and its outputs must fit with room to spare.
    match state.store().free_bytes() {
        Ok(free) if free < state.config.min_free_bytes => {
            warn!(
                free,
                min = state.config.min_free_bytes,
                "low disk space; refusing uploads"
            );
            return Err(ApiError::InsufficientStorage);
        }
        Ok(_) => {}
        Err(e) => warn!(cause = %e, "could not read free disk space"),
    }

    let limit = state.config.max_upload_bytes;
    let constraints = form_constraints(limit);
    // Idle limit and minimum rate: a trickling client cannot hold a
    // connection and a spool file for days.
    let pace = Pace {
        idle: state.config.body_idle_timeout,
        min_bytes_per_sec: state.config.min_upload_bytes_per_sec,
    };
    let stream = crate::pace::paced(req.into_body().into_data_stream(), pace);
    // Bounds what multer would buffer before the first boundary and in part headers.
    let stream = crate::framing::Guarded::new(Box::pin(stream), &boundary);
    let mut form = Multipart::with_constraints(stream, boundary, constraints);
    let idle_secs = state.config.body_idle_timeout.as_secs();

    let id = JobId::generate();
    tracing::Span::current().record("job_id", id.as_str());
    let mut received: Option<Received> = None;
    let mut form_presets: Option<String> = None;
    let mut form_callback: Option<String> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multer_error(e, limit, idle_secs))?
    {
        match field.name() {
            Some("image") if received.is_none() => {
                let client_name = field.file_name().map(sanitise_for_log);
                let path = state.store().part_path(state.config.slot, &id);
                let r = spool(&path, field, limit, idle_secs, &state.config.limits).await?;
                info!(
                    client_name = client_name.as_deref().unwrap_or("-"),
                    bytes = r.bytes,
                    format = r.format.name(),
                    "upload received"
                );
                received = Some(r);
            }
            Some("image") => {
                return Err(ApiError::BadMultipart("more than one `image` file".into()))
            }
            Some("presets") => {
                form_presets = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| multer_error(e, limit, idle_secs))?,
                );
            }
            Some("callback_url") => {
                form_callback = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| multer_error(e, limit, idle_secs))?,
                );
            }
            other => {
                return Err(ApiError::BadMultipart(format!(
                    "unexpected field {other:?}"
                )))
            }
        }
    }
    let received = received.ok_or(ApiError::MissingImage)?;
    let presets = state
        .config
        .resolve_presets(form_presets.as_deref().or(query_presets.as_deref()))?;
    let callback_url = match form_callback {
        Some(url) => Some(check_callback(state, &url).await?),
        None => match query_callback {
            Some(url) => Some(check_callback(state, &url).await?),
            None => None,
        },
    };

    // From here the upload becomes a job on its own task: a client that hangs up
    // mid-way (the request future dropped) cannot leave a job recorded and never
    // dispatched, or a dedup entry naming it; the job is finished or undone.
    let bytes = received.bytes;
    let dedup_key = dedup_key(
        &received.hash,
        &presets,
        callback_url.as_deref(),
        &state.config,
        client.as_ref(),
    );
    let task = tokio::spawn(admit(
        state.clone(),
        id.clone(),
        Job {
            received,
            presets,
            callback_url,
        },
        dedup_key,
    ));
    let admitted = task.await.map_err(|e| ApiError::Storage {
        context: "the upload's admission task failed".into(),
        source: std::io::Error::other(e),
    })??;
    let ack = match admitted {
        Admitted::Existing(existing) => {
            info!(existing = %existing.id, "duplicate upload; returning the existing job");
            return Ok(accepted_response(&existing.id, existing.state, true));
        }
        Admitted::New(ack) => ack,
    };
    state
        .config
        .metrics
        .add(pixpool_metrics::Counter::UploadBytes, bytes);
    info!(
        worker = ack.worker,
        queue_depth = ack.queue_depth,
        ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
        "job accepted"
    );
    Ok(accepted_response(&id, JobState::Queued, false))
}

/// An upload's callback URL if this server calls it (allowed prefix, public
/// addresses), normalised; otherwise a 400 saying why.
async fn check_callback(state: &State, raw: &str) -> Result<String, ApiError> {
    match state.config.callbacks.check(raw).await {
        Ok(url) => Ok(url.to_string()),
        Err(e) => {
            info!(cause = %e, "callback_url refused");
            Err(ApiError::BadCallback(e.to_string()))
        }
    }
}

/// What an upload asks for, received.
struct Job {
    received: Received,
    presets: Vec<String>,
    callback_url: Option<String>,
}

/// What became of an upload.
enum Admitted {
    /// Identical bytes, presets and client as a job a worker has acknowledged.
    Existing(Box<JobRecord>),
    /// A new job, acknowledged by a worker.
    New(Enqueued),
}

/// Single flight, then the job: the first upload of these bytes (for these
/// presets and this client) holds the dedup entry, the others get its job.
async fn admit(
    state: std::sync::Arc<State>,
    id: JobId,
    job: Job,
    dedup_key: String,
) -> Result<Admitted, ApiError> {
    let mut key = Some(dedup_key);
    match take_dedup_entry(&state, key.as_deref().unwrap_or_default(), &id).await? {
        Dedup::Existing(existing) => return Ok(Admitted::Existing(existing)),
        Dedup::Owner => {}
        Dedup::Bypass => key = None,
    }
    let result = accept(&state, id.clone(), job, key.as_deref()).await;
    if let (Err(_), Some(key)) = (&result, key) {
        release(&*state.records, &key, &id).await;
    }
    result.map(Admitted::New)
}

/// Makes the upload a job: original and record durable (the store's accept
/// sequence), then queued; undone if the queue does not take it.
async fn accept(
    state: &State,
    id: JobId,
    job: Job,
    dedup_key: Option<&str>,
) -> Result<Enqueued, ApiError> {
    let Job {
        received,
        presets,
        callback_url,
    } = job;
    let Received {
        file,
        format,
        bytes,
        hash,
    } = received;
    let upload = Upload {
        id: id.clone(),
        format: format.name(),
        extension: format.extension(),
        bytes,
        content_hash: hash,
        presets: presets.clone(),
        dedup_key: dedup_key.map(str::to_string),
        callback_url,
    };
    let admitted = pixpool_store::embedded::accept(
        state.store(),
        &state.blobs,
        &state.records,
        state.config.slot,
        upload,
    )
    .await?;
    // The spool file is the original now.
    drop(file);
    let spec = JobSpec { id, presets };
    match state.queue.enqueue(&spec).await {
        Ok(queued) => {
            // From here on the job is the queue's to finish.
            admitted.confirm().await;
            Ok(queued)
        }
        Err(e) => {
            warn!(cause = %e, "no worker took the job; refusing the upload");
            admitted.undo().await;
            Err(ApiError::Unavailable(e.to_string()))
        }
    }
}

/// `<content hash>-<hash of the presets and callback>[-<client>]`. The presets
/// count by name and specification, so that a preset changed on reload is not
/// served from outputs made to its old specification; the callback URL, so that an
/// upload naming its own callback gets a job that calls it; the client (which
/// token), so that one client cannot learn from a dedup hit what another has
/// uploaded.
fn dedup_key(
    content_hash: &str,
    presets: &[String],
    callback_url: Option<&str>,
    config: &crate::FrontConfig,
    client: Option<&crate::Client>,
) -> String {
    let mut specs: Vec<String> = presets
        .iter()
        .map(|name| match config.preset_specs.get(name) {
            Some(spec) => spec.clone(),
            None => name.clone(),
        })
        .collect();
    specs.sort_unstable();
    if let Some(url) = callback_url {
        // After the sort: a line no preset specification can be.
        specs.push(format!("callback {url}"));
    }
    let presets_hash = blake3::hash(specs.join("\n").as_bytes());
    let mut key = format!("{content_hash}-{}", &presets_hash.to_hex()[..16]);
    if let Some(client) = client {
        key.push('-');
        key.push_str(client.tag());
    }
    key
}

/// What the dedup index says of an upload.
enum Dedup {
    /// This upload holds the entry: it becomes the job.
    Owner,
    /// An identical upload's job, acknowledged by a worker.
    Existing(Box<JobRecord>),
    /// The holder's job was not acknowledged in time: process this upload as
    /// its own job, without the index (at worst, the same bytes twice).
    Bypass,
}

/// Takes the dedup entry for `key`, or returns the job that holds it — only once
/// a worker has acknowledged that job, since until then its dispatch may still
/// fail and remove it. Waits (briefly) for a concurrent identical upload; an
/// entry whose job failed on the server side, or that stays without a record,
/// is replaced so that the new upload is processed.
async fn take_dedup_entry(state: &State, key: &str, id: &JobId) -> Result<Dedup, ApiError> {
    let records = &*state.records;
    let deadline = tokio::time::Instant::now() + DEDUP_WAIT;
    loop {
        let Some(holder) = records.dedup_claim(key, id).await? else {
            return Ok(Dedup::Owner);
        };
        let waiting = tokio::time::Instant::now() < deadline;
        match crate::events::read_record(records, &holder).await {
            Ok(Some(rec))
                if rec.state == JobState::Failed
                    && rec.error.as_ref().is_some_and(|p| p.status >= 500) =>
            {
                // A server-side failure is not the image's fault: process anew.
                release(records, key, &holder).await;
            }
            Ok(Some(rec))
                if rec.state != JobState::Queued
                    || state.queue.is_queued(&holder).await.unwrap_or(false) =>
            {
                return Ok(Dedup::Existing(Box::new(rec)))
            }
            // Recorded, not yet acknowledged: its dispatch may still fail.
            Ok(Some(_)) if waiting => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(Some(_)) => {
                warn!(holder = %holder, "identical upload still unacknowledged; processing this one apart");
                return Ok(Dedup::Bypass);
            }
            Ok(None) | Err(_) if waiting => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Out of reach is not absent: the holder's job may be alive (503).
            Err(ApiError::Store(e)) if e.is_unavailable() => return Err(ApiError::Store(e)),
            Ok(None) | Err(_) => {
                warn!(holder = %holder, "dedup entry without a job; replacing it");
                release(records, key, &holder).await;
            }
        }
    }
}

async fn release(records: &dyn Records, key: &str, holder: &JobId) {
    if let Err(e) = records.dedup_release(key, holder).await {
        warn!(cause = %e, "could not release a dedup entry");
    }
}

fn accepted_response(id: &JobId, state: JobState, deduplicated: bool) -> Response<Body> {
    let status_url = format!("/jobs/{id}");
    let mut resp = Response::new(json(&Accepted {
        id: id.as_str(),
        state,
        status_url: status_url.clone(),
        deduplicated,
    }));
    *resp.status_mut() = if state == JobState::Done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, v);
    }
    resp
}

/// The multipart limits: only `image`, `presets` and `callback_url`, each bounded,
/// and the whole body bounded (multer has no limits by default).
fn form_constraints(limit: u64) -> Constraints {
    Constraints::new()
        .allowed_fields(vec!["image", "presets", "callback_url"])
        .size_limit(
            SizeLimit::new()
                // The whole body may carry the file plus the form's framing.
                .whole_stream(limit.saturating_add(64 * 1024))
                .for_field("image", limit)
                .for_field("presets", TEXT_FIELD_LIMIT)
                .for_field("callback_url", TEXT_FIELD_LIMIT),
        )
}

/// Streams one field into `path`, hashing it; sniffs the format from its first bytes.
async fn spool(
    path: &Path,
    mut field: multer::Field<'_>,
    limit: u64,
    idle_secs: u64,
    limits: &Limits,
) -> Result<Received, ApiError> {
    let storage = |context: &str, source| ApiError::Storage {
        context: format!("{context} {}", path.display()),
        source,
    };
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| storage("could not create spool file", e))?;
    let guard = Spooled {
        path: path.to_path_buf(),
    };
    let mut out = BufWriter::with_capacity(SPOOL_BUFFER, file);
    let mut head = Vec::with_capacity(1024);
    let mut hasher = blake3::Hasher::new();
    let mut bytes: u64 = 0;
    let mut checked = false;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multer_error(e, limit, idle_secs))?
    {
        keep_head(&mut head, &chunk);
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        // As soon as the header is in, refuse what is not an image or is too
        // large, before the rest of the body is read.
        if !checked && head.len() >= HEAD_LEN {
            check_header(&head, bytes, limits)?;
            checked = true;
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| storage("could not write spool file", e))?;
    }
    let (format, dims) = check_header(&head, bytes, limits)?;
    out.flush()
        .await
        .map_err(|e| storage("could not write spool file", e))?;
    let file = out.into_inner();
    file.sync_all()
        .await
        .map_err(|e| storage("could not sync spool file", e))?;
    check_animation(path, format, dims, limits).await?;
    Ok(Received {
        file: guard,
        format,
        bytes,
        hash: hasher.finalize().to_hex().to_string(),
    })
}

/// Sniffs the format and, where the header can be parsed, checks the declared
/// dimensions against the limits. A header that cannot be fully parsed from
/// the first bytes (a huge ICC profile before the frame header) is left to the
/// worker, which enforces the same limits before decoding.
fn check_header(
    head: &[u8],
    bytes: u64,
    limits: &Limits,
) -> Result<(Format, Option<(u32, u32)>), ApiError> {
    let format = match Format::sniff(head) {
        Some(f) => f,
        None if bytes == 0 => return Err(ApiError::EmptyFile),
        None => return Err(ApiError::UnsupportedFormat),
    };
    match pixpool_imaging::probe(head) {
        Ok(p) => {
            limits
                .check_dimensions(p.width, p.height)
                .map_err(|e| ApiError::LimitExceeded(e.to_string()))?;
            Ok((format, Some((p.width, p.height))))
        }
        Err(e) if e.is_limit_exceeded() => Err(ApiError::LimitExceeded(e.to_string())),
        Err(e) if e.is_unsupported() => Err(ApiError::UnsupportedCoding(e.to_string())),
        Err(_) => Ok((format, None)),
    }
}

/// Refuses animations with too many frames (or frames × area), counted on
/// the spooled file without decoding it.
async fn check_animation(
    path: &Path,
    format: Format,
    dims: Option<(u32, u32)>,
    limits: &Limits,
) -> Result<(), ApiError> {
    let (Format::Gif | Format::WebP, Some((w, h))) = (format, dims) else {
        return Ok(());
    };
    let (p, l) = (path.to_path_buf(), *limits);
    // Every frame on its own size too: a 1×1 screen may carry a huge frame
    // anywhere in the file, not only within the head the probe saw.
    let read_back = |source| ApiError::Storage {
        context: "could not read the upload back".into(),
        source,
    };
    let frames = tokio::task::spawn_blocking(move || {
        // Buffered by the frame walker itself.
        std::fs::File::open(&p).map(|file| pixpool_imaging::check_animation(file, format, &l))
    })
    .await
    .map_err(|e| ApiError::Storage {
        context: "frame counter failed".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(read_back)?
    .map_err(|e| {
        if e.is_limit_exceeded() {
            ApiError::LimitExceeded(e.to_string())
        } else {
            read_back(std::io::Error::other(e))
        }
    })?;
    l.check_frames(frames, w, h)
        .map_err(|e| ApiError::LimitExceeded(e.to_string()))
}

fn keep_head(head: &mut Vec<u8>, chunk: &Bytes) {
    let room = HEAD_LEN.saturating_sub(head.len());
    head.extend_from_slice(&chunk[..room.min(chunk.len())]);
}

fn multer_error(e: multer::Error, limit: u64, idle_secs: u64) -> ApiError {
    use multer::Error as M;
    match e {
        M::FieldSizeExceeded { field_name, .. } if field_name.as_deref() != Some("image") => {
            ApiError::BadMultipart(format!("field {field_name:?} is too long"))
        }
        M::FieldSizeExceeded { .. } | M::StreamSizeExceeded { .. } => ApiError::TooLarge { limit },
        M::StreamReadFailed(cause) if cause.downcast_ref::<PaceError>().is_some() => {
            match cause.downcast_ref::<PaceError>() {
                Some(PaceError::TooSlow {
                    min_bytes_per_sec, ..
                }) => ApiError::TooSlow(*min_bytes_per_sec),
                _ => ApiError::BodyTimeout(idle_secs),
            }
        }
        M::StreamReadFailed(cause) if cause.downcast_ref::<FramingError>().is_some() => {
            ApiError::Framing(cause.to_string())
        }
        M::StreamReadFailed(cause) => ApiError::BodyRead(cause.to_string()),
        M::UnknownField { field_name } => ApiError::BadMultipart(format!(
            "unexpected field {:?} (expected `image`, and optionally `presets` and `callback_url`)",
            field_name
                .as_deref()
                .map(sanitise_for_log)
                .unwrap_or_default()
        )),
        M::NoMultipart | M::NoBoundary | M::DecodeContentType(_) => {
            ApiError::NotMultipart(e.to_string())
        }
        other => ApiError::BadMultipart(other.to_string()),
    }
}

/// A client-supplied string made safe for a log line: escaped, and cut short.
pub fn sanitise_for_log(s: &str) -> String {
    let mut out: String = s.chars().take(128).flat_map(char::escape_debug).collect();
    if s.chars().count() > 128 {
        out.push('…');
    }
    out
}

/// The value of `key` in a query string, fully form-decoded (first occurrence).
pub fn query_value(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The value of `key` in a query string (first occurrence, percent-decoded for `,`).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.replace("%2C", ",").replace("%2c", ","))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs the form parser over `body` as the upload path does; returns the
    /// error it maps to, if any.
    fn parse(body: Vec<u8>, limit: u64) -> Result<(), ApiError> {
        parse_chunked(body, limit, 97).0
    }

    /// The same, in chunks of `size`; also returns how many bytes the parser
    /// pulled from the body: what it can have buffered at most.
    fn parse_chunked(body: Vec<u8>, limit: u64, size: usize) -> (Result<(), ApiError>, usize) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pulled = std::sync::Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let counter = pulled.clone();
        let result = rt.block_on(async move {
            use futures_util::StreamExt;
            let chunks: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
            let source = futures_util::stream::iter(chunks).map(move |c| {
                counter.fetch_add(c.len(), Ordering::Relaxed);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
            });
            let guarded = crate::framing::Guarded::new(source, "B");
            let mut form = Multipart::with_constraints(guarded, "B", form_constraints(limit));
            while let Some(mut field) = form
                .next_field()
                .await
                .map_err(|e| multer_error(e, limit, 1))?
            {
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| multer_error(e, limit, 1))?
                {
                    let _ = check_header(&chunk, chunk.len() as u64, &Limits::default());
                }
            }
            Ok(())
        });
        (result, pulled.load(Ordering::Relaxed))
    }

    fn framed(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, data) in parts {
            b.extend_from_slice(format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x\"\r\n\r\n").as_bytes());
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--B--\r\n");
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn arbitrary_bodies_parse_or_fail_as_client_errors(body in prop::collection::vec(any::<u8>(), 0..3000)) {
            if let Err(e) = parse(body, 1024) {
                prop_assert!(!e.is_server_error(), "{e}");
            }
        }

        #[test]
        fn mutated_forms_parse_or_fail_as_client_errors(
            data in prop::collection::vec(any::<u8>(), 0..2000),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        ) {
            let mut body = framed(&[("presets", b"thumb"), ("image", &data)]);
            let n = body.len();
            for (at, x) in flips {
                body[at % n] ^= x | 1;
            }
            if let Err(e) = parse(body, 1024) {
                prop_assert!(!e.is_server_error(), "{e}");
            }
        }

        /// Adversarial preambles and part headers: junk of any length and shape
        /// (dashes, CRs, LFs, near-boundaries) before the first boundary or in a
        /// header block. Whatever the chunking, the parser either succeeds or
        /// refuses with a client error, and never pulls (so never buffers) more
        /// than the framing bounds allow plus one chunk.
        #[test]
        fn adversarial_framing_is_refused_within_the_bounds(
            junk in prop::collection::vec(
                prop::sample::select(vec![b'-', b'\r', b'\n', b'B', b'a', b':', b' ']),
                0..40_000,
            ),
            in_headers in any::<bool>(),
            size in 1usize..20_000,
        ) {
            // The junk never completes what it imitates: a boundary in the
            // preamble, the blank line ending a header block.
            let never = if in_headers { b"\r\n\r\n".as_slice() } else { b"--B".as_slice() };
            let mut body = if in_headers {
                b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n".to_vec()
            } else {
                Vec::new()
            };
            for byte in junk {
                body.push(byte);
                if body.ends_with(never) {
                    *body.last_mut().expect("just pushed") = b'a';
                }
            }
            let (result, pulled) = parse_chunked(body, 1 << 20, size);
            match &result {
                Err(e) => prop_assert!(!e.is_server_error(), "{e}"),
                Ok(()) => prop_assert!(false, "a form without framing was accepted"),
            }
            let bound = crate::framing::MAX_PREAMBLE_BYTES.max(crate::framing::MAX_PART_HEADER_BYTES)
                + 128 + size;
            prop_assert!(pulled <= bound, "pulled {pulled} bytes, bound {bound}");
        }

        #[test]
        fn oversized_files_are_413(extra in 1usize..5000) {
            let data = vec![0u8; 1024 + extra];
            let err = parse(framed(&[("image", &data)]), 1024).expect_err("over the limit");
            prop_assert!(matches!(err, ApiError::TooLarge { limit: 1024 }), "{err}");
        }

        #[test]
        fn client_names_are_escaped_and_bounded_in_logs(name in ".*") {
            let logged = sanitise_for_log(&name);
            prop_assert!(logged.chars().all(|c| !c.is_control()));
            prop_assert!(logged.chars().count() <= 128 * 10 + 1);
        }
    }
}
