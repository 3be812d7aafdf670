//! Image formats: what we read ([`Format`]) and what we write ([`OutputFormat`]).
//!
//! A format is only ever decided from the first bytes of the content. File names and
//! client-sent content types are not trusted: a JPEG named `.png` is a JPEG.

use serde::{Deserialize, Serialize};

/// How many leading bytes [`Format::sniff`] looks at; more are ignored, fewer may be enough.
pub const SNIFF_LEN: usize = 16;

/// An input format pixpool can decode.
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
}

impl Format {
    /// Identifies the format from magic bytes at the start of a file.
    ///
    /// Looks at no more than the first [`SNIFF_LEN`] bytes and returns `None` when they match
    /// no supported format, including when too few bytes are given to tell.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
        // SOI followed by the first byte of the next marker: every real JPEG starts so.
        const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";

        if head.starts_with(JPEG_MAGIC) {
            Some(Format::Jpeg)
        } else if head.starts_with(PNG_MAGIC) {
            Some(Format::Png)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            Some(Format::Gif)
        } else if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
            Some(Format::WebP)
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
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Gif => "gif",
        }
    }

    /// The IANA media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
            Format::Gif => "image/gif",
        }
    }

    /// The same format as the `image` crate names it.
    pub(crate) fn to_image_format(self) -> image::ImageFormat {
        match self {
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Png => image::ImageFormat::Png,
            Format::WebP => image::ImageFormat::WebP,
            Format::Gif => image::ImageFormat::Gif,
        }
    }
}

/// A format pixpool can encode an output in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Baseline JPEG via `jpeg-encoder` (standard Huffman tables; 4:2:0 chroma below
    /// quality 90, 4:4:4 from 90). Grey sources are written as one-channel JPEGs; alpha is
    /// flattened onto white.
    Jpeg,
    /// PNG via the `image` crate; keeps grey and alpha. `quality` is ignored.
    Png,
    /// WebP via the `image` crate's encoder, which is **lossless only**: outputs are large
    /// and `quality` is ignored. Keeps grey and alpha.
    WebP,
}

impl OutputFormat {
    /// The file extension used for outputs, without the dot.
    pub fn extension(self) -> &'static str {
        Format::from(self).extension()
    }

    /// The IANA media type.
    pub fn content_type(self) -> &'static str {
        Format::from(self).content_type()
    }

    /// Whether this format can store an alpha channel.
    pub fn keeps_alpha(self) -> bool {
        match self {
            OutputFormat::Jpeg => false,
            OutputFormat::Png | OutputFormat::WebP => true,
        }
    }
}

impl From<OutputFormat> for Format {
    fn from(format: OutputFormat) -> Format {
        match format {
            OutputFormat::Jpeg => Format::Jpeg,
            OutputFormat::Png => Format::Png,
            OutputFormat::WebP => Format::WebP,
        }
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
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Format::WebP));
    }

    #[test]
    fn rejects_near_misses() {
        assert_eq!(Format::sniff(b""), None);
        assert_eq!(Format::sniff(b"\xff\xd8"), None);
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WEB"), None);
        assert_eq!(Format::sniff(b"GIF90a"), None);
        assert_eq!(Format::sniff(b"<svg xmlns="), None);
    }

    #[test]
    fn serde_names_are_lowercase() {
        let json = serde_json::to_string(&[Format::Jpeg, Format::WebP]).expect("serialise");
        assert_eq!(json, r#"["jpeg","webp"]"#);
        let back: OutputFormat = serde_json::from_str(r#""png""#).expect("deserialise");
        assert_eq!(back, OutputFormat::Png);
    }
}
