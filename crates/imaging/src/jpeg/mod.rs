//! JPEG specifics: the stream's structure, and shrink-on-load.
//!
//! A JPEG stores 8×8 blocks of DCT coefficients. A decoder can run a smaller inverse DCT
//! (4×4, 2×2 or just the DC term) and get the image at 1/2, 1/4 or 1/8 of its size for
//! a fraction of the work, with the quality of a box-filtered downscale. The pipeline
//! asks for the smallest such [`Scale`] at which every output still has a source pixel
//! per output pixel, and resamples from there with Lanczos3 as usual.
//!
//! Who decodes (pure-Rust build):
//! - at full scale, zune-jpeg (through the `image` crate), the fastest Rust decoder;
//! - at a reduced scale, `jpeg-decoder` (the only Rust decoder with DCT scaling), where it
//!   beats zune-jpeg's full decode followed by a larger resize. Its Huffman decoding is
//!   slower than zune-jpeg's, which `prefer_scaled_decoder` weighs; the numbers are in
//!   the crate's benchmarks.
//! - For progressive files, scans that only carry coefficients the reduced inverse DCT
//!   never reads (e.g. every AC scan at 1/8) are cut out of the stream before
//!   `jpeg-decoder` sees it ([`prune_scans`]): the output is identical and the entropy
//!   decoding of those scans, the bulk of the file, is never done.
//!
//! With the `libjpeg` feature (on by default), libjpeg (libjpeg-turbo's C code, no SIMD)
//! takes every reduced-scale decode, pruned progressive streams included, and CMYK files:
//! its Huffman decoding is faster than `jpeg-decoder`'s, and with block smoothing off
//! (pruned scans leave coefficients out, which smoothing would estimate) so are its
//! progressive decodes (`prefer_libjpeg`). zune-jpeg keeps the full-scale decodes, but
//! with `libjpeg-simd`, where libjpeg's SIMD code takes every JPEG, at 5/8 to 7/8 too.
//!
//! # Layout
//!
//! - [`markers`]: the one walk over marker segments (fill bytes, standalone markers,
//!   lengths checked against the buffer, entropy-coded data skipped), which every JPEG
//!   reader in the crate uses, the probe and the metadata caps included.
//! - `structure`: what the segments say: [`Frame`], the [`Scan`]s, whether the stream
//!   ends ([`has_end`]).
//! - `scale`: the shrink-on-load policy, [`Scale`] and the choice of decoder.
//! - `prune`: cutting out the scans a reduced decode does not need ([`prune_scans`]).
//! - `decoder`: the `jpeg-decoder` adapter ([`decode_scaled`]).
//! - `special`: lossless and arithmetic-coded files behind the `image` crate's decoder
//!   trait ([`Special`]).

pub(crate) mod markers;

mod decoder;
mod prune;
mod scale;
mod special;
mod structure;

pub(crate) use decoder::{decode_scaled, ScaledJpeg};
pub(crate) use prune::{correct_dc, prune_scans};
#[cfg(feature = "libjpeg")]
pub(crate) use scale::prefer_libjpeg;
#[cfg(not(feature = "libjpeg"))]
pub(crate) use scale::prefer_scaled_decoder;
pub(crate) use scale::Scale;
pub(crate) use special::Special;
pub(crate) use structure::{has_end, scans, Coding, Frame, Scan, ScanError};

/// Streams and frames the tests of several modules build.
#[cfg(test)]
pub(crate) mod test_streams {
    use super::{Frame, Scale};

    /// A scale from its eighths, which the tests know to be valid.
    pub(crate) fn eighths(eighths: u8) -> Scale {
        Scale::from_eighths(eighths).expect("a scale the build supports")
    }

    /// SOI, a scan with the given band and some entropy data (with a stuffed byte and a
    /// restart marker), and so on, then EOI.
    /// Each scan is (component, first coefficient, last coefficient, refinement?); a
    /// refinement sends the last bit (`Ah = 1`, `Al = 0`), a first pass all but that bit.
    pub(super) fn stream(bands: &[(u8, u8, u8, bool)]) -> Vec<u8> {
        let mut s = vec![0xff, 0xd8];
        for &(c, lo, hi, refine) in bands {
            let approximation = if refine { 0x10 } else { 0x01 };
            s.extend_from_slice(&[0xff, 0xda, 0x00, 0x08, 0x01, c, 0x00, lo, hi, approximation]);
            s.extend_from_slice(&[lo, 0xff, 0x00, 0xff, 0xd0, hi]);
        }
        s.extend_from_slice(&[0xff, 0xd9]);
        s
    }

    /// A YCbCr frame whose luma is component 1 and chroma 2 and 3.
    pub(super) fn frame() -> Frame {
        Frame {
            coding: super::structure::Coding::Progressive,
            width: 1920,
            height: 1280,
            precision: 8,
            progressive: true,
            scalable: true,
            components: 3,
            adobe_transform: None,
            ids: [1, 2, 3, 0],
            dc_steps: [16, 16, 16, 0],
        }
    }
}
