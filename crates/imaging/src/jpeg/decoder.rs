//! The `jpeg-decoder` adapter: one JPEG decoded at a DCT scale, its progressive scans
//! pruned first.

use super::{correct_dc, prune_scans, Frame, Scale, Scan};
use crate::limits::Limits;
use crate::raster::{Layout, Raster};

/// One JPEG to decode at a DCT scale: what every scaled decoder takes.
#[derive(Clone, Copy)]
pub(crate) struct ScaledJpeg<'a> {
    /// The file.
    pub(crate) data: &'a [u8],
    /// Its frame header.
    pub(crate) frame: &'a Frame,
    /// A progressive stream's scans (empty: decode the stream as it is); those `scale`
    /// does not need are cut out first ([`prune_scans`]).
    pub(crate) scans: &'a [Scan],
    /// The DCT scale.
    pub(crate) scale: Scale,
    /// Allocation limits.
    pub(crate) limits: &'a Limits,
    /// The CMYK profile's transform (the embedded one, else the default), for CMYK and
    /// YCCK files (`None`: the naive conversion).
    pub(crate) cmyk: Option<&'a crate::colour::CmykTransform>,
}

/// Decodes a JPEG at its scale with `jpeg-decoder` into RGB or grey.
///
/// CMYK and YCCK go through the CMYK profile's transform (see `read_header`).
pub(crate) fn decode_scaled(job: ScaledJpeg<'_>) -> Result<Raster, jpeg_decoder::Error> {
    use jpeg_decoder::{ColorTransform, Decoder, PixelFormat};

    let ScaledJpeg {
        data,
        frame,
        scans,
        scale,
        limits,
        cmyk,
    } = job;
    let pruned = prune_scans(data, frame, scans, scale);
    let dc_truncated = pruned.dc_truncated;
    let data = pruned.data;
    let mut decoder = Decoder::new(&data[..]);
    decoder.set_max_decoding_buffer_size(
        usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX),
    );
    decoder.read_info()?;
    let info = decoder
        .info()
        .ok_or_else(|| jpeg_decoder::Error::Format("no frame header after read_info".to_owned()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let want = (scale.apply(width), scale.apply(height));
    let request = |len: u32| u16::try_from(len).expect("a scaled side fits where the whole did");
    // `scale` picks the smallest factor reaching the request in *either* axis; asking for
    // the exact scaled size gets `scale` itself (sides under 8 pixels aside, checked here).
    let got = decoder.scale(request(want.0), request(want.1))?;
    if (u32::from(got.0), u32::from(got.1)) != want {
        return Err(jpeg_decoder::Error::Format(format!(
            "asked for {want:?} at {}/8, got {got:?}",
            scale.eighths()
        )));
    }
    let layout = match info.pixel_format {
        PixelFormat::L8 => Layout::Luma,
        PixelFormat::RGB24 => Layout::Rgb,
        PixelFormat::CMYK32 => {
            decoder.set_color_transform(match frame.adobe_transform {
                Some(2) => ColorTransform::YCCK,
                _ => ColorTransform::CMYK,
            });
            Layout::Rgb
        }
        PixelFormat::L16 => {
            return Err(jpeg_decoder::Error::Format(
                "16-bit samples are left to the full decoder".to_owned(),
            ))
        }
    };
    let mut pixels = decoder.decode()?;
    let data = match info.pixel_format {
        // It hands back `255 − C'` for every channel, for CMYK (which it inverts) and
        // YCCK alike (whose YCC → RGB step gives `255 − C'`, as libjpeg's encoder formed
        // it from `C'`): the inks.
        PixelFormat::CMYK32 => crate::colour::cmyk_to_rgb(cmyk, &mut pixels, false),
        _ => pixels,
    };
    let mut raster = Raster {
        width: want.0,
        height: want.1,
        layout,
        data,
    };
    if raster.data.len() != raster.width as usize * raster.height as usize * layout.channels() {
        return Err(jpeg_decoder::Error::Format(
            "decoded buffer does not match its size".to_owned(),
        ));
    }
    correct_dc(&mut raster, frame, dc_truncated);
    Ok(raster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::scans;
    use crate::jpeg::test_streams::eighths;

    /// A progressive photo of the corpus, if it is there.
    fn progressive_photo() -> Option<Vec<u8>> {
        let dir = std::env::var_os("PIXPOOL_CORPUS").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
            std::path::PathBuf::from,
        );
        std::fs::read(dir.join("11-bridge-progressive.jpg")).ok()
    }

    #[test]
    fn pruned_decodes_match_whole_stream_decodes() {
        let Some(data) = progressive_photo() else {
            eprintln!("skipping: ../shared/corpus not found");
            return;
        };
        let frame = Frame::parse(&data).expect("frame");
        let found = scans(&data).expect("scans");
        assert_eq!(found.len(), 10, "libjpeg's standard script");
        let limits = Limits::default();
        let decode = |scans: &[Scan], scale| {
            decode_scaled(ScaledJpeg {
                data: &data,
                frame: &frame,
                scans,
                scale,
                limits: &limits,
                cmyk: None,
            })
            .expect("decode")
        };
        let psnr = |a: &Raster, b: &Raster| {
            let mse = a
                .data
                .iter()
                .zip(&b.data)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
                / b.data.len() as f64;
            10.0 * (255.0f64.powi(2) / mse).log10()
        };
        // 1/8: only the first DC scan is read (the DC's last bit goes).
        let (pruned, whole) = (decode(&found, eighths(1)), decode(&[], eighths(1)));
        assert_eq!((pruned.width, pruned.height), (544, 306));
        assert!(
            psnr(&pruned, &whole) > 45.0,
            "1/8 at {:.1} dB",
            psnr(&pruned, &whole)
        );
        assert!(prune_scans(&data, &frame, &found, eighths(1)).data.len() < data.len() / 4);
        // 1/4: luma AC loses its last two refinement bits, chroma AC and DC the last.
        let (pruned, whole) = (decode(&found, eighths(2)), decode(&[], eighths(2)));
        assert!(
            psnr(&pruned, &whole) > 40.0,
            "1/4 at {:.1} dB",
            psnr(&pruned, &whole)
        );
    }
}
