//! Where a job is, and what it made.

use serde::{Deserialize, Serialize};

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
    /// Where it is served: `/images/<id>/<preset>` (the preset's fallback format), or
    /// `…?format=NAME` (another of its formats).
    #[serde(default)]
    pub url: String,
    /// BLAKE3 of the file's bytes (hex, first 128 bits): the HTTP `ETag`.
    #[serde(default)]
    pub etag: String,
}

/// What a front-end shows while an image loads, computed from a small rendering of the
/// whole source (aspect kept, orientation applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placeholder {
    /// The ThumbHash of that rendering (standard base64, padded).
    pub thumbhash: String,
    /// Its BlurHash (4×3 components, or 3×4 for a portrait source).
    pub blurhash: String,
    /// The colour most of it has, `#rrggbb`.
    pub dominant_color: String,
    /// Width / height of the source as displayed.
    pub aspect_ratio: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_lowercase_words_and_only_done_and_failed_are_final() {
        for (state, word, last) in [
            (JobState::Queued, "\"queued\"", false),
            (JobState::Processing, "\"processing\"", false),
            (JobState::Done, "\"done\"", true),
            (JobState::Failed, "\"failed\"", true),
        ] {
            assert_eq!(serde_json::to_string(&state).expect("serialize"), word);
            assert_eq!(state.is_final(), last, "{word}");
        }
    }
}
