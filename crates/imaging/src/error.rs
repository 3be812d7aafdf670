//! The one error type of this crate, with a variant per failed step.
//!
//! Every error knows who is at fault ([`ImagingError::is_input_error`]): a corrupt,
//! unsupported or oversized image is the client's; a reader that fails, a caller's sink
//! that refuses an output, an invalid preset or a codec refusing our own pixels is the
//! server's.

use std::io;

use crate::format::{Format, OutputFormat};

/// What the caller's progress callback returns when it cannot take a report, e.g. it
/// could not store an output: any error at all, kept whole as the
/// [`ImagingError::Sink`]'s source. An alias rather than a type of ours so that a
/// callback can `?` its own errors (`io::Error`, a store's error) straight into it.
pub type OutputSinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong while probing or processing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagingError {
    /// The content is not a supported image (empty, text, another format).
    #[error("unrecognised image format: not JPEG, PNG, WebP or GIF")]
    Sniff,

    /// The header could not be parsed from the bytes given to [`probe`](crate::probe()).
    #[error("could not parse the {format:?} header: {reason}")]
    ParseHeader {
        /// The sniffed format.
        format: Format,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// The bytes given to [`probe`](crate::probe()) end before the image dimensions, e.g. a
    /// JPEG whose large ICC profile precedes its frame header. Neither side is at fault:
    /// the caller should either probe more bytes or leave the check to
    /// [`process`](crate::process()), which applies the same limits.
    #[error("the first {given} bytes do not reach the {format:?} dimensions")]
    ProbeIncomplete {
        /// The sniffed format.
        format: Format,
        /// How many bytes were given.
        given: usize,
    },

    /// The decoder could not read the image header.
    #[error("could not read the {format:?} header")]
    ReadHeader {
        /// The sniffed format.
        format: Format,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },

    /// The image is larger than the [`Limits`](crate::Limits) allow; refused before decoding.
    #[error("image of {width}×{height} exceeds the {limit} limit")]
    CheckLimits {
        /// Stored width from the header.
        width: u32,
        /// Stored height from the header.
        height: u32,
        /// Which limit was exceeded, for the message.
        limit: &'static str,
    },

    /// The animation has more frames, or frames × area, than the limits allow.
    #[error("animation of {frames} frames of {width}×{height} exceeds the {limit} limit")]
    CheckFrames {
        /// Frames counted.
        frames: u32,
        /// Stored width.
        width: u32,
        /// Stored height.
        height: u32,
        /// Which limit was exceeded.
        limit: &'static str,
    },

    /// One frame of an animation is larger than the limits allow (whatever the logical
    /// screen says); refused before decoding.
    #[error("frame {frame} of {width}×{height} exceeds the {limit} limit")]
    CheckFrameSize {
        /// Which frame, from 1.
        frame: u32,
        /// The frame's own width.
        width: u32,
        /// The frame's own height.
        height: u32,
        /// Which limit was exceeded.
        limit: &'static str,
    },

    /// An embedded ICC profile or the metadata chunks are larger than the caps
    /// ([`MAX_ICC_PROFILE_BYTES`](crate::limits::MAX_ICC_PROFILE_BYTES),
    /// [`MAX_METADATA_BYTES`](crate::limits::MAX_METADATA_BYTES)); refused before decoding.
    #[error("the {what} ({at_least} bytes or more) exceeds the {what} limit of {limit} bytes")]
    CheckMetadata {
        /// What was too large: `ICC profile` or `metadata`.
        what: &'static str,
        /// How many bytes were counted before giving up.
        at_least: usize,
        /// The cap.
        limit: usize,
    },

    /// The pixel data could not be decoded (corrupt, unsupported, or over the allocation
    /// limit partway through).
    #[error("could not decode the {format:?} image")]
    Decode {
        /// The sniffed format.
        format: Format,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },

    /// A JPEG coded in a way this build does not decode (hierarchical, 12-bit DCT,
    /// lossless arithmetic; arithmetic-coded in the pure-Rust build): refused at the door
    /// rather than accepted and failed.
    #[error("{coding} JPEG is not supported{hint}")]
    UnsupportedCoding {
        /// What the frame header says, in words (`hierarchical (differential)`, …).
        coding: &'static str,
        /// Which build would read it, when one would (` by this build: …`), else empty.
        hint: &'static str,
    },

    /// A format this build does not read (HEIF without the `heif` feature): refused at
    /// the door, with the build that reads it.
    #[error("{format} images are not read by this build{hint}")]
    UnsupportedFormat {
        /// The sniffed format.
        format: Format,
        /// Which build reads it (` (…)`), or empty.
        hint: &'static str,
    },

    /// The JPEG stream ends before its end-of-image marker. The decoder would fill the
    /// missing part with grey; we refuse it instead.
    #[error("the {format:?} image is truncated")]
    DecodeTruncated {
        /// The sniffed format.
        format: Format,
    },

    /// A preset given by the server is unusable (bad name, zero size, duplicate name).
    #[error("invalid preset {name:?}: {reason}")]
    ValidatePreset {
        /// The preset's name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Resampling failed. Our geometry should make this impossible: a server bug.
    #[error("could not resize for preset {preset:?} to {width}×{height}")]
    Resize {
        /// The preset being produced.
        preset: String,
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
        /// The resizer's error.
        #[source]
        source: fast_image_resize::ResizeError,
    },

    /// Encoding an output failed.
    #[error("could not encode {format:?} for preset {preset:?}")]
    Encode {
        /// The preset being produced.
        preset: String,
        /// The output format.
        format: OutputFormat,
        /// The encoder's error.
        #[source]
        source: EncodeError,
    },

    /// The reader given to [`check_animation`](crate::check_animation) or
    /// [`count_frames`](crate::count_frames) failed (not the end of the input, which only
    /// ends the count). The server spooled the input, so this is a server fault.
    #[error("could not read the input to count its frames")]
    ReadFrames {
        /// Why reading failed.
        #[source]
        source: io::Error,
    },

    /// The caller's progress callback returned an error: processing stopped there, and
    /// no later output was made or reported.
    #[error("could not hand over {}", sink_stage(.preset.as_deref()))]
    Sink {
        /// The preset whose output was refused; `None` when the callback refused the
        /// report that decoding was done, before any output.
        preset: Option<String>,
        /// The callback's error.
        #[source]
        source: OutputSinkError,
    },
}

/// What [`ImagingError::Sink`] was handing over, for its message.
fn sink_stage(preset: Option<&str>) -> String {
    match preset {
        Some(name) => format!("the output of preset {name:?}"),
        None => "the report that the image is decoded".to_owned(),
    }
}

/// Why an encoder refused an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `jpeg-encoder` failed.
    #[error(transparent)]
    Jpeg(#[from] jpeg_encoder::EncodingError),
    /// libjpeg failed (the `libjpeg-simd` feature), with its message.
    #[cfg(feature = "libjpeg-simd")]
    #[error("libjpeg: {0}")]
    Libjpeg(String),
    /// The `image` crate's PNG or WebP encoder failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// libwebp's lossy encoder failed (the `libwebp` feature).
    #[error("libwebp could not encode the image")]
    Webp,
    /// rav1e failed, with its message.
    #[error("{0}")]
    Avif(String),
    /// The output is larger than JPEG can express (65535 per side).
    #[error("{width}×{height} is too large for JPEG (65535 per side at most)")]
    TooLargeForJpeg {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
}

impl ImagingError {
    /// Whether the input image is at fault (client error) rather than the server.
    ///
    /// [`ProbeIncomplete`](ImagingError::ProbeIncomplete) is neither and returns `false`:
    /// match it before mapping to a status.
    pub fn is_input_error(&self) -> bool {
        match self {
            ImagingError::Sniff
            | ImagingError::ParseHeader { .. }
            | ImagingError::ReadHeader { .. }
            | ImagingError::CheckLimits { .. }
            | ImagingError::CheckFrames { .. }
            | ImagingError::CheckFrameSize { .. }
            | ImagingError::CheckMetadata { .. }
            | ImagingError::Decode { .. }
            | ImagingError::UnsupportedCoding { .. }
            | ImagingError::UnsupportedFormat { .. }
            | ImagingError::DecodeTruncated { .. } => true,
            ImagingError::ProbeIncomplete { .. }
            | ImagingError::ValidatePreset { .. }
            | ImagingError::Resize { .. }
            | ImagingError::Encode { .. }
            | ImagingError::ReadFrames { .. }
            | ImagingError::Sink { .. } => false,
        }
    }

    /// Whether the input is a format (or a coding of one) this build does not read: a
    /// 415, not a 422.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            ImagingError::Sniff
                | ImagingError::UnsupportedCoding { .. }
                | ImagingError::UnsupportedFormat { .. }
        )
    }

    /// Whether the input was refused for its size (a [`Limits`](crate::Limits) hit, before
    /// or during decoding): lets the front answer 413 rather than 415/422.
    pub fn is_limit_exceeded(&self) -> bool {
        match self {
            ImagingError::CheckLimits { .. }
            | ImagingError::CheckFrames { .. }
            | ImagingError::CheckFrameSize { .. }
            | ImagingError::CheckMetadata { .. } => true,
            ImagingError::ReadHeader { source, .. } | ImagingError::Decode { source, .. } => {
                matches!(source, image::ImageError::Limits(_))
            }
            _ => false,
        }
    }
}
