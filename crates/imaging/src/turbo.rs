//! JPEG through libjpeg-turbo 3 (the `turbojpeg` feature): decoding at a DCT scale, and
//! encoding.
//!
//! About twice as fast as the pure-Rust codecs on one core (SIMD Huffman and DCT code
//! written in assembly); the price is a C library built from source, hence a feature that
//! is off by default. Colour follows the pure-Rust build: CMYK and YCCK become RGB through
//! the embedded CMYK profile, or else with `R = C'·K'/255` on the stored (Adobe-inverted)
//! values, which is what libjpeg hands back for both.

use std::borrow::Cow;

use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, ScalingFactor, Subsamp};

use crate::colour;
use crate::jpeg::{self, ScaledJpeg, MAX_SCANS};
use crate::raster::{Layout, Raster};

/// Decodes a JPEG at its scale, progressive scans that the scale does not need cut out
/// first (see [`jpeg::prune_scans`]).
pub(crate) fn decode(job: ScaledJpeg<'_>) -> Result<Raster, turbojpeg::Error> {
    let ScaledJpeg {
        data,
        frame,
        scans,
        scale,
        limits,
        cmyk,
    } = job;
    let pruned = jpeg::prune_scans(data, frame, scans, scale);
    let dc_truncated = pruned.dc_truncated;
    let data: Cow<'_, [u8]> = pruned.data;
    let mut decompressor = Decompressor::new()?;
    decompressor.set_scan_limit(u32::try_from(MAX_SCANS).expect("a small constant"))?;
    let header = decompressor.read_header(&data)?;
    let factor = ScalingFactor::new(usize::from(scale.eighths()), 8);
    if factor != ScalingFactor::ONE {
        decompressor.set_scaling_factor(factor)?;
    }
    let (width, height) = (factor.scale(header.width), factor.scale(header.height));
    let (format, layout) = match header.colorspace {
        Colorspace::Gray => (PixelFormat::GRAY, Layout::Luma),
        Colorspace::CMYK | Colorspace::YCCK => (PixelFormat::CMYK, Layout::Rgb),
        _ => (PixelFormat::RGB, Layout::Rgb),
    };
    let bytes = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(format.size()))
        .filter(|&n| u64::try_from(n).is_ok_and(|n| n <= limits.max_alloc_bytes))
        .ok_or(turbojpeg::Error::OutOfBounds)?;
    let mut pixels = vec![0; bytes];
    decompressor.decompress(
        &data,
        Image {
            pixels: &mut pixels[..],
            width,
            pitch: width * format.size(),
            height,
            format,
        },
    )?;
    if format == PixelFormat::CMYK {
        // libjpeg hands back the stored (Adobe-inverted) values.
        pixels = colour::cmyk_to_rgb(cmyk, &mut pixels, true);
    }
    let mut raster = Raster {
        width: u32::try_from(width).map_err(|_| turbojpeg::Error::IntegerOverflow("width"))?,
        height: u32::try_from(height).map_err(|_| turbojpeg::Error::IntegerOverflow("height"))?,
        layout,
        data: pixels,
    };
    jpeg::correct_dc(&mut raster, frame, dc_truncated);
    Ok(raster)
}

/// Encodes an RGB or grey raster as a baseline JPEG with standard Huffman tables, with the
/// chroma subsampling `jpeg-encoder` would use (4:2:0 under quality 90, else 4:4:4).
pub(crate) fn encode(raster: &Raster, quality: u8) -> Result<Vec<u8>, turbojpeg::Error> {
    let (format, subsamp) = match raster.layout {
        Layout::Luma => (PixelFormat::GRAY, Subsamp::Gray),
        Layout::Rgb if quality < 90 => (PixelFormat::RGB, Subsamp::Sub2x2),
        Layout::Rgb => (PixelFormat::RGB, Subsamp::None),
        Layout::LumaAlpha | Layout::Rgba => unreachable!("alpha is flattened before encoding"),
    };
    let width = usize::try_from(raster.width).expect("u32 fits in usize");
    let height = usize::try_from(raster.height).expect("u32 fits in usize");
    let mut compressor = Compressor::new()?;
    compressor.set_quality(i32::from(quality))?;
    compressor.set_subsamp(subsamp)?;
    compressor.compress_to_vec(Image {
        pixels: &raster.data[..],
        width,
        pitch: width * format.size(),
        height,
        format,
    })
}
