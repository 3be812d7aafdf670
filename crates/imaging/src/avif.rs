//! AVIF output: rav1e (pure Rust, without its assembly, one thread: a worker is one
//! core) encodes one still AV1 frame, 8-bit 4:2:0 BT.601 full range tagged sRGB, and
//! `avif-serialize` wraps it in the smallest valid AVIF file, with no metadata. Alpha,
//! when the raster has it, is a second, monochrome AV1 image.
//!
//! ravif would do the same but writes 4:4:4 only; browsers, libvips and the sizes
//! users expect are 4:2:0.

use avif_serialize::constants::{ColorPrimaries, MatrixCoefficients, TransferCharacteristics};
use rav1e::prelude::{
    ChromaSamplePosition, ChromaSampling, ColorDescription, Config, Context, EncoderConfig,
    EncoderStatus, FrameType, PixelRange, Rational, SpeedSettings, Tune,
};

use crate::raster::{Layout, Raster};

/// rav1e's speed preset (0 slowest … 10 fastest). Measured on the corpus (800 px, q80,
/// one core, no assembly): 411 ms and 0.58× the JPEG's bytes at 10, 947 ms and 0.51× at
/// 8. A server pays per upload: the fastest (`crates/bench/PERF.md`).
const SPEED: u8 = 10;

/// Why rav1e did not encode.
#[derive(Debug, thiserror::Error)]
#[error("rav1e: {0}")]
pub(crate) struct AvifError(String);

/// Encodes `raster` at `quality` (1–100, the preset's).
pub(crate) fn encode(raster: &Raster, quality: u8) -> Result<Vec<u8>, AvifError> {
    let (w, h) = (raster.width as usize, raster.height as usize);
    let quantizer = quantizer(quality);
    let (y, u, v) = ycbcr_420(raster);
    let color = encode_av1(w, h, ChromaSampling::Cs420, quantizer, [&y, &u, &v])?;
    let alpha = match raster.layout {
        Layout::LumaAlpha | Layout::Rgba => {
            let channels = raster.layout.channels();
            let a: Vec<u8> = raster
                .data
                .chunks_exact(channels)
                .map(|p| p[channels - 1])
                .collect();
            // Alpha edges show: encoded finer than the colour.
            Some(encode_av1(
                w,
                h,
                ChromaSampling::Cs400,
                quantizer / 2,
                [&a, &[], &[]],
            )?)
        }
        Layout::Luma | Layout::Rgb => None,
    };
    let mut file = avif_serialize::Aviffy::new();
    file.set_matrix_coefficients(MatrixCoefficients::Bt601)
        .set_transfer_characteristics(TransferCharacteristics::Srgb)
        .set_color_primaries(ColorPrimaries::Bt709)
        .set_full_color_range(true)
        .set_chroma_subsampling((true, true))
        // Main profile: 8-bit 4:2:0 (the serializer's default describes 4:4:4).
        .set_seq_profile(0);
    Ok(file.to_vec(&color, alpha.as_deref(), raster.width, raster.height, 8))
}

/// rav1e's quantizer (0 best … 255) for a JPEG-like quality: ravif's curve, which
/// gives files of about a JPEG's quality at the same number.
fn quantizer(quality: u8) -> usize {
    let q = f32::from(quality.clamp(1, 100)) / 100.0;
    let x = if q >= 0.82 {
        (1.0 - q) * 2.6
    } else if q > 0.25 {
        q.mul_add(-0.5, 1.0 - 0.125)
    } else {
        1.0 - q
    };
    (x * 255.0).round().clamp(0.0, 255.0) as usize
}

/// The planes of `raster` as BT.601 full-range Y at full size and Cb, Cr averaged over
/// each 2×2 block (edges replicated), as libjpeg and libvips subsample.
fn ycbcr_420(raster: &Raster) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (w, h) = (raster.width as usize, raster.height as usize);
    let channels = raster.layout.channels();
    let rgb = |x: usize, y: usize| -> [f32; 3] {
        let p = &raster.data[(y * w + x) * channels..];
        match raster.layout {
            Layout::Luma | Layout::LumaAlpha => [f32::from(p[0]); 3],
            Layout::Rgb | Layout::Rgba => [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])],
        }
    };
    let luma = |[r, g, b]: [f32; 3]| 0.299 * r + 0.587 * g + 0.114 * b;
    let to_u8 = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    let mut y_plane = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            y_plane.push(to_u8(luma(rgb(x, y))));
        }
    }
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (mut u_plane, mut v_plane) = (Vec::with_capacity(cw * ch), Vec::with_capacity(cw * ch));
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut cb, mut cr) = (0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let px = rgb((2 * cx + dx).min(w - 1), (2 * cy + dy).min(h - 1));
                let l = luma(px);
                cb += (px[2] - l) / 1.772;
                cr += (px[0] - l) / 1.402;
            }
            u_plane.push(to_u8(cb / 4.0 + 128.0));
            v_plane.push(to_u8(cr / 4.0 + 128.0));
        }
    }
    (y_plane, u_plane, v_plane)
}

