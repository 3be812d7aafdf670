//! The shrink-on-load policy: the DCT [`Scale`] a JPEG is decoded at for its outputs, and
//! which decoder is the faster at that scale.

use super::Frame;
use crate::preset::Geometry;

/// Source pixels per output pixel (in each dimension) that the scaled decode must keep.
///
/// 1: the smallest scale that still has a pixel per output pixel. The quality that
/// leaves is held to [`crate::SHRINK_ON_LOAD_MIN_PSNR_DB`]; more margin would decode the
/// near-misses at twice the scale, for about an eighth more JPEG decode time over the
/// corpus (`crates/bench/PERF.md`).
const DETAIL_MARGIN: f64 = 1.0;

/// Slack for comparing sizes computed in floating point.
const EPSILON: f64 = 1e-6;

/// A DCT scaling factor, in eighths: 1 (1/8), 2 (1/4), 4 (1/2) or 8 (full size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Scale(u8);

impl Scale {
    /// No scaling.
    pub(crate) const FULL: Scale = Scale(8);

    /// Every scale the decoders support, smallest first.
    const ALL: [Scale; 4] = [Scale(1), Scale(2), Scale(4), Scale(8)];

    /// libjpeg-turbo's scales between 1/2 and full size, which only the `libjpeg-simd`
    /// build decodes (see [`Scale::for_frame`]).
    #[cfg(feature = "libjpeg-simd")]
    const BETWEEN_HALF_AND_FULL: [Scale; 3] = [Scale(5), Scale(6), Scale(7)];

    /// 1, 2, 4 or 8 eighths (and 5, 6 or 7 in the `libjpeg-simd` build).
    pub(crate) fn from_eighths(eighths: u8) -> Option<Scale> {
        #[cfg(feature = "libjpeg-simd")]
        if let Some(scale) = Scale::BETWEEN_HALF_AND_FULL
            .into_iter()
            .find(|s| s.0 == eighths)
        {
            return Some(scale);
        }
        Scale::ALL.into_iter().find(|s| s.0 == eighths)
    }

    /// The scale as a number of eighths.
    pub(crate) fn eighths(self) -> u8 {
        self.0
    }

    /// The length of a side of `len` pixels at this scale, rounded up as libjpeg and
    /// `jpeg-decoder` do.
    pub(crate) fn apply(self, len: u32) -> u32 {
        let scaled = (u64::from(len) * u64::from(self.0)).div_ceil(8);
        u32::try_from(scaled).expect("a scale of at most 1 keeps the length")
    }

    /// The smallest scale at which a `width` × `height` source still gives every output
    /// at least one source pixel per output pixel, in both dimensions, over the region
    /// it is resampled from (geometries are in stored orientation, so EXIF rotations and
    /// cover crops are already accounted for).
    pub(crate) fn smallest_for(width: u32, height: u32, outputs: &[Geometry]) -> Scale {
        Scale::ALL
            .into_iter()
            .find(|scale| scale.covers(width, height, outputs))
            .unwrap_or(Scale::FULL)
    }

    /// Whether every output gets at least one source pixel per output pixel at this
    /// scale (see [`Scale::smallest_for`]).
    fn covers(self, width: u32, height: u32, outputs: &[Geometry]) -> bool {
        let sx = f64::from(self.apply(width)) / f64::from(width);
        let sy = f64::from(self.apply(height)) / f64::from(height);
        outputs.iter().all(|g| {
            g.region.width * sx >= DETAIL_MARGIN * f64::from(g.width) - EPSILON
                && g.region.height * sy >= DETAIL_MARGIN * f64::from(g.height) - EPSILON
        })
    }

    /// The scale `frame` is decoded at for `outputs`: [`Scale::smallest_for`]; and in the
    /// `libjpeg-simd` build, a baseline file that needs more than half its size is decoded
    /// at the smallest of libjpeg-turbo's 5/8, 6/8 and 7/8 that covers the outputs,
    /// rather than whole. Those IDCTs are plain C, but they cost about what the whole
    /// decode does and hand back up to 2.5 times fewer pixels to resize: at 5/8 the corpus's quarter-turned photo comes
    /// out at its 800-px output's very size, with no resize left. Between 1/4 and 1/2
    /// (3/8) the decode is slower than at 1/2 by more than the resize saves, and
    /// progressive files keep the scales their scan pruning is made for.
    pub(crate) fn for_frame(frame: &Frame, width: u32, height: u32, outputs: &[Geometry]) -> Scale {
        let scale = Scale::smallest_for(width, height, outputs);
        #[cfg(feature = "libjpeg-simd")]
        if scale == Scale::FULL && !frame.progressive && frame.scalable {
            if let Some(finer) = Scale::BETWEEN_HALF_AND_FULL
                .into_iter()
                .find(|s| s.covers(width, height, outputs))
            {
                return finer;
            }
        }
        #[cfg(not(feature = "libjpeg-simd"))]
        let _ = frame;
        scale
    }
}

