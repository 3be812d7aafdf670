//! WebP through libwebp (the `libwebp` feature): decoding with libwebp's own rescaler
//! straight to a reduced size, the WebP counterpart of a JPEG's shrink-on-load.
//!
//! libwebp decodes a lossy photo several times faster than the `image` crate's pure-Rust
//! decoder (image-webp; figures in `crates/bench/PERF.md`), and its rescaler (an area
//! average, a proper low-pass) folds the reduction into the YUV-to-RGB conversion, so no
//! full-size RGB buffer is ever made. The bitstream itself
//! is always decoded whole: VP8 has no reduced-scale decode.
//!
//! Animations and anything libwebp refuses are left to the `image` crate, so that what is
//! accepted and the errors given stay those of the plain build.

use libwebp_sys::{
    VP8StatusCode, WebPDecode, WebPDecoderConfig, WebPEncodeRGB, WebPEncodeRGBA, WebPFree,
    WebPFreeDecBuffer, WebPGetFeaturesInternal, WEBP_CSP_MODE, WEBP_DECODER_ABI_VERSION,
};

use crate::limits::Limits;
use crate::preset::Geometry;
use crate::raster::{Layout, Raster};

/// Source pixels per output pixel kept by the rescaler, so that the final Lanczos3 pass
/// still has detail to filter (as a JPEG's DCT scale keeps at least one).
const MARGIN: f64 = 2.0;

/// Below this reduction the rescaler saves too little to be worth a second filter.
const MIN_REDUCTION: f64 = 0.75;

/// `raster` as a lossy WebP at `quality` (libwebp's simple API, its default method and
/// filters), alpha kept; grey is written as RGB (WebP has no grey mode). `None` when
/// libwebp refuses (a side over 16383).
pub(crate) fn encode(raster: &Raster, quality: u8) -> Option<Vec<u8>> {
    let expanded;
    let (pixels, channels): (&[u8], usize) = match raster.layout {
        Layout::Rgb => (&raster.data, 3),
        Layout::Rgba => (&raster.data, 4),
        Layout::Luma => {
            expanded = raster
                .data
                .iter()
                .flat_map(|&l| [l, l, l])
                .collect::<Vec<u8>>();
            (&expanded, 3)
        }
        Layout::LumaAlpha => {
            expanded = raster
                .data
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0], p[1]])
                .collect::<Vec<u8>>();
            (&expanded, 4)
        }
    };
    let width = i32::try_from(raster.width).ok()?;
    let height = i32::try_from(raster.height).ok()?;
    let stride = width.checked_mul(i32::try_from(channels).ok()?)?;
    let mut out: *mut u8 = std::ptr::null_mut();
    // SAFETY: `pixels` holds `height` rows of `stride` bytes and outlives the call;
    // libwebp allocates `out`, which is copied and then freed with its own allocator.
    unsafe {
        let encode = if channels == 4 {
            WebPEncodeRGBA
        } else {
            WebPEncodeRGB
        };
        let len = encode(
            pixels.as_ptr(),
            width,
            height,
            stride,
            f32::from(quality),
            &mut out,
        );
        if out.is_null() {
            return None;
        }
        let bytes = (len > 0).then(|| std::slice::from_raw_parts(out, len).to_vec());
        WebPFree(out.cast());
        bytes
    }
}

/// Why libwebp did not decode a file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebpError {
    #[error("libwebp could not read the header ({0:?})")]
    Header(VP8StatusCode),
    #[error("animated WebP: left to the image crate (first frame)")]
    Animated,
    #[error("the decoded image would pass the allocation limit")]
    TooLarge,
    #[error("libwebp could not set up a decoder")]
    Config,
    #[error("libwebp could not decode the image ({0:?})")]
    Decode(VP8StatusCode),
}

/// The size to decode a `width` × `height` WebP at for `outputs` (geometries in its own
/// coordinates): `None` for the full size.
pub(crate) fn target_size(width: u32, height: u32, outputs: &[Geometry]) -> Option<(u32, u32)> {
    // Output pixels per source pixel, the most any output needs.
    let need = outputs
        .iter()
        .map(|g| (f64::from(g.width) / g.region.width).max(f64::from(g.height) / g.region.height))
        .fold(0.0, f64::max);
    let factor = (need * MARGIN).min(1.0);
    if factor > MIN_REDUCTION || !factor.is_finite() || factor <= 0.0 {
        return None;
    }
    let scaled = |side: u32| ((f64::from(side) * factor).ceil() as u32).clamp(1, side);
    Some((scaled(width), scaled(height)))
}

