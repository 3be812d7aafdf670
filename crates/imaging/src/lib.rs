//! Image processing for pixpool: sniff, decode, orient, resize, encode.
//!
//! This crate is a pure, synchronous library. It knows nothing of processes, sockets,
//! async runtimes or files: the worker calls [`process_with_progress`] on a blocking
//! thread with the bytes of a spooled upload and stores each encoded output as it is
//! handed over; the HTTP front calls [`probe()`] on the first bytes of an upload, and
//! [`check_animation`] on a reader of the whole of it, to refuse unsupported or oversized
//! images before accepting them.
//!
//! One call to [`process`] decodes the input once and encodes one output per [`Preset`]:
//!
//! 1. [sniff](Format::sniff) the format from the content (never a name);
//! 2. decode it under [`Limits`] (checked on the header before any pixel buffer is
//!    allocated), first frame only for GIF. A JPEG is decoded at the smallest DCT scale
//!    (1/8, 1/4, 1/2 or 1) that still gives the largest output a source pixel per output
//!    pixel (shrink-on-load, see `jpeg`); everything else whole, with the `image` crate;
//! 3. normalise the pixels to 8-bit grey, grey+alpha, RGB or RGBA (alpha is dropped when the
//!    image is fully opaque, and flattened onto white when no output can keep it);
//! 4. resize with `fast_image_resize` (Lanczos3, alpha-aware), largest preset first, each
//!    smaller preset resampled from an earlier output when that one is detailed enough;
//! 5. apply the EXIF orientation to each (small) output rather than to the (large) source;
//! 6. encode (JPEG with `jpeg-encoder`, PNG and lossless WebP with `image`) without copying
//!    any metadata, and hand each [`Output`], bytes included, to the caller's callback.
//!
//! # Builds
//!
//! The default build: zune-jpeg decodes JPEGs whole, libjpeg decodes them at a reduced
//! scale (progressive files with the scans that scale does not need cut out first) and
//! decodes CMYK ones, `jpeg-encoder` encodes; libwebp decodes WebP. Both C libraries are
//! built from their bundled source by the `cc` crate with the C compiler Rust links with
//! (no cmake, no nasm): the `libjpeg` (libjpeg-turbo's C code as `mozjpeg-sys` ships it,
//! without SIMD) and `libwebp` features, on by default. With `--no-default-features` the
//! build is pure Rust: `jpeg-decoder` takes the reduced-scale decodes, image-webp WebP.
//!
//! The `libjpeg-simd` feature builds the same libjpeg with libjpeg-turbo's SIMD assembly
//! (`nasm` needed, no cmake), which then takes every JPEG decode, whole and at 5/8 to
//! 7/8 too, and every JPEG encode, where it beats zune-jpeg and `jpeg-encoder` (encoding
//! three times as fast):
//!
//! ```sh
//! apt-get install -y nasm        # Debian/Ubuntu; gcc or clang is assumed
//! cargo build --release -p pixpool-imaging --features libjpeg-simd
//! cargo test -p pixpool-imaging --features libjpeg-simd
//! ```
//!
//! A binary opts in through its dependency (`pixpool-imaging = { workspace = true,
//! features = ["libjpeg-simd"] }`). Every build accepts and refuses the same files: when
//! libjpeg or `jpeg-decoder` rejects a JPEG, zune-jpeg decodes it whole and decides.
//!
//! # Layout
//!
//! - [`error`]: [`ImagingError`], one variant per failed step, each knowing whether the
//!   input or the server is at fault.
//! - [`format`](mod@format): [`Format`] (what we read; `pixpool-model`'s, the one sniff
//!   shared with the client and the front) and [`OutputFormat`] (what we write).
//! - [`frames`]: counting an animation's frames by skipping its blocks, without decoding,
//!   and holding each frame's own size to the limits.
//! - [`probe`](mod@probe): header-only parsing of the first bytes of a file into a [`Probe`].
//! - [`limits`]: [`Limits`], the decompression-bomb guard, and the caps on ICC profiles
//!   and metadata chunks.
//! - `metadata` (private): the ICC profile and metadata chunks checked against those caps
//!   before any decoder reads them.
//! - `jpeg` (private): the one walk over marker segments that every JPEG reader here
//!   uses (the probe and the metadata caps too), the stream's structure (frame, scans,
//!   end), the shrink-on-load scale, scan pruning for progressive files, the scaled
//!   decode with `jpeg-decoder`.
//! - `libjpeg` (private, `libjpeg` feature): libjpeg decoding at a DCT scale (and, with
//!   `libjpeg-simd`, encoding).
//! - [`preset`]: [`Preset`] and [`Fit`], and the geometry that turns a preset and a source
//!   size into a crop and an output size.
//! - `raster` (private): the 8-bit pixel buffer the pipeline passes between steps.
//! - `decode` (private): bytes to a checked header (size, EXIF orientation), then to a
//!   raster at the scale the outputs allow.
//! - `resize` (private): `fast_image_resize` wrapper, the cascade of presets.
//! - `encode` (private): raster to JPEG/PNG/WebP bytes, flattening alpha for JPEG.
//! - `placeholder` (private): a done job's ThumbHash, BlurHash and dominant colour, from
//!   one rendering of at most 100 px a side.
//! - [`pipeline`]: [`process`], which strings the steps together, and its result types.
//! - `stages` (hidden): the steps one by one, for the benchmarks (`benches/stages.rs`).

#![deny(missing_docs)]
// No unsafe code, except the FFI boundaries of the C codecs (`webp`, `libjpeg`).
#![deny(unsafe_code)]

mod avif;
mod colour;
mod decode;
mod encode;
pub mod error;
pub mod format;
pub mod frames;
mod heif;
mod jpeg;
#[cfg(feature = "libjpeg")]
#[allow(unsafe_code)]
mod libjpeg;
pub mod limits;
mod metadata;
pub mod pipeline;
mod placeholder;
pub mod preset;
pub mod probe;
mod raster;
mod resize;
#[doc(hidden)]
pub mod stages;
#[cfg(feature = "libwebp")]
#[allow(unsafe_code)]
mod webp;

pub use error::{EncodeError, ImagingError, OutputSinkError};
pub use format::{Format, OutputFormat};
pub use frames::{check_animation, count_frames};
pub use limits::Limits;
pub use pipeline::{process, process_with_progress, Output, Processed, Progress, StageTimings};
pub use preset::{Fit, Preset, PresetParseError};
pub use probe::{probe, Probe};

/// The least PSNR, in dB, that the speed-ups of JPEG decoding may leave: any corpus
/// JPEG's 800-px output against its source decoded whole and resized straight to that
/// size (`stages::psnr_against_whole_decode`). What is lost is shrink-on-load (a reduced
/// inverse DCT aliases a little, and the final resize barely filters when the scale
/// lands just above the output size) and the last bit of each coefficient that pruned
/// progressive scans drop. `tests/corpus.rs` holds every corpus JPEG to it in both builds
/// and prints each one's figure: the least is a very detailed landscape decoded at 1/4 to
/// 816 px for 800, at 37.66 dB in the default build (37.34 in the `libjpeg-simd` one,
/// whose SIMD reduced IDCTs are libjpeg 6b's); the next, 38.43 dB there, a baseline
/// photo decoded at 1/2 (40.16 dB in the default build). History: `crates/bench/PERF.md`.
pub const SHRINK_ON_LOAD_MIN_PSNR_DB: f64 = 37.0;
