//! Image formats: what we read ([`Format`], sniffed by `pixpool-model`, shared with the
//! client and the front) and what we write ([`OutputFormat`]).
//!
//! A format is only ever decided from the first bytes of the content. File names and
//! client-sent content types are not trusted: a JPEG named `.png` is a JPEG.

use serde::{Deserialize, Serialize};

// One sniff for the client, the front and this crate: the format enum lives in the
// I/O-free vocabulary crate, and is re-exported here so `pixpool_imaging::Format` works.
pub use pixpool_model::format::{Format, SNIFF_LEN};

/// The same format as the `image` crate names it (a free function: `Format` is not ours).
pub(crate) fn image_format(format: Format) -> image::ImageFormat {
    match format {
        Format::Jpeg => image::ImageFormat::Jpeg,
        Format::Png => image::ImageFormat::Png,
        Format::WebP => image::ImageFormat::WebP,
        Format::Gif => image::ImageFormat::Gif,
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
    fn output_formats_map_to_their_input_format() {
        for (out, format) in [
            (OutputFormat::Jpeg, Format::Jpeg),
            (OutputFormat::Png, Format::Png),
            (OutputFormat::WebP, Format::WebP),
        ] {
            assert_eq!(Format::from(out), format);
            assert_eq!(out.extension(), format.extension());
            assert_eq!(out.content_type(), format.content_type());
            assert!(image_format(format)
                .extensions_str()
                .contains(&format.extension()));
        }
    }

    #[test]
    fn serde_names_are_lowercase() {
        let json = serde_json::to_string(&[Format::Jpeg, Format::WebP]).expect("serialise");
        assert_eq!(json, r#"["jpeg","webp"]"#);
        let back: OutputFormat = serde_json::from_str(r#""png""#).expect("deserialise");
        assert_eq!(back, OutputFormat::Png);
    }
}