/// Decodes `data` (a whole WebP file), rescaled to `size` when given.
pub(crate) fn decode(
    data: &[u8],
    size: Option<(u32, u32)>,
    limits: &Limits,
) -> Result<Raster, WebpError> {
    let mut config = WebPDecoderConfig::new().map_err(|()| WebpError::Config)?;
    // SAFETY: `data` is a live slice for the call; `config.input` is a plain struct libwebp
    // fills in.
    let status = unsafe {
        WebPGetFeaturesInternal(
            data.as_ptr(),
            data.len(),
            &mut config.input,
            WEBP_DECODER_ABI_VERSION as i32,
        )
    };
    if status != VP8StatusCode::VP8_STATUS_OK {
        return Err(WebpError::Header(status));
    }
    if config.input.has_animation != 0 {
        return Err(WebpError::Animated);
    }
    let alpha = config.input.has_alpha != 0;
    let (layout, mode) = if alpha {
        (Layout::Rgba, WEBP_CSP_MODE::MODE_RGBA)
    } else {
        (Layout::Rgb, WEBP_CSP_MODE::MODE_RGB)
    };
    let full = (
        u32::try_from(config.input.width).map_err(|_| WebpError::TooLarge)?,
        u32::try_from(config.input.height).map_err(|_| WebpError::TooLarge)?,
    );
    let (width, height) = size.unwrap_or(full);
    if size.is_some() {
        config.options.use_scaling = 1;
        config.options.scaled_width = i32::try_from(width).map_err(|_| WebpError::TooLarge)?;
        config.options.scaled_height = i32::try_from(height).map_err(|_| WebpError::TooLarge)?;
    }
    let stride = width as usize * layout.channels();
    let bytes = stride
        .checked_mul(height as usize)
        .filter(|&n| n as u64 <= limits.max_alloc_bytes)
        .ok_or(WebpError::TooLarge)?;
    let mut pixels = vec![0u8; bytes];
    config.output.colorspace = mode;
    config.output.is_external_memory = 1;
    // The RGBA member of the output union: the one libwebp uses for an RGB(A) colourspace.
    config.output.u.RGBA.rgba = pixels.as_mut_ptr();
    config.output.u.RGBA.stride = i32::try_from(stride).map_err(|_| WebpError::TooLarge)?;
    config.output.u.RGBA.size = pixels.len();
    // SAFETY: `data` and `pixels` outlive the call; libwebp writes at most `size` bytes
    // with the given stride into `pixels` (external memory), and WebPFreeDecBuffer then
    // releases only what libwebp allocated itself.
    let status = unsafe {
        let status = WebPDecode(data.as_ptr(), data.len(), &mut config);
        WebPFreeDecBuffer(&mut config.output);
        status
    };
    if status != VP8StatusCode::VP8_STATUS_OK {
        return Err(WebpError::Decode(status));
    }
    Ok(Raster {
        width,
        height,
        layout,
        data: pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::Region;

    fn geometry(w: u32, h: u32, out_w: u32, out_h: u32) -> Geometry {
        Geometry {
            region: Region::whole(w, h),
            width: out_w,
            height: out_h,
        }
    }

    #[test]
    fn target_keeps_two_source_pixels_per_output_pixel() {
        // 800 wide from 3088: a quarter would leave 1.0; the margin keeps 1600.
        let size = target_size(3088, 2056, &[geometry(3088, 2056, 800, 533)]);
        assert_eq!(size, Some((1602, 1066)));
        // Nothing worth it for a large output.
        assert_eq!(
            target_size(3088, 2056, &[geometry(3088, 2056, 1600, 1066)]),
            None
        );
        assert_eq!(target_size(100, 100, &[]), None);
    }

    #[test]
    fn decodes_the_corpus_webp_scaled_and_whole() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-data/19-aitzgorri.webp"
        );
        let data = std::fs::read(path).expect("test-data photo");
        let whole = decode(&data, None, &Limits::default()).expect("decode");
        assert_eq!(
            (whole.width, whole.height, whole.layout),
            (3088, 2056, Layout::Rgb)
        );
        let scaled = decode(&data, Some((1544, 1028)), &Limits::default()).expect("decode");
        assert_eq!((scaled.width, scaled.height), (1544, 1028));
        assert_eq!(scaled.data.len(), 1544 * 1028 * 3);
        // The average colour survives the reduction.
        let mean =
            |r: &Raster| r.data.iter().map(|&v| f64::from(v)).sum::<f64>() / r.data.len() as f64;
        assert!((mean(&whole) - mean(&scaled)).abs() < 1.0);

        let tight = Limits {
            max_alloc_bytes: 1000,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&data, None, &tight),
            Err(WebpError::TooLarge)
        ));
        assert!(decode(b"RIFF\0\0\0\0WEBPjunk", None, &Limits::default()).is_err());
    }

    /// The quality cost of rescaling on load: the final 800-px variant made from the
    /// rescaled decode against the one made from the whole decode (same Lanczos3 pass).
    #[test]
    fn rescaled_decode_keeps_the_output_within_40_db_of_a_whole_decode() {
        use crate::resize::{Rendition, Resampler};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-data/19-aitzgorri.webp"
        );
        let data = std::fs::read(path).expect("test-data photo");
        let want = geometry(3088, 2056, 800, 533);
        let render = |size| {
            let raster = decode(&data, size, &Limits::default()).expect("decode");
            let source = Rendition {
                raster,
                region: Region::whole(3088, 2056),
            };
            Resampler::default()
                .render(&source, &[], &want)
                .expect("resize")
                .0
        };
        let size = target_size(3088, 2056, &[want]);
        assert!(size.is_some());
        let (reduced, whole) = (render(size), render(None));
        assert_eq!(reduced.data.len(), whole.data.len());
        let se: f64 = reduced
            .data
            .iter()
            .zip(&whole.data)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let psnr = 10.0 * (255.0f64.powi(2) / (se / reduced.data.len() as f64)).log10();
        assert!(psnr >= 40.0, "PSNR {psnr:.1} dB");
        eprintln!("rescaled on load: PSNR {psnr:.1} dB against the whole decode");
    }
}
