//! The image formats pixpool accepts, and the one way to tell them apart.
//!
//! A format is only ever decided from the first bytes of the content. File names and
//! client-sent content types are not trusted: a JPEG named `.png` is a JPEG. The client
//! (which files to upload), the front (which uploads to accept) and the worker (how to
//! decode) all sniff with [`Format::sniff`], so they cannot disagree.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How many leading bytes [`Format::sniff`] needs to tell every format apart: the
/// longest signature is WebP's (`RIFF`, a 4-byte size, `WEBP`). More are ignored.
pub const SNIFF_LEN: usize = 12;

/// Major brands of the `ftyp` box of an HEVC-coded HEIF image: Apple's `heic` and
/// `heix` (10-bit), `heim`/`heis` (multi-layer, scalable), the sequence brands, and the
/// generic `mif1`/`msf1` that libheif and some cameras write.
const HEIF_BRANDS: [&[u8]; 8] = [
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
];

/// An image format pixpool accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JPEG (JFIF/EXIF, baseline or progressive; grey, YCbCr or CMYK).
    Jpeg,
    /// PNG (any bit depth; decoded to 8 bits per channel).
    Png,
    /// WebP (lossy or lossless; first frame when animated).
    WebP,
    /// GIF (first frame only: animations are not composited).
    Gif,
    /// HEIC/HEIF: an HEVC-coded image in an ISO-BMFF `ftyp` container, as iPhones save
    /// photos. Read by the native-codecs build (libheif) only.
    Heif,
}

impl Format {
    /// Identifies the format from magic bytes at the start of a file.
    ///
    /// Looks at no more than the first [`SNIFF_LEN`] bytes and returns `None` when they
    /// match no supported format, including when too few bytes are given to tell.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
        // SOI followed by the first byte of the next marker: every real JPEG starts so.
        const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";

        if head.starts_with(JPEG_MAGIC) {
            Some(Format::Jpeg)
        } else if head.starts_with(PNG_MAGIC) {
            Some(Format::Png)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            // Both versions in full, not just `GIF8`: no other version was ever
            // published, and the decoder refuses anything else anyway.
            Some(Format::Gif)
        } else if head.len() >= SNIFF_LEN && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else if head.len() >= SNIFF_LEN
            && &head[4..8] == b"ftyp"
            && HEIF_BRANDS.contains(&&head[8..12])
        {
            // By the major brand: an AVIF (`avif`) or a video (`isom`, `mp42`) may list
            // `mif1` among its compatible brands, and is none of ours.
            Some(Format::Heif)
        } else {
            None
        }
    }

    /// The format's short name (`jpeg`, `png`, `webp`, `gif`), as serialised.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Gif => "gif",
            Format::Heif => "heif",
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Gif => "gif",
            Format::Heif => "heic",
        }
    }

    /// The IANA media type, e.g. `image/jpeg`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
            Format::Gif => "image/gif",
            Format::Heif => "image/heic",
        }
    }
}

/// The name people write: `JPEG`, `PNG`, `WebP`, `GIF` (for messages, not for parsing).
impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::WebP => "WebP",
            Format::Gif => "GIF",
            Format::Heif => "HEIF",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_magic() {
        assert_eq!(
            Format::sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"),
            Some(Format::Jpeg)
        );
        assert_eq!(
            Format::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(Format::Png)
        );
        assert_eq!(Format::sniff(b"GIF89a\x01\0\x01\0"), Some(Format::Gif));
        assert_eq!(Format::sniff(b"GIF87a"), Some(Format::Gif));
        assert_eq!(Format::sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(Format::WebP));
        // Exactly SNIFF_LEN bytes are enough for the longest signature.
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WEBP"), Some(Format::WebP));
    }

    #[test]
    fn sniffs_heif_by_its_major_brand() {
        for brand in [&b"heic"[..], b"heix", b"mif1", b"msf1"] {
            let mut head = b"\0\0\0\x18ftyp".to_vec();
            head.extend_from_slice(brand);
            assert_eq!(Format::sniff(&head), Some(Format::Heif), "{brand:?}");
        }
        assert_eq!(
            Format::sniff(b"\0\0\0\x1cftypavif"),
            None,
            "AVIF input is not read"
        );
        assert_eq!(Format::sniff(b"\0\0\0\x18ftypisom"), None, "an MP4");
        assert_eq!(Format::sniff(b"\0\0\0\x18ftyphe"), None, "too short");
    }

    #[test]
    fn rejects_near_misses() {
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(Format::sniff(b"GIF90a"), None);
        // The looser `GIF8` prefix the client once accepted is not a GIF.
        assert_eq!(Format::sniff(b"GIF8xx\x01\0\x01\0"), None);
        assert_eq!(Format::sniff(b"\x89PNG\r\n\x1a\r"), None);
        assert_eq!(Format::sniff(b"\xff\xd9\xff\xe0"), None);
        assert_eq!(Format::sniff(b"<svg xmlns="), None);
        assert_eq!(Format::sniff(b"# README\n"), None);
    }

    #[test]
    fn too_short_to_tell_is_none() {
        assert_eq!(Format::sniff(b""), None);
        assert_eq!(Format::sniff(b"\xff\xd8"), None);
        assert_eq!(Format::sniff(b"\x89PNG\r\n"), None);
        assert_eq!(Format::sniff(b"GIF89"), None);
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WEB"), None);
    }

    #[test]
    fn names_types_and_extensions() {
        let all: Vec<_> = [Format::Jpeg, Format::WebP, Format::Png, Format::Gif]
            .iter()
            .map(|f| (f.name(), f.extension(), f.content_type(), f.to_string()))
            .collect();
        assert_eq!(
            all,
            [
                ("jpeg", "jpg", "image/jpeg", "JPEG".to_owned()),
                ("webp", "webp", "image/webp", "WebP".to_owned()),
                ("png", "png", "image/png", "PNG".to_owned()),
                ("gif", "gif", "image/gif", "GIF".to_owned()),
            ]
        );
    }

    #[test]
    fn serde_names_are_lowercase() {
        let json = serde_json::to_string(&[Format::Jpeg, Format::WebP]).expect("serialise");
        assert_eq!(json, r#"["jpeg","webp"]"#);
        let back: Format = serde_json::from_str(r#""gif""#).expect("deserialise");
        assert_eq!(back, Format::Gif);
    }
}
