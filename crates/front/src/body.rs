//! The response body type shared by every route.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Boxed so that routes can return fixed bodies now and streams later.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body from bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response body.
pub fn json(value: &impl serde::Serialize) -> Body {
    full(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
}
