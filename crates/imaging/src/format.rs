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
/// `None` for HEIF, which the `image` crate does not read (libheif does, see `heif`).
pub(crate) fn image_format(format: Format) -> Option<image::ImageFormat> {
    match format {
        Format::Jpeg => Some(image::ImageFormat::Jpeg),
        Format::Png => Some(image::ImageFormat::Png),
        Format::WebP => Some(image::ImageFormat::WebP),
        Format::Gif => Some(image::ImageFormat::Gif),
        Format::Heif => None,
    }
}

/// A format pixpool can encode an output in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Baseline JPEG (`jpeg-encoder`, or libjpeg in the native build; standard Huffman
    /// tables; 4:2:0 chroma below quality 90, 4:4:4 from 90). Grey sources are written
    /// as one-channel JPEGs; alpha is flattened onto white.
    Jpeg,
    /// PNG via the `image` crate; keeps grey and alpha. `quality` is ignored.
    Png,
    /// WebP: lossy at `quality` with libwebp (the default and native builds), keeping
    /// alpha; lossless in the pure-Rust build, whose encoder has no lossy mode.
    WebP,
    /// AVIF: rav1e, 8-bit 4:2:0, sRGB, no metadata, alpha as an auxiliary image.
    Avif,
}

impl OutputFormat {
    /// Every output format, in the order `Accept` ties are broken by when a preset does
    /// not say.
    pub const ALL: [OutputFormat; 4] = [
        OutputFormat::Avif,
        OutputFormat::WebP,
        OutputFormat::Jpeg,
        OutputFormat::Png,
    ];

    /// The file extension used for outputs, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::WebP => "webp",
            OutputFormat::Avif => "avif",
        }
    }

    /// The IANA media type.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::WebP => "image/webp",
            OutputFormat::Avif => "image/avif",
        }
    }

    /// Its name in preset specifications and `?format=` (`jpeg`, `png`, `webp`, `avif`).
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::WebP => "webp",
            OutputFormat::Avif => "avif",
        }
    }

    /// The format named `name` (`jpg` too), if any.
    pub fn from_name(name: &str) -> Option<OutputFormat> {
        match name {
            "jpg" => Some(OutputFormat::Jpeg),
            _ => OutputFormat::ALL.into_iter().find(|f| f.name() == name),
        }
    }

    /// The format whose media type is `content_type`, if any.
    pub fn from_content_type(content_type: &str) -> Option<OutputFormat> {
        OutputFormat::ALL
            .into_iter()
            .find(|f| f.content_type() == content_type)
    }

    /// Whether this format can store an alpha channel.
    pub fn keeps_alpha(self) -> bool {
        match self {
            OutputFormat::Jpeg => false,
            OutputFormat::Png | OutputFormat::WebP | OutputFormat::Avif => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats_share_extension_and_media_type_with_their_input_format() {
        for (out, format) in [
            (OutputFormat::Jpeg, Format::Jpeg),
            (OutputFormat::Png, Format::Png),
            (OutputFormat::WebP, Format::WebP),
        ] {
            assert_eq!(out.extension(), format.extension());
            assert_eq!(out.content_type(), format.content_type());
            assert!(image_format(format)
                .expect("read by the image crate")
                .extensions_str()
                .contains(&format.extension()));
        }
        for f in OutputFormat::ALL {
            assert_eq!(OutputFormat::from_name(f.name()), Some(f));
            assert_eq!(OutputFormat::from_content_type(f.content_type()), Some(f));
        }
        assert_eq!(OutputFormat::from_name("jpg"), Some(OutputFormat::Jpeg));
        assert_eq!(OutputFormat::from_name("gif"), None);
    }

    #[test]
    fn serde_names_are_lowercase() {
        let json = serde_json::to_string(&[Format::Jpeg, Format::WebP]).expect("serialise");
        assert_eq!(json, r#"["jpeg","webp"]"#);
        let back: OutputFormat = serde_json::from_str(r#""png""#).expect("deserialise");
        assert_eq!(back, OutputFormat::Png);
    }
}
