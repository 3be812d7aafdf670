//! The pipeline's stages one by one, for the benchmarks (`benches/stages.rs`). Not part
//! of the API: hidden from the documentation, and free to change with the pipeline.

use crate::decode::read_header;
use crate::encode::encode;
use crate::error::ImagingError;
use crate::format::OutputFormat;
use crate::jpeg::{self, Frame, Scale};
use crate::limits::Limits;
use crate::pipeline::swaps_axes;
use crate::preset::{geometry, Geometry, Preset, Region};
use crate::raster::Raster;
use crate::resize::{Rendition, Resampler};

/// Decoded pixels, opaque.
#[derive(Debug)]
pub struct Pixels(Rendition);

impl Pixels {
    fn new(raster: Raster) -> Pixels {
        Pixels(Rendition {
            region: Region::whole(raster.width, raster.height),
            raster,
        })
    }

    /// Width and height.
    pub fn size(&self) -> (u32, u32) {
        (self.0.raster.width, self.0.raster.height)
    }
}

/// Decodes any supported file whole, with the `image` crate (zune-jpeg for JPEG), as the
/// pipeline does at full scale in the default build.
pub fn decode_whole(data: &[u8]) -> Result<Pixels, ImagingError> {
    let limits = Limits::default();
    let header = read_header(data, &limits)?;
    Ok(Pixels::new(header.decode_with_image_crate()?))
}

