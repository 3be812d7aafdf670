//! `POST /upload`: stream the `image` part to disk, sniff it, record the job,
//! hand it to a worker, answer 202 — never holding the file in memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use multer::{Constraints, Multipart, SizeLimit};
use pixpool_imaging::Format;
use pixpool_protocol::JobSpec;
use pixpool_store::{JobId, JobRecord, SourceRecord};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use tracing::{info, instrument, warn};

use crate::body::{json, Body};
use crate::dispatch::DispatchError;
use crate::problem::ApiError;
use crate::State;

/// Bytes kept from the start of the file for sniffing the format.
const HEAD_LEN: usize = 64 * 1024;

/// Write buffer between the socket and the spool file: large enough that the
/// blocking-pool hop of each file write is amortised over many network chunks.
const SPOOL_BUFFER: usize = 256 * 1024;

/// Limit for the small text fields (`presets`).
const TEXT_FIELD_LIMIT: u64 = 4 * 1024;

/// The 202 body.
#[derive(Debug, Serialize)]
struct Accepted<'a> {
    id: &'a str,
    state: &'static str,
    status_url: String,
}

/// A file this request created; removed on drop unless the job was accepted.
#[derive(Debug)]
struct Spooled {
    path: PathBuf,
    keep: bool,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Handles one upload.
#[instrument(skip_all, fields(job_id))]
pub async fn upload(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| ApiError::NotMultipart(e.to_string()))?;
    let query_presets = req.uri().query().and_then(|q| query_param(q, "presets"));

    let limit = state.config.max_upload_bytes;
    let constraints = Constraints::new()
        .allowed_fields(vec!["image", "presets"])
        .size_limit(
            SizeLimit::new()
                // The whole body may carry the file plus the form's framing.
                .whole_stream(limit.saturating_add(64 * 1024))
                .for_field("image", limit)
                .for_field("presets", TEXT_FIELD_LIMIT),
        );
    let stream = req.into_body().into_data_stream().map_err(|e| e);
    let mut form = Multipart::with_constraints(stream, boundary, constraints);

    let id = JobId::generate();
    tracing::Span::current().record("job_id", id.as_str());
    let mut spooled: Option<(Spooled, Format, u64)> = None;
    let mut form_presets: Option<String> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multer_error(e, limit))?
    {
        match field.name() {
            Some("image") if spooled.is_none() => {
                let client_name = field.file_name().map(sanitise_for_log);
                let (file, head, bytes) =
                    spool(&state.store().part_path(&id), field, limit).await?;
                let format = match Format::sniff(&head) {
                    Some(f) => f,
                    None if bytes == 0 => return Err(ApiError::EmptyFile),
                    None => return Err(ApiError::UnsupportedFormat),
                };
                info!(client_name = client_name.as_deref().unwrap_or("-"), bytes, format = ?format, "upload received");
                spooled = Some((file, format, bytes));
            }
            Some("image") => {
                return Err(ApiError::BadMultipart("more than one `image` file".into()))
            }
            Some("presets") => {
                form_presets = Some(field.text().await.map_err(|e| multer_error(e, limit))?);
            }
            other => {
                return Err(ApiError::BadMultipart(format!(
                    "unexpected field {other:?}"
                )))
            }
        }
    }
    let (mut file, format, bytes) = spooled.ok_or(ApiError::MissingImage)?;
    let presets = state
        .config
        .resolve_presets(form_presets.as_deref().or(query_presets.as_deref()))?;

    // The original becomes raw/<id>.<ext>; the client's name is never a path.
    let raw_rel = format!("raw/{id}.{}", format.extension());
    let raw_path = state.store().root().join(&raw_rel);
    tokio::fs::rename(&file.path, &raw_path)
        .await
        .map_err(|source| ApiError::Storage {
            context: format!("could not move the upload into {}", raw_path.display()),
            source,
        })?;
    file.path = raw_path;
    let store = state.store().clone();
    let record = JobRecord::queued(
        id.clone(),
        SourceRecord {
            path: raw_rel,
            format: format.name().to_string(),
            bytes,
        },
        presets.clone(),
    );
    // Durable before the 202: the original's rename and the record.
    let rec = record.clone();
    let record_path = store.record_path(&id);
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        pixpool_store::fsutil::sync_dir(&store.raw_dir()).map_err(|source| ApiError::Storage {
            context: "could not sync the raw directory".into(),
            source,
        })?;
        store.write_record(&rec)?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Storage {
        context: "record writer failed".into(),
        source: std::io::Error::other(e),
    })??;
    let record_guard = Spooled {
        path: record_path,
        keep: false,
    };

    let spec = JobSpec {
        id: id.clone(),
        presets,
    };
    let ack = match state.dispatcher.submit(&spec).await {
        Ok(ack) => ack,
        Err(e) => {
            warn!(cause = %e, "no worker took the job; refusing the upload");
            return Err(ApiError::Unavailable(match e {
                DispatchError::AllBusy => "every image worker is busy; retry shortly".into(),
                other => other.to_string(),
            }));
        }
    };
    file.keep = true;
    let mut record_guard = record_guard;
    record_guard.keep = true;
    info!(
        worker = ack.worker,
        queue_depth = ack.queue_depth,
        ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
        "job accepted"
    );

    let status_url = format!("/jobs/{id}");
    let mut resp = Response::new(json(&Accepted {
        id: id.as_str(),
        state: "queued",
        status_url: status_url.clone(),
    }));
    *resp.status_mut() = StatusCode::ACCEPTED;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Streams one field into `path`; returns the file guard, its first bytes and its size.
async fn spool(
    path: &Path,
    mut field: multer::Field<'_>,
    limit: u64,
) -> Result<(Spooled, Vec<u8>, u64), ApiError> {
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
        keep: false,
    };
    let mut out = BufWriter::with_capacity(SPOOL_BUFFER, file);
    let mut head = Vec::with_capacity(1024);
    let mut bytes: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|e| multer_error(e, limit))? {
        keep_head(&mut head, &chunk);
        bytes += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| storage("could not write spool file", e))?;
    }
    out.flush()
        .await
        .map_err(|e| storage("could not write spool file", e))?;
    let file = out.into_inner();
    file.sync_all()
        .await
        .map_err(|e| storage("could not sync spool file", e))?;
    Ok((guard, head, bytes))
}

fn keep_head(head: &mut Vec<u8>, chunk: &Bytes) {
    let room = HEAD_LEN.saturating_sub(head.len());
    head.extend_from_slice(&chunk[..room.min(chunk.len())]);
}

fn multer_error(e: multer::Error, limit: u64) -> ApiError {
    use multer::Error as M;
    match e {
        M::FieldSizeExceeded { field_name, .. } if field_name.as_deref() != Some("image") => {
            ApiError::BadMultipart(format!("field {field_name:?} is too long"))
        }
        M::FieldSizeExceeded { .. } | M::StreamSizeExceeded { .. } => ApiError::TooLarge { limit },
        M::StreamReadFailed(cause) => ApiError::BodyRead(cause.to_string()),
        M::UnknownField { field_name } => ApiError::BadMultipart(format!(
            "unexpected field {:?} (expected `image` and optionally `presets`)",
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

/// The value of `key` in a query string (first occurrence, percent-decoded for `,`).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.replace("%2C", ",").replace("%2c", ","))
    })
}
