//! `GET|HEAD /images/<id>/<preset>`: serve a finished variant with strong,
//! immutable caching (its URL never changes content: a new upload is a new id).

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pixpool_imaging::{OutputFormat, Preset};
use pixpool_store::backend::{Blob, Blobs, VariantKey};
use pixpool_store::{JobId, JobState};

use crate::body::{full, Body};
use crate::events::read_record;
use crate::problem::ApiError;
use crate::upload::{query_param, sanitise_for_log};

/// Cache policy of every variant: content-addressed, never changes.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The same when tokens guard the API: a shared cache must not hand one
/// client's image to anyone who asks for its URL.
const CACHE_CONTROL_PRIVATE: &str = "private, max-age=31536000, immutable";

/// Serves one variant: of the preset's formats, the one `?format=` forces or `Accept`
/// negotiates ([`negotiate`](crate::negotiate)).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    state: &crate::State,
    private: bool,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    raw_id: &str,
    preset: &str,
) -> Result<Response<Body>, ApiError> {
    let id = JobId::parse(raw_id).ok_or_else(|| ApiError::NoSuchJob(sanitise_for_log(raw_id)))?;
    let blobs = &*state.blobs;
    let record = read_record(&*state.records, &id)
        .await?
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))?;
    if !record.presets.iter().any(|p| p == preset) {
        return Err(ApiError::NoSuchVariant(sanitise_for_log(preset)));
    }
    let no_such = || ApiError::NoSuchVariant(sanitise_for_log(preset));
    let forced = match query.and_then(|q| query_param(q, "format")) {
        Some(name) => Some(OutputFormat::from_name(&name).ok_or_else(|| {
            ApiError::NoSuchVariant(format!(
                "{} as {}",
                sanitise_for_log(preset),
                sanitise_for_log(&name)
            ))
        })?),
        None => None,
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let pick = |formats: &[OutputFormat]| match forced {
        Some(f) if formats.contains(&f) => Ok(f),
        Some(_) => Err(no_such()),
        None => Ok(crate::negotiate::choose(formats, accept)),
    };
    let (variant, vary) = match record.state {
        JobState::Done => {
            // The record lists the preset's outputs in its order, the fallback last,
            // each naming its format by its media type.
            let outputs: Vec<_> = record
                .outputs
                .iter()
                .filter(|o| o.preset == preset)
                .filter_map(|o| Some((OutputFormat::from_content_type(&o.content_type)?, o)))
                .collect();
            let formats: Vec<OutputFormat> = outputs.iter().map(|(f, _)| *f).collect();
            let format = pick(&formats)?;
            let (_, output) = outputs
                .into_iter()
                .find(|(f, _)| *f == format)
                .ok_or_else(no_such)?;
            let variant = Variant {
                key: VariantKey::new(&id, preset, format.extension()),
                content_type: output.content_type.clone(),
                etag: output.etag.clone(),
                len: output.bytes,
                bytes: None,
                cache: if private {
                    CACHE_CONTROL_PRIVATE
                } else {
                    CACHE_CONTROL
                },
            };
            (variant, formats.len() > 1)
        }
        JobState::Failed => {
            return Err(ApiError::NoSuchVariant(format!(
                "{preset} (the job failed)"
            )))
        }
        JobState::Queued => return Err(ApiError::NotReady(id.to_string())),
        // An `output` event has told the client this variant exists: serve it
        // before the job is done, negotiated over the formats the preset writes.
        JobState::Processing => {
            let spec = state
                .config
                .preset_specs
                .iter()
                .find(|(name, _)| name.as_str() == preset)
                .and_then(|(_, spec)| spec.parse::<Preset>().ok());
            let formats = spec
                .as_ref()
                .map_or_else(|| vec![OutputFormat::Jpeg], |p| p.formats_for(false));
            let format = pick(&formats)?;
            // A source with alpha writes the preset's alpha format instead of its
            // fallback.
            let mut tries = vec![format];
            if let Some(alpha) = spec.as_ref().and_then(|p| p.alpha_format) {
                if Some(&format) == formats.last() && alpha != format {
                    tries.push(alpha);
                }
            }
            let mut found = None;
            for f in tries {
                if let Some(v) = in_progress(blobs, &id, preset, f).await? {
                    found = Some(v);
                    break;
                }
            }
            let variant = found.ok_or_else(|| ApiError::NotReady(id.to_string()))?;
            (variant, formats.len() > 1)
        }
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", variant.etag)).ok();

    let not_modified = match (&etag, headers.get(header::IF_NONE_MATCH)) {
        (Some(tag), Some(inm)) => if_none_match(inm, tag),
        _ => false,
    };
    let mut resp = if not_modified {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        // Streamed from storage; nothing read for HEAD of a finished one (the record
        // has its size).
        let body = match (method == Method::HEAD, variant.bytes) {
            (true, _) => full(Bytes::new()),
            (false, Some(b)) => full(b),
            (false, None) => match blobs.get_variant(&variant.key).await? {
                Some(blob) => stream_body(blob),
                // Listed in a done record, yet gone: removed by hand, or by a sweep.
                None => return Err(ApiError::NoSuchVariant(sanitise_for_log(preset))),
            },
        };
        let mut r = Response::new(body);
        if let Ok(v) = HeaderValue::from_str(&variant.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(variant.len));
        r
    };
    let h = resp.headers_mut();
    if let Some(tag) = etag {
        h.insert(header::ETAG, tag);
    }
    if vary {
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match (private, variant.cache) {
            (true, CACHE_CONTROL_IN_PROGRESS) => "private, no-cache",
            (_, cache) => cache,
        }),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// Cache policy of a variant served while its job is still running: the job may
/// yet fail, and a failed job's outputs are removed.
const CACHE_CONTROL_IN_PROGRESS: &str = "no-cache";

/// A response body that streams a blob.
fn stream_body(blob: Blob) -> Body {
    BodyExt::boxed(StreamBody::new(
        blob.body.map(|chunk| chunk.map(Frame::data)),
    ))
}

/// What to send for one variant.
struct Variant {
    key: VariantKey,
    content_type: String,
    etag: String,
    /// Its size in bytes.
    len: u64,
    /// Already read (a variant of a running job is hashed for its ETag).
    bytes: Option<Bytes>,
    cache: &'static str,
}

/// A job still processing's variant in `format`, if the worker has already stored it. Variants
/// appear whole, so one that exists is complete; its ETag is the one the record will
/// carry (BLAKE3 of the bytes).
async fn in_progress(
    blobs: &dyn Blobs,
    id: &JobId,
    preset: &str,
    format: OutputFormat,
) -> Result<Option<Variant>, ApiError> {
    let key = VariantKey::new(id, preset, format.extension());
    let Some(blob) = blobs.get_variant(&key).await? else {
        return Ok(None);
    };
    let mut body = blob.body;
    let mut bytes = Vec::with_capacity(usize::try_from(blob.len).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.map_err(|source| ApiError::Storage {
            context: format!("could not read variant {key}"),
            source,
        })?);
    }
    Ok(Some(Variant {
        key,
        content_type: format.content_type().to_string(),
        etag: pixpool_store::output_etag(&bytes),
        len: bytes.len() as u64,
        bytes: Some(Bytes::from(bytes)),
        cache: CACHE_CONTROL_IN_PROGRESS,
    }))
}

/// RFC 9110 `If-None-Match`: `*`, or a list of (possibly weak) tags compared weakly.
fn if_none_match(header: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = header.to_str() else {
        return false;
    };
    let ours = etag.to_str().unwrap_or("");
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_handles_lists_weak_tags_and_star() {
        let tag = HeaderValue::from_static("\"abc\"");
        for (h, hit) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abcd\"", false),
            ("abc", false),
        ] {
            assert_eq!(
                if_none_match(&HeaderValue::from_static(h), &tag),
                hit,
                "{h}"
            );
        }
    }
}
