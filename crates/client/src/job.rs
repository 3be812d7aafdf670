//! One image's trip: `POST /upload` (waiting out 503s as the server asks),
//! then `GET /jobs/<id>?wait=30` until the job is `done` or `failed`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{header, Method, StatusCode};
use serde_json::Value;
use tracing::debug;

use crate::files::Image;
use crate::multipart::FileBody;
use crate::progress::Progress;
use crate::report::{Outcome, Problem};
use crate::server::{read_json, Connection, ServerError, ServerUrl};
use crate::Token;

/// How many times an upload answered `503 Service Unavailable` (every worker
/// queue full, or none up) is sent again, each after the server's
/// `Retry-After`, before the image counts as refused.
pub const MAX_BUSY_RETRIES: u32 = 8;

/// Longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Delay after a 503 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many times a request that failed in transit (connection refused or
/// reset: a front restarting) is sent again, after [`TRANSPORT_BACKOFF`]
/// doubled each time.
const MAX_TRANSPORT_RETRIES: u32 = 4;

/// First delay before re-sending after a transport error.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(250);

/// The long-poll: the server answers as soon as the job ends, or after this.
const LONG_POLL_SECS: u64 = 30;

/// A long-poll with no answer this long after the server's own deadline is
/// given up (and sent again) rather than trusted forever.
const LONG_POLL_GRACE: Duration = Duration::from_secs(15);

/// What an upload needs to know, shared by every task.
#[derive(Debug)]
pub struct Uploader {
    /// The server.
    pub url: ServerUrl,
    /// `?presets=` value, already validated; `None` for the server's default.
    pub presets: Option<String>,
    /// Bearer token, if any.
    pub token: Option<Token>,
    /// 503s waited out so far, over every upload.
    busy_retries: AtomicUsize,
}

/// A job the server took.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The job id.
    pub id: String,
    /// Its state in the upload's answer.
    pub state: String,
    /// The server already had these bytes with these presets: this is the
    /// earlier job, nothing is processed again.
    pub deduplicated: bool,
}

impl Accepted {
    /// The outcome if the upload's answer already is final (a duplicate of a
    /// job that is done); `None` when the job must be followed.
    pub fn final_outcome(&self) -> Option<Outcome> {
        (self.state == "done").then(|| Outcome::Done {
            id: self.id.clone(),
            deduplicated: self.deduplicated,
        })
    }
}

impl Uploader {
    /// An uploader for `url`; `presets` is the `?presets=` value.
    pub fn new(url: ServerUrl, presets: Option<String>, token: Option<Token>) -> Uploader {
        Uploader {
            url,
            presets,
            token,
            busy_retries: AtomicUsize::new(0),
        }
    }

    /// How many uploads answered 503 were sent again, over the whole run.
    pub fn busy_retries(&self) -> usize {
        self.busy_retries.load(Ordering::Relaxed)
    }