/// Whether, in the `libjpeg` build, libjpeg decodes this JPEG rather than zune-jpeg
/// whole: at every reduced scale, and CMYK files at any (the inks an embedded profile
/// needs; faster than `jpeg-decoder` too). At full scale zune-jpeg's SIMD IDCT and colour
/// conversion beat libjpeg's plain C, but not its SIMD code: with `libjpeg-simd`, libjpeg
/// takes every scale (`crates/bench/PERF.md`).
#[cfg(feature = "libjpeg")]
pub(crate) fn prefer_libjpeg(frame: &Frame, scale: Scale) -> bool {
    // Arithmetic-coded files have no other decoder.
    frame.coding == super::Coding::Arithmetic
        || frame.scalable
            && (scale < Scale::FULL || frame.components == 4 || cfg!(feature = "libjpeg-simd"))
}

#[cfg(not(feature = "libjpeg"))]
/// Whether `jpeg-decoder` at `scale` (plus the smaller resize that follows) beats
/// zune-jpeg's full decode (plus the larger resize), from the measurements in the
/// crate's benchmarks.
pub(crate) fn prefer_scaled_decoder(frame: &Frame, scale: Scale) -> bool {
    // CMYK: `jpeg-decoder`'s scaled decode is slower than zune-jpeg's full decode and
    // the larger resize. Everything else gains at 1/4 and 1/8, most of all progressive
    // files (their AC scans pruned), and over the corpus at 1/2 (`crates/bench/PERF.md`).
    frame.scalable && frame.components != 4 && scale < Scale::FULL
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::test_streams::frame;
    use crate::preset::Region;

    fn output(region: Region, width: u32, height: u32) -> Geometry {
        Geometry {
            region,
            width,
            height,
        }
    }

    #[test]
    fn smallest_scale_keeps_every_output_fully_detailed() {
        let whole = Region::whole(4000, 3000);
        // 1600 wide needs 0.4 of the width: 1/2.
        let large = output(whole, 1600, 1200);
        assert_eq!(Scale::smallest_for(4000, 3000, &[large]), Scale(4));
        // 800 wide: 1/4 gives exactly 1000 ≥ 800.
        let medium = output(whole, 800, 600);
        assert_eq!(Scale::smallest_for(4000, 3000, &[medium]), Scale(2));
        // 500 wide: 1/8 gives exactly 500.
        let small = output(whole, 500, 375);
        assert_eq!(Scale::smallest_for(4000, 3000, &[small]), Scale(1));
        // The largest output decides.
        assert_eq!(
            Scale::smallest_for(4000, 3000, &[small, large, medium]),
            Scale(4)
        );
        // A cover crop reads a smaller region: a 400×400 thumbnail of the centre 3000×3000
        // needs 400/3000 of the source, more than 1/8.
        let square = Region {
            left: 500.0,
            top: 0.0,
            width: 3000.0,
            height: 3000.0,
        };
        assert_eq!(
            Scale::smallest_for(4000, 3000, &[output(square, 400, 400)]),
            Scale(2)
        );
        // A tall output: the height decides (a rotated source's box is transposed by
        // `geometry` before it gets here).
        assert_eq!(
            Scale::smallest_for(4000, 3000, &[output(whole, 500, 1600)]),
            Scale::FULL
        );
        // Never upscaled: a full-size output needs the full scale.
        assert_eq!(
            Scale::smallest_for(640, 480, &[output(Region::whole(640, 480), 640, 480)]),
            Scale::FULL
        );
    }

    #[test]
    fn scaled_sides_round_up() {
        assert_eq!(Scale(1).apply(6028), 754);
        assert_eq!(Scale(2).apply(3391), 848);
        assert_eq!(Scale(4).apply(1), 1);
        assert_eq!(Scale::FULL.apply(1234), 1234);
    }

    /// libjpeg's scales between 1/2 and whole: only with its SIMD code, only for
    /// baseline files, only where 1/2 is not enough.
    #[test]
    fn scales_between_half_and_whole_are_for_baseline_files_and_simd_libjpeg() {
        let baseline = Frame {
            progressive: false,
            ..frame()
        };
        let whole = Region::whole(1920, 1280);
        // 1200 × 800 needs 5/8 exactly, 1400 × 933 needs 6/8; 960 × 640 is 1/2 exactly.
        let needs_five = [output(whole, 1200, 800)];
        let needs_six = [output(whole, 1400, 933)];
        let half = [output(whole, 960, 640)];
        let expect = |eighths: u8| {
            if cfg!(feature = "libjpeg-simd") {
                Scale(eighths)
            } else {
                Scale::FULL
            }
        };
        assert_eq!(
            Scale::for_frame(&baseline, 1920, 1280, &needs_five),
            expect(5)
        );
        assert_eq!(
            Scale::for_frame(&baseline, 1920, 1280, &needs_six),
            expect(6)
        );
        assert_eq!(Scale::for_frame(&baseline, 1920, 1280, &half), Scale(4));
        assert_eq!(
            Scale::for_frame(&frame(), 1920, 1280, &needs_five),
            Scale::FULL,
            "progressive files keep the scales their pruning is made for"
        );
        assert_eq!(
            Scale::from_eighths(5).is_some(),
            cfg!(feature = "libjpeg-simd")
        );
    }
}
