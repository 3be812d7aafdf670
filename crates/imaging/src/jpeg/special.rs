//! The JPEG codings zune-jpeg does not read, behind the `image` crate's decoder trait so
//! that the pipeline takes them like any other file (limits, orientation, ICC profile):
//! lossless (SOF3) is decoded whole by `jpeg-decoder`; arithmetic-coded (SOF9, SOF10)
//! files are libjpeg's, at every scale, through the usual path (`prefer_libjpeg`), so
//! this decoder only reports that libjpeg refused one.

use image::error::{DecodingError, ImageFormatHint};
use image::{ColorType, ImageDecoder, ImageError, ImageFormat, ImageResult};

use super::markers::{Markers, APP2, EOI, SOS};
use super::structure::{Coding, Frame};
use crate::raster::{Layout, Raster};

/// APP1: where EXIF lives (`Exif\0\0`, then a TIFF structure).
const APP1: u8 = 0xe1;

/// A lossless or arithmetic-coded JPEG, its metadata read from its segments.
pub(crate) struct Special<'a> {
    data: &'a [u8],
    frame: Frame,
    icc: Option<Vec<u8>>,
    exif: Option<Vec<u8>>,
}

impl<'a> Special<'a> {
    /// The decoder of `data`, whose frame header is `frame` (of a coding this build reads).
    pub(crate) fn new(data: &'a [u8], frame: Frame) -> Special<'a> {
        let (icc, exif) = metadata(data);
        Special {
            data,
            frame,
            icc,
            exif,
        }
    }

    fn decode(&self) -> Result<Raster, String> {
        match self.frame.coding {
            Coding::Lossless => lossless(self.data, &self.frame),
            Coding::Arithmetic => Err("libjpeg could not decode this arithmetic-coded JPEG".into()),
            other => Err(format!("{other:?} is not decoded here")),
        }
    }
}

impl ImageDecoder for Special<'_> {
    fn dimensions(&self) -> (u32, u32) {
        (u32::from(self.frame.width), u32::from(self.frame.height))
    }

    fn color_type(&self) -> ColorType {
        if self.frame.components == 1 {
            ColorType::L8
        } else {
            ColorType::Rgb8
        }
    }

    fn icc_profile(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.icc.clone())
    }

    fn exif_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.exif.clone())
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        let failed = |message: String| {
            ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(ImageFormat::Jpeg),
                message,
            ))
        };
        let raster = self.decode().map_err(failed)?;
        if raster.data.len() != buf.len() {
            return Err(failed(format!(
                "decoded {} bytes where the header promised {}",
                raster.data.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(&raster.data);
        Ok(())
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

/// The ICC profile (its `APP2` chunks in sequence order) and the EXIF block (from its
/// TIFF header) of the segments before the first scan.
fn metadata(data: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    const ICC_TAG: &[u8] = b"ICC_PROFILE\0";
    let (mut chunks, mut exif) = (Vec::new(), None);
    for item in Markers::new(data) {
        let Ok(segment) = item else { break };
        match segment.marker {
            SOS | EOI => break,
            APP1 if exif.is_none() => {
                if let Some(tiff) = segment.body.strip_prefix(b"Exif\0\0") {
                    exif = Some(tiff.to_vec());
                }
            }
            APP2 => {
                // Sequence number, count, then the chunk.
                if let Some([seq, _, chunk @ ..]) = segment.body.strip_prefix(ICC_TAG) {
                    chunks.push((*seq, chunk));
                }
            }
            _ => {}
        }
    }
    chunks.sort_by_key(|(seq, _)| *seq);
    let icc =
        (!chunks.is_empty()).then(|| chunks.iter().flat_map(|(_, c)| c.iter().copied()).collect());
    (icc, exif)
}

/// A lossless JPEG, whole, as 8-bit grey or RGB: deeper grey is scaled to 8 bits, and
/// three components are taken as YCbCr unless the file says RGB (an Adobe segment with
/// transform 0, or components named `R`, `G`, `B`), as libjpeg decides.
fn lossless(data: &[u8], frame: &Frame) -> Result<Raster, String> {
    let mut decoder = jpeg_decoder::Decoder::new(data);
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no frame header")?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let (layout, data) = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => (Layout::Luma, pixels),
        jpeg_decoder::PixelFormat::L16 => {
            // Native-endian samples of `precision` bits.
            let max = (1u32 << frame.precision.clamp(9, 16)) - 1;
            let grey = pixels
                .chunks_exact(2)
                .map(|s| {
                    let v = u32::from(u16::from_ne_bytes([s[0], s[1]])).min(max);
                    u8::try_from((v * 255 + max / 2) / max).unwrap_or(u8::MAX)
                })
                .collect();
            (Layout::Luma, grey)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            let rgb_coded =
                frame.adobe_transform == Some(0) || frame.ids[..3] == [b'R', b'G', b'B'];
            let mut pixels = pixels;
            if !rgb_coded {
                pixels.chunks_exact_mut(3).for_each(ycbcr_to_rgb);
            }
            (Layout::Rgb, pixels)
        }
        jpeg_decoder::PixelFormat::CMYK32 => return Err("lossless CMYK is not decoded".into()),
    };
    if data.len() != width as usize * height as usize * layout.channels() {
        return Err("the decoder gave fewer samples than the frame declares".into());
    }
    Ok(Raster {
        width,
        height,
        layout,
        data,
    })
}

/// JFIF's YCbCr to RGB, full range, in place.
fn ycbcr_to_rgb(px: &mut [u8]) {
    let (y, cb, cr) = (
        f32::from(px[0]),
        f32::from(px[1]) - 128.0,
        f32::from(px[2]) - 128.0,
    );
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    px[0] = clamp(y + 1.402 * cr);
    px[1] = clamp(y - 0.344_136 * cb - 0.714_136 * cr);
    px[2] = clamp(y + 1.772 * cb);
}