    /// Uploads one image; `Err` is the reason the server (or the network)
    /// refused it.
    pub async fn upload(
        &self,
        conn: &mut Connection,
        image: &Image,
        progress: &Progress,
    ) -> Result<Accepted, Problem> {
        let path = match &self.presets {
            Some(presets) => format!("/upload?presets={presets}"),
            None => "/upload".to_string(),
        };
        let mut busy = 0;
        let mut transport = 0;
        loop {
            let (body, content_type) = FileBody::open(&image.path, image.bytes, image.format)
                .await
                .map_err(|e| Problem::local(format!("could not open the file: {e}")))?;
            let mut req = conn
                .request(Method::POST, &path)
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CONTENT_LENGTH, body.len())
                .header(header::ACCEPT, "application/json");
            if let Some(token) = &self.token {
                req = req.header(header::AUTHORIZATION, token.bearer());
            }
            let req = req
                .body(body.boxed())
                .map_err(|e| Problem::local(format!("could not build the request: {e}")))?;

            let answer = match conn.send(req).await {
                Ok(resp) => read_json(resp).await,
                Err(e) => Err(e),
            };
            let (status, headers, body) = match answer {
                Ok(answer) => answer,
                Err(e) if transport < MAX_TRANSPORT_RETRIES => {
                    debug!(cause = %chain(&e), path = %image.path.display(), "upload failed in transit; retrying");
                    tokio::time::sleep(TRANSPORT_BACKOFF * 2u32.pow(transport)).await;
                    transport += 1;
                    continue;
                }
                Err(e) => return Err(Problem::local(chain(&e))),
            };
            match status {
                StatusCode::OK | StatusCode::ACCEPTED => return accepted(&body),
                StatusCode::SERVICE_UNAVAILABLE if busy < MAX_BUSY_RETRIES => {
                    busy += 1;
                    let delay = retry_after(&headers);
                    let total = self.busy_retries.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.busy(total, delay);
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    let mut problem = Problem::from_response(status, &body);
                    if busy > 0 {
                        problem.detail = Some(match problem.detail.take() {
                            Some(detail) => format!("{detail} (after {busy} retries)"),
                            None => format!("after {busy} retries"),
                        });
                    }
                    return Err(problem);
                }
            }
        }
    }

    /// Follows an accepted job with long-polls until it ends.
    pub async fn follow(&self, conn: &mut Connection, job: Accepted) -> Outcome {
        let path = format!("/jobs/{}?wait={LONG_POLL_SECS}", job.id);
        let deadline = Duration::from_secs(LONG_POLL_SECS) + LONG_POLL_GRACE;
        let mut transport = 0;
        loop {
            let poll = conn.get_json(&path, self.token.as_ref());
            let answer = match tokio::time::timeout(deadline, poll).await {
                Ok(answer) => answer,
                Err(_) => {
                    // The connection may be wedged: start afresh.
                    *conn = Connection::new(self.url.clone());
                    Err(ServerError::Timeout(deadline))
                }
            };
            let record = match answer {
                Ok(record) => record,
                Err(ServerError::Status { status, body }) => {
                    return Outcome::Failed {
                        id: job.id,
                        deduplicated: job.deduplicated,
                        problem: Problem::from_response(status, &body),
                    }
                }
                Err(e) if transport < MAX_TRANSPORT_RETRIES => {
                    debug!(cause = %chain(&e), job_id = %job.id, "long-poll failed; retrying");
                    tokio::time::sleep(TRANSPORT_BACKOFF * 2u32.pow(transport)).await;
                    transport += 1;
                    continue;
                }
                Err(e) => {
                    return Outcome::Failed {
                        id: job.id,
                        deduplicated: job.deduplicated,
                        problem: Problem::local(format!("lost track of the job: {}", chain(&e))),
                    }
                }
            };
            transport = 0;
            match record.get("state").and_then(Value::as_str) {
                Some("done") => {
                    return Outcome::Done {
                        id: job.id,
                        deduplicated: job.deduplicated,
                    }
                }
                Some("failed") => {
                    let problem = record
                        .get("error")
                        .filter(|e| e.is_object())
                        .map(|e| Problem::from_json(e, None))
                        .unwrap_or_else(|| Problem::local("failed, without a reason".into()));
                    return Outcome::Failed {
                        id: job.id,
                        deduplicated: job.deduplicated,
                        problem,
                    };
                }
                // queued or processing: the long-poll ran out; ask again.
                _ => {}
            }
        }
    }
}

/// The 202 (or 200) body: `{"id","state","deduplicated"}`.
fn accepted(body: &Value) -> Result<Accepted, Problem> {
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| {
            Problem::local(format!(
                "the server accepted the upload without a usable job id: {body}"
            ))
        })?;
    Ok(Accepted {
        id: id.to_string(),
        state: body
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("queued")
            .to_string(),
        deduplicated: body
            .get("deduplicated")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The delay a 503 asks for: `Retry-After` in seconds (an HTTP date is not
/// used by pixpool and reads as the default), at most a minute.
pub fn retry_after(headers: &hyper::HeaderMap) -> Duration {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, |secs| {
            Duration::from_secs(secs).min(MAX_RETRY_AFTER)
        })
}

/// An error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn honours_retry_after_within_bounds() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(retry_after(&h), DEFAULT_RETRY_AFTER);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Duration::from_secs(3));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h), MAX_RETRY_AFTER);
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), DEFAULT_RETRY_AFTER);
    }

    #[test]
    fn reads_the_accepted_body() {
        let a =
            accepted(&serde_json::json!({"id": "01a2-b", "state": "done", "deduplicated": true}))
                .expect("valid");
        assert!(a.deduplicated);
        assert!(a.final_outcome().is_some());
        assert!(accepted(&serde_json::json!({"id": "../etc"})).is_err());
        assert!(accepted(&serde_json::json!({})).is_err());
    }
}
