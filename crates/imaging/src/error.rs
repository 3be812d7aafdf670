//! The one error type of this crate, with a variant per failed step.
//!
//! Every error knows who is at fault ([`ImagingError::is_input_error`]): a corrupt,
//! unsupported or oversized image is the client's; a failure to read the spooled input or
//! write an output, an invalid preset or a codec refusing our own pixels is the server's.

use std::io;
use std::path::PathBuf;

use crate::format::{Format, OutputFormat};

/// What went wrong while probing or processing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagingError {
    /// The input file could not be read. The server spooled it, so this is a server fault.
    #[error("could not read input file {path}")]
    ReadInput {
        /// The file we tried to read.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },

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

    /// The output stem given by the server is not a safe file-name part.
    #[error("invalid output stem {stem:?}: {reason}")]
    ValidateStem {
        /// The stem given.
        stem: String,
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

    /// Writing, syncing or renaming an output file failed.
    #[error("could not write output file {path}")]
    WriteOutput {
        /// The file being written (the temporary name, or the final one for the rename).
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Why an encoder refused an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `jpeg-encoder` failed.
    #[error(transparent)]
    Jpeg(#[from] jpeg_encoder::EncodingError),
    /// libjpeg-turbo failed (the `turbojpeg` feature).
    #[cfg(feature = "turbojpeg")]
    #[error(transparent)]
    Turbo(#[from] turbojpeg::Error),
    /// The `image` crate's PNG or WebP encoder failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
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
            | ImagingError::DecodeTruncated { .. } => true,
            ImagingError::ReadInput { .. }
            | ImagingError::ProbeIncomplete { .. }
            | ImagingError::ValidatePreset { .. }
            | ImagingError::ValidateStem { .. }
            | ImagingError::Resize { .. }
            | ImagingError::Encode { .. }
            | ImagingError::WriteOutput { .. } => false,
        }
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
