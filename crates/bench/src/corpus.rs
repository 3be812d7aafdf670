//! The photos uploaded, and the trailer that makes every upload's bytes unique.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;

use crate::http::BOUNDARY;

/// One photo of the corpus, held in memory for the whole benchmark.
#[derive(Debug, Clone)]
pub struct Photo {
    /// File name, sent as the multipart part's `filename`.
    pub name: String,
    /// The image MIME type a browser would declare for this extension (the peer's
    /// Multer filter wants `image/*`; pixpool ignores it and sniffs the bytes).
    pub content_type: &'static str,
    /// The file's bytes.
    pub bytes: Bytes,
}

/// Every photo of the corpus folder (its top level only: `bad/` is not a photo).
#[derive(Debug)]
pub struct Corpus {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// In file-name order, which is the upload order of a round.
    pub photos: Vec<Photo>,
}

impl Corpus {
    /// Reads every `.jpg`, `.jpeg`, `.png`, `.webp` and `.gif` file of `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Corpus> {
        let mut photos = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("could not list {}", dir.display()))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let Some(content_type) = content_type_for(&name) else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path)
                .with_context(|| format!("could not read {}", path.display()))?;
            anyhow::ensure!(!bytes.is_empty(), "{} is empty", path.display());
            // The multipart body is built by concatenation: the boundary must never
            // occur inside a file.
            anyhow::ensure!(
                !contains(&bytes, BOUNDARY.as_bytes()),
                "{} contains the multipart boundary",
                path.display()
            );
            photos.push(Photo {
                name,
                content_type,
                bytes: Bytes::from(bytes),
            });
        }
        photos.sort_by(|a, b| a.name.cmp(&b.name));
        anyhow::ensure!(
            !photos.is_empty(),
            "no photo (.jpg, .png, .webp, .gif) in {}",
            dir.display()
        );
        Ok(Corpus {
            dir: dir.to_path_buf(),
            photos,
        })
    }

    /// Bytes of one round.
    pub fn total_bytes(&self) -> u64 {
        self.photos.iter().map(|p| p.bytes.len() as u64).sum()
    }
}

/// The image MIME type for a file name's extension, or `None` if it is not a photo
/// this benchmark uploads.
pub fn content_type_for(name: &str) -> Option<&'static str> {
    let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        "webp" => Some("image/webp"),
        "gif" => Some("image/gif"),
        _ => None,
    }
}

/// The bytes appended after a photo's last byte so that no two uploads are identical
/// (pixpool deduplicates identical uploads). Decoders stop at the format's end marker
/// (JPEG EOI, PNG IEND, GIF trailer, WebP's RIFF size), so the pixels do not change.
pub fn trailer(tag: &str) -> Vec<u8> {
    format!("\npixpool-bench-{tag}\n").into_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("a.JPG"), Some("image/jpeg"));
        assert_eq!(content_type_for("b.webp"), Some("image/webp"));
        assert_eq!(content_type_for("MANIFEST.md"), None);
        assert_eq!(content_type_for("noext"), None);
    }

    #[test]
    fn trailers_differ_and_stay_ascii() {
        let a = trailer("1-pixpool-0-3");
        let b = trailer("1-pixpool-1-3");
        assert_ne!(a, b);
        assert!(a.is_ascii());
        assert!(a.starts_with(b"\n") && a.ends_with(b"\n"));
    }

    #[test]
    fn finds_a_needle() {
        assert!(contains(b"xxabcxx", b"abc"));
        assert!(!contains(b"xxabxcx", b"abc"));
        assert!(!contains(b"ab", b"abc"));
    }
}
