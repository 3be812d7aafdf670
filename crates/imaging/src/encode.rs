//! Raster to file bytes. Nothing from the source is copied: no EXIF, no ICC, no XMP.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
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
        OutputFormat::WebP => {
            let mut out = Vec::new();
            WebPEncoder::new_lossless(&mut out).encode(
                &raster.data,
                raster.width,
                raster.height,
                raster.layout.color_type(),
            )?;
            Ok(out)
        }
    }
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
    let encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    // Optimised Huffman tables are deliberately left off: zune-jpeg 0.5.15 (the `image`
    // crate's decoder) decodes jpeg-encoder 0.7.1's optimised files into stripes of wrong
    // colour, although libjpeg reads them correctly. Standard tables cost a few percent.
    encoder.encode(&raster.data, width, height, colour)?;
    Ok(out)
}
