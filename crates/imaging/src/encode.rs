//! Raster to file bytes. Nothing from the source is copied: no EXIF, no ICC, no XMP.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::ImageEncoder;

use crate::error::EncodeError;
use crate::format::OutputFormat;
use crate::raster::Raster;

/// Encodes `raster` (whatever its layout) in `format`.
///
/// JPEG gets a one-channel stream for grey and has alpha flattened onto white; PNG and
/// WebP keep the layout as it is.
pub(crate) fn encode(
    raster: &Raster,
    format: OutputFormat,
    quality: u8,
) -> Result<Vec<u8>, EncodeError> {
    match format {
        OutputFormat::Jpeg if raster.layout.has_alpha() => {
            encode_jpeg(&raster.clone().flatten_on_white(), quality)
        }
        OutputFormat::Jpeg => encode_jpeg(raster, quality),
        OutputFormat::Png => {
            let mut out = Vec::new();
            PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
                .write_image(
                    &raster.data,
                    raster.width,
                    raster.height,
                    raster.layout.color_type(),
                )?;
            Ok(out)
        }
        OutputFormat::WebP => encode_webp(raster, quality),
        OutputFormat::Avif => {
            crate::avif::encode(raster, quality).map_err(|e| EncodeError::Avif(e.to_string()))
        }
    }
}

/// Lossy WebP at `quality` by libwebp, alpha kept.
#[cfg(feature = "libwebp")]
fn encode_webp(raster: &Raster, quality: u8) -> Result<Vec<u8>, EncodeError> {
    crate::webp::encode(raster, quality).ok_or(EncodeError::Webp)
}

/// Lossless WebP: the `image` crate's encoder has no lossy mode.
#[cfg(not(feature = "libwebp"))]
fn encode_webp(raster: &Raster, _quality: u8) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out).encode(
        &raster.data,
        raster.width,
        raster.height,
        raster.layout.color_type(),
    )?;
    Ok(out)
}

#[cfg(feature = "libjpeg-simd")]
fn encode_jpeg(raster: &Raster, quality: u8) -> Result<Vec<u8>, EncodeError> {
    if raster.width > 65_535 || raster.height > 65_535 {
        return Err(EncodeError::TooLargeForJpeg {
            width: raster.width,
            height: raster.height,
        });
    }
    crate::libjpeg::encode(raster, quality).map_err(|e| EncodeError::Libjpeg(e.to_string()))
}

#[cfg(not(feature = "libjpeg-simd"))]
fn encode_jpeg(raster: &Raster, quality: u8) -> Result<Vec<u8>, EncodeError> {
    let too_large = || EncodeError::TooLargeForJpeg {
        width: raster.width,
        height: raster.height,
    };
    let width = u16::try_from(raster.width).map_err(|_| too_large())?;
    let height = u16::try_from(raster.height).map_err(|_| too_large())?;
    let colour = match raster.layout {
        crate::raster::Layout::Luma => jpeg_encoder::ColorType::Luma,
        crate::raster::Layout::Rgb => jpeg_encoder::ColorType::Rgb,
        crate::raster::Layout::LumaAlpha | crate::raster::Layout::Rgba => {
            unreachable!("alpha is flattened before encode_jpeg")
        }
    };
    // About 1 bit per pixel at q80 for photos; avoids regrowing the buffer.
    let mut out = Vec::with_capacity(raster.data.len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    // Chroma averaged over each 2×2 block as libjpeg does, not the top-left sample
    // (jpeg-encoder's default): that one put small colour patterns 5 to 8 levels further
    // from their source than libjpeg-turbo (tested below).
    encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
    // Optimised Huffman tables are deliberately left off: zune-jpeg 0.5.15 (the `image`
    // crate's decoder) decodes jpeg-encoder 0.7.1's optimised files into stripes of wrong
    // colour, although libjpeg reads them correctly. Standard tables cost a few percent.
    encoder.encode(&raster.data, width, height, colour)?;
    Ok(out)
}

/// The build's JPEG encoder against libjpeg-turbo's (the native build's, and libvips'):
/// on small synthetic images, where a subsampling or rounding shortcut shows, it must be
/// as close to the source at the same quality and take no more bytes.
#[cfg(all(test, feature = "libjpeg"))]
mod fidelity {
    use super::*;
    use crate::raster::Layout;

    fn rgb(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Raster {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&pixel(x, y));
            }
        }
        Raster {
            width,
            height,
            layout: Layout::Rgb,
            data,
        }
    }

    /// Mean absolute difference per sample between `jpeg` decoded and `source`.
    fn distance(jpeg: &[u8], source: &Raster) -> f64 {
        let decoded = image::load_from_memory(jpeg).expect("decodes").to_rgb8();
        let sum: u64 = decoded
            .as_raw()
            .iter()
            .zip(&source.data)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        sum as f64 / source.data.len() as f64
    }

    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 25],
        [30, 180, 40],
        [20, 40, 220],
        [250, 220, 30],
        [20, 200, 210],
        [200, 30, 190],
        [255, 255, 255],
        [10, 10, 10],
    ];

    #[test]
    fn small_gradients_and_palette_patterns_are_as_faithful_as_libjpeg_turbo() {
        let images = [
            (
                "RGB gradient 40×32",
                rgb(40, 32, |x, y| {
                    [(x * 255 / 39) as u8, (y * 255 / 31) as u8, 128]
                }),
            ),
            (
                "diagonal hue ramp 32×32",
                rgb(32, 32, |x, y| {
                    let t = (x + y) * 255 / 62;
                    [t as u8, (255 - t) as u8, ((t * 2) % 256) as u8]
                }),
            ),
            (
                "palette tiles 6 px, 36×36",
                rgb(36, 36, |x, y| PALETTE[((x / 6 + 3 * (y / 6)) % 8) as usize]),
            ),
            (
                "palette stripes 2 px, 40×40",
                rgb(40, 40, |x, _| PALETTE[((x / 2) % 8) as usize]),
            ),
            (
                "palette checker 4 px, 36×40",
                rgb(36, 40, |x, y| {
                    PALETTE[(((x / 4) + (y / 4)) % 2 * 5) as usize]
                }),
            ),
        ];
        for quality in [80, 85, 92] {
            for (what, source) in &images {
                let ours = encode_jpeg(source, quality).expect("encoded");
                let turbo = crate::libjpeg::encode(source, quality).expect("libjpeg");
                let (d_ours, d_turbo) = (distance(&ours, source), distance(&turbo, source));
                assert!(
                    d_ours <= d_turbo + 0.5,
                    "{what} q{quality}: {d_ours:.2} levels from the source, libjpeg-turbo {d_turbo:.2}"
                );
                assert!(
                    ours.len() as f64 <= turbo.len() as f64 * 1.1,
                    "{what} q{quality}: {} bytes, libjpeg-turbo {}",
                    ours.len(),
                    turbo.len()
                );
            }
        }
    }
}