/// One still AV1 frame of `planes` (Y, then U and V unless monochrome), its OBUs.
fn encode_av1(
    width: usize,
    height: usize,
    chroma_sampling: ChromaSampling,
    quantizer: usize,
    planes: [&[u8]; 3],
) -> Result<Vec<u8>, AvifError> {
    let fail = |e: &dyn std::fmt::Display| AvifError(e.to_string());
    let config = Config::new()
        .with_encoder_config(EncoderConfig {
            width,
            height,
            time_base: Rational::new(1, 1),
            bit_depth: 8,
            chroma_sampling,
            chroma_sample_position: ChromaSamplePosition::Unknown,
            pixel_range: PixelRange::Full,
            color_description: (chroma_sampling != ChromaSampling::Cs400).then_some(
                ColorDescription {
                    transfer_characteristics: rav1e::prelude::TransferCharacteristics::SRGB,
                    color_primaries: rav1e::prelude::ColorPrimaries::BT709,
                    matrix_coefficients: rav1e::prelude::MatrixCoefficients::BT601,
                },
            ),
            still_picture: true,
            quantizer,
            min_quantizer: u8::try_from(quantizer).unwrap_or(u8::MAX),
            tune: Tune::Psychovisual,
            speed_settings: SpeedSettings::from_preset(SPEED),
            ..EncoderConfig::default()
        })
        .with_threads(1);
    let mut ctx: Context<u8> = config.new_context().map_err(|e| fail(&e))?;
    let mut frame = ctx.new_frame();
    let strides = [width, width.div_ceil(2), width.div_ceil(2)];
    let count = if chroma_sampling == ChromaSampling::Cs400 {
        1
    } else {
        3
    };
    for (i, plane) in frame.planes.iter_mut().enumerate().take(count) {
        plane.copy_from_raw_u8(planes[i], strides[i], 1);
    }
    ctx.send_frame(frame).map_err(|e| fail(&e))?;
    ctx.flush();
    let mut out = Vec::new();
    loop {
        match ctx.receive_packet() {
            Ok(mut packet) if packet.frame_type == FrameType::KEY => out.append(&mut packet.data),
            Ok(_) => {}
            Err(EncoderStatus::Encoded) => {}
            Err(EncoderStatus::LimitReached) => return Ok(out),
            Err(e) => return Err(fail(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftyp_and_boxes(file: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        while at + 8 <= file.len() {
            let len = u32::from_be_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
            names.push(String::from_utf8_lossy(&file[at + 4..at + 8]).to_string());
            if len < 8 {
                break;
            }
            at += len as usize;
        }
        names
    }

    #[test]
    fn an_avif_file_is_ftyp_meta_mdat_420_with_no_metadata() {
        let data: Vec<u8> = (0..64 * 48)
            .flat_map(|i| [(i % 64 * 4) as u8, (i / 64 * 5) as u8, 90])
            .collect();
        let raster = Raster {
            width: 64,
            height: 48,
            layout: Layout::Rgb,
            data,
        };
        let file = encode(&raster, 80).expect("encoded");
        assert_eq!(&file[4..12], b"ftypavif");
        assert_eq!(ftyp_and_boxes(&file), ["ftyp", "meta", "mdat"]);
        let has = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
        // No `colr`: sRGB, BT.601 and full range are its defaults (and the AV1 sequence
        // header says so too).
        assert!(has(b"ispe") && has(b"av1C"), "item properties");
        assert!(
            !has(b"Exif") && !has(b"prof") && !has(b"auxC"),
            "no metadata, no alpha"
        );
        // av1C: marker/version byte, then profile 0 (main), then the flags byte whose
        // chroma_subsampling_x/y bits say 4:2:0, and 8 bits (high_bitdepth clear).
        let av1c = file.windows(4).position(|w| w == b"av1C").expect("av1C") + 4;
        assert_eq!(file[av1c] & 0x7f, 1, "version 1");
        assert_eq!(file[av1c + 1] >> 5, 0, "seq_profile 0");
        let flags = file[av1c + 2];
        assert_eq!(flags & 0x40, 0, "8-bit");
        assert_eq!(flags & 0x0c, 0x0c, "4:2:0");
    }

    #[test]
    fn alpha_becomes_an_auxiliary_image() {
        let data: Vec<u8> = (0..32 * 32)
            .flat_map(|i| [200, 30, 30, (i % 256) as u8])
            .collect();
        let raster = Raster {
            width: 32,
            height: 32,
            layout: Layout::Rgba,
            data,
        };
        let file = encode(&raster, 80).expect("encoded");
        assert!(file.windows(4).any(|w| w == b"auxC"), "an alpha item");
    }
}
