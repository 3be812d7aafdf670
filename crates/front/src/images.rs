//! `GET|HEAD /images/<id>/<preset>`: serve a finished variant with strong,
//! immutable caching (its URL never changes content: a new upload is a new id).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use pixpool_store::{JobId, JobState, Store};

use crate::body::{full, Body};
use crate::events::read_record;
use crate::problem::ApiError;
use crate::upload::sanitise_for_log;

/// Cache policy of every variant: content-addressed, never changes.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Serves one variant.
pub async fn serve(
    store: &Store,
    method: &Method,
    headers: &HeaderMap,
    raw_id: &str,
    preset: &str,
) -> Result<Response<Body>, ApiError> {
    let id = JobId::parse(raw_id).ok_or_else(|| ApiError::NoSuchJob(sanitise_for_log(raw_id)))?;
    let record = read_record(store, &id)
        .await?
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))?;
    if !record.presets.iter().any(|p| p == preset) {
        return Err(ApiError::NoSuchVariant(sanitise_for_log(preset)));
    }
    match record.state {
        JobState::Done => {}
        JobState::Failed => {
            return Err(ApiError::NoSuchVariant(format!(
                "{preset} (the job failed)"
            )))
        }
        JobState::Queued | JobState::Processing => return Err(ApiError::NotReady(id.to_string())),
    }
    let output = record
        .outputs
        .iter()
        .find(|o| o.preset == preset)
        .ok_or_else(|| ApiError::NoSuchVariant(sanitise_for_log(preset)))?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", output.etag)).ok();

    let not_modified = match (&etag, headers.get(header::IF_NONE_MATCH)) {
        (Some(tag), Some(inm)) => if_none_match(inm, tag),
        _ => false,
    };
    let mut resp = if not_modified {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        // Outputs are small (a 1600-px JPEG is a few hundred KB): one read.
        let path = store.root().join(&output.path);
        let bytes = if method == Method::HEAD {
            None
        } else {
            Some(
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| ApiError::Storage {
                        context: format!("could not read output {}", path.display()),
                        source,
                    })?,
            )
        };
        let mut r = Response::new(full(bytes.map(Bytes::from).unwrap_or_default()));
        if let Ok(v) = HeaderValue::from_str(&output.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(output.bytes));
        r
    };
    let h = resp.headers_mut();
    if let Some(tag) = etag {
        h.insert(header::ETAG, tag);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
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
