//! The one place where errors become HTTP statuses and problem+json bodies.
//! Every error knows whose fault it is: 4xx for the client, 5xx for us.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use pixpool_store::Problem;

use crate::body::{full, Body};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route for this path.
    #[error("no resource at {0}")]
    NotFound(String),
    /// The job id is malformed or unknown.
    #[error("no job {0:?}")]
    NoSuchJob(String),
    /// The job exists but has no such variant.
    #[error("no variant {0:?} for this job")]
    NoSuchVariant(String),
    /// The job is not done yet.
    #[error("job {0} is still being processed; follow /jobs/{0}")]
    NotReady(String),
    /// The route exists but not for this method.
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the route accepts (`Allow` header).
        allow: &'static str,
    },
    /// The request is not `multipart/form-data` with a boundary.
    #[error("expected multipart/form-data with a boundary: {0}")]
    NotMultipart(String),
    /// The multipart body is malformed, or a field is unexpected.
    #[error("malformed upload: {0}")]
    BadMultipart(String),
    /// The body broke a framing bound (bytes before the first boundary, a
    /// part's headers): refused before it is buffered, and the connection closed.
    #[error("malformed upload: {0}")]
    Framing(String),
    /// No `image` file field.
    #[error("the form has no file in the `image` field")]
    MissingImage,
    /// The `image` part is empty.
    #[error("the uploaded file is empty")]
    EmptyFile,
    /// The content is not an image format we process (sniffed from bytes).
    #[error("the uploaded file is not a supported image (JPEG, PNG, WebP or GIF); detected by content, not by name or declared type")]
    UnsupportedFormat,
    /// The image's format is supported, but not the way this file codes it (a
    /// hierarchical JPEG, …): the message names the coding.
    #[error("{0}")]
    UnsupportedCoding(String),
    /// The upload exceeds the size limit.
    #[error("the upload exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The image's header declares more than the limits allow.
    #[error("{0}")]
    LimitExceeded(String),
    /// Too little disk space is left to accept uploads safely.
    #[error("the server is low on disk space; retry later")]
    InsufficientStorage,
    /// The client stopped sending its body.
    #[error("the request body stalled for more than {0} s")]
    BodyTimeout(u64),
    /// The client sent its body slower than the minimum upload rate.
    #[error("the request body arrived slower than the minimum of {0} bytes/s")]
    TooSlow(u64),
    /// A token is required and none (or a wrong one) was given.
    #[error("a valid `Authorization: Bearer <token>` header is required")]
    Unauthorized,
    /// A browser page of another origin sent a state-changing request to an
    /// open API.
    #[error("requests from the origin {0:?} are not allowed (see `allowed_origins`)")]
    ForbiddenOrigin(String),
    /// The readiness check failed.
    #[error("not ready: {0}")]
    NotReady503(String),
    /// An unknown preset was asked for.
    #[error("unknown preset {0:?}")]
    UnknownPreset(String),
    /// The client is over its rate (`--rate-limit`).
    #[error("too many requests from this client; retry in {0} s")]
    RateLimited(u64),
    /// The upload's `callback_url` is not one this server calls.
    #[error("{0}")]
    BadCallback(String),
    /// The client went away or stalled mid-body.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// No worker could take the job.
    #[error("{0}")]
    Unavailable(String),
    /// Local I/O failed (disk full, permissions).
    #[error("{context}")]
    Storage {
        /// The failed step.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] pixpool_store::StoreError),
}

/// Seconds a client is told to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    /// The status and the problem slug/title for this error.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            NoSuchJob(_) => (StatusCode::NOT_FOUND, "no-such-job", "No such job"),
            NoSuchVariant(_) => (StatusCode::NOT_FOUND, "no-such-variant", "No such variant"),
            NotReady(_) => (StatusCode::CONFLICT, "not-ready", "Not processed yet"),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            NotMultipart(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-multipart",
                "Expected multipart/form-data",
            ),
            BadMultipart(_) => (
                StatusCode::BAD_REQUEST,
                "bad-multipart",
                "Malformed multipart body",
            ),
            Framing(_) => (
                StatusCode::BAD_REQUEST,
                "bad-multipart",
                "Malformed multipart body",
            ),
            MissingImage => (StatusCode::BAD_REQUEST, "missing-image", "Missing image"),
            EmptyFile => (StatusCode::BAD_REQUEST, "empty-file", "Empty file"),
            UnsupportedFormat | UnsupportedCoding(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-format",
                "Unsupported image format",
            ),
            TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Upload too large",
            ),
            UnknownPreset(_) => (StatusCode::BAD_REQUEST, "unknown-preset", "Unknown preset"),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            BadCallback(_) => (
                StatusCode::BAD_REQUEST,
                "bad-callback",
                "Callback URL refused",
            ),
            LimitExceeded(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit-exceeded",
                "Image exceeds a limit",
            ),
            InsufficientStorage => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "Insufficient storage",
            ),
            BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body timed out",
            ),
            TooSlow(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "too-slow",
                "Request body too slow",
            ),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ForbiddenOrigin(_) => (
                StatusCode::FORBIDDEN,
                "forbidden-origin",
                "Cross-origin request refused",
            ),
            NotReady503(_) => (StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready"),
            BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                "body-read",
                "Request body could not be read",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            // The distributed backend not answering: the client retries shortly.
            Store(e) if e.is_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Storage { .. } | Store(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                "Storage error",
            ),
        }
    }

    /// The problem type's slug (`too-large`, …): also the `reason` label of
    /// `pixpool_rejections_total`, a fixed set because it is `'static`.
    pub fn slug(&self) -> &'static str {
        self.classify().1
    }

    /// Whether the server, not the client, is at fault.
    pub fn is_server_error(&self) -> bool {
        self.classify().0.is_server_error()
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.classify();
        // Server-side details (paths, errno) stay in the log, not in the response.
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "an internal error occurred; see the server log".to_string()
        } else if matches!(self, ApiError::Store(_)) {
            "the job queue or the object store did not answer; retry shortly".to_string()
        } else {
            self.to_string()
        };
        Problem::new(slug, title, status.as_u16(), detail)
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = problem_response(&self.problem());
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pixpool\""),
                );
            }
            ApiError::Store(e) if e.is_unavailable() => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::Unavailable(_)
            | ApiError::NotReady(_)
            | ApiError::InsufficientStorage
            | ApiError::NotReady503(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::RateLimited(secs) => {
                let headers = resp.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
                // The body (an upload) is not read.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::TooLarge { .. }
            | ApiError::LimitExceeded(_)
            | ApiError::BodyTimeout(_)
            | ApiError::TooSlow(_)
            | ApiError::Framing(_) => {
                // The rest of the body is not read: tell the client we close.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// A problem document as a response.
pub fn problem_response(problem: &Problem) -> Response<Body> {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let json = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(Bytes::from(json)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}