/// Decodes a JPEG at `eighths`/8 (1, 2, 4 or 8) with the decoder the pipeline uses for
/// scaled decodes, progressive scans pruned: libjpeg (the default `libjpeg` feature), or
/// `jpeg-decoder` without it. CMYK is
/// converted naively: the embedded profile is the pipeline's concern, not this stage's.
pub fn decode_jpeg_scaled(data: &[u8], eighths: u8) -> Result<Pixels, String> {
    let scale = Scale::from_eighths(eighths)
        .ok_or("scale must be 1, 2, 4 or 8 eighths (or 5 to 7 with libjpeg-simd)")?;
    let frame = Frame::parse(data).ok_or("not a JPEG with a frame header")?;
    let scans = if frame.progressive {
        jpeg::scans(data).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let limits = Limits::default();
    crate::decode::scaled_jpeg(jpeg::ScaledJpeg {
        data,
        frame: &frame,
        scans: &scans,
        scale,
        limits: &limits,
        cmyk: None,
    })
    .map(Pixels::new)
}

/// libjpeg decoding a JPEG as it is, every progressive scan included, at `eighths`/8 (the
/// pipeline's decoder without its scan pruning; block smoothing off): the bytes of pixels
/// decoded. The bound `examples/decode_bound.rs` compares the pipeline with.
#[cfg(feature = "libjpeg")]
pub fn libjpeg_decode_stream(data: &[u8], eighths: u8) -> Result<usize, String> {
    let scale = Scale::from_eighths(eighths).ok_or("not a scale this build decodes at")?;
    crate::libjpeg::decode_stream(data, scale).map_err(|e| e.to_string())
}

/// A JPEG's frame and the scale it would be decoded at for `presets`, as the pipeline
/// picks it; `None` for other formats.
fn plan(data: &[u8], presets: &[Preset]) -> Result<Option<(Frame, Scale)>, ImagingError> {
    let header = read_header(data, &Limits::default())?;
    let Some(frame) = header.jpeg else {
        return Ok(None);
    };
    let transposed = swaps_axes(header.orientation);
    let wanted: Vec<Geometry> = presets
        .iter()
        .map(|p| geometry(p, header.width, header.height, transposed))
        .collect();
    let scale = Scale::for_frame(&frame, header.width, header.height, &wanted);
    Ok(Some((frame, scale)))
}

/// The scale a JPEG would be decoded at for `presets`, and by which decoder, e.g.
/// `"1/4 jpeg-decoder"`; `None` for other formats.
pub fn jpeg_plan(data: &[u8], presets: &[Preset]) -> Result<Option<String>, ImagingError> {
    let Some((frame, scale)) = plan(data, presets)? else {
        return Ok(None);
    };
    #[cfg(feature = "libjpeg")]
    let decoder = if jpeg::prefer_libjpeg(&frame, scale) {
        "libjpeg"
    } else {
        "zune-jpeg"
    };
    #[cfg(not(feature = "libjpeg"))]
    let decoder = if jpeg::prefer_scaled_decoder(&frame, scale) {
        "jpeg-decoder"
    } else {
        "zune-jpeg"
    };
    Ok(Some(format!("{} {decoder}", scale_label(scale.eighths()))))
}

/// A DCT scale in eighths as a fraction: `1`, `1/2`, `1/4`, `1/8`, or `5/8` and the like.
pub fn scale_label(eighths: u8) -> String {
    match eighths {
        8 => "1".to_owned(),
        1 | 2 | 4 => format!("1/{}", 8 / eighths),
        n => format!("{n}/8"),
    }
}

/// The DCT scale, in eighths, a JPEG would be decoded at for `presets`; `None` for other
/// formats.
pub fn jpeg_scale_eighths(data: &[u8], presets: &[Preset]) -> Result<Option<u8>, ImagingError> {
    Ok(plan(data, presets)?.map(|(_, scale)| scale.eighths()))
}

/// Resizes the whole of `pixels` to `width` × `height` (Lanczos3).
pub fn resize(pixels: &Pixels, width: u32, height: u32) -> Pixels {
    let want = Geometry {
        region: pixels.0.region,
        width,
        height,
    };
    let (raster, _) = Resampler::default()
        .render(&pixels.0, &[], &want)
        .expect("a whole-image resize to a non-empty size");
    Pixels::new(raster)
}

/// Encodes as JPEG at `quality` with the build's encoder (`jpeg-encoder`, or libjpeg with
/// the `libjpeg-simd` feature).
pub fn encode_jpeg(pixels: &Pixels, quality: u8) -> Vec<u8> {
    encode(&pixels.0.raster, OutputFormat::Jpeg, quality).expect("an RGB or grey raster encodes")
}

/// PSNR (RGB, 8 bits, dB) of the encoded image `output` against `source` decoded whole with
/// the `image` crate, EXIF orientation applied, and resized straight to the output's
/// size (Lanczos3): what shrink-on-load, pruned progressive scans and the cascade cost
/// against the slow, plain way. The embedded ICC profile is applied to the whole decode
/// as the pipeline applies it (a CMYK one needs the inks, which `jpeg-decoder` gives at
/// full scale), so that only the shrinking is measured. `f64::INFINITY` when identical.
pub fn psnr_against_whole_decode(source: &[u8], output: &[u8]) -> Result<f64, String> {
    use fast_image_resize::{images::Image, PixelType, ResizeOptions, Resizer};

    let ours = image::load_from_memory(output)
        .map_err(|e| format!("output: {e}"))?
        .into_rgb8();
    let limits = Limits::default();
    let header = read_header(source, &limits).map_err(|e| e.to_string())?;
    let (orientation, profile, frame) = (header.orientation, header.profile.clone(), header.jpeg);
    let whole = match (&profile, frame) {
        (Some(crate::colour::Profile::Cmyk(cmyk)), Some(frame)) => {
            jpeg::decode_scaled(jpeg::ScaledJpeg {
                data: source,
                frame: &frame,
                scans: &[],
                scale: Scale::FULL,
                limits: &limits,
                cmyk: Some(cmyk.as_ref()),
            })
            .map_err(|e| e.to_string())?
        }
        _ => {
            let mut raster = header
                .decode_with_image_crate()
                .map_err(|e| e.to_string())?;
            if let Some(profile) = &profile {
                profile.apply(&mut raster);
            }
            raster
        }
    };
    let mut full = whole.into_dynamic();
    full.apply_orientation(orientation);
    let full = full.into_rgb8();
    let (w, h) = full.dimensions();
    let src =
        Image::from_vec_u8(w, h, full.into_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = Image::new(ours.width(), ours.height(), PixelType::U8x3);
    let lanczos =
        fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::Lanczos3);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(lanczos))
        .map_err(|e| e.to_string())?;
    let mse = ours
        .as_raw()
        .iter()
        .zip(dst.buffer())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum::<f64>()
        / ours.as_raw().len() as f64;
    Ok(10.0 * (255.0f64 * 255.0 / mse).log10())
}
