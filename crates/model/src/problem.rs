//! The problem document.

use serde::{Deserialize, Serialize};

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
