//! Scan pruning: the scans of a progressive stream that a decode at a reduced scale can
//! do without, cut out before the decoder sees them, and the DC bias that cutting last
//! bits leaves, given back after decoding.

use std::borrow::Cow;

use super::{Frame, Scale, Scan};
use crate::raster::{Layout, Raster};

/// Zigzag positions of the coefficients an inverse DCT of `scale` eighths reads: the
/// top-left `scale` × `scale` corner of the block.
fn needed_coefficients(scale: Scale) -> u64 {
    const ZIGZAG: [[u8; 8]; 8] = [
        [0, 1, 5, 6, 14, 15, 27, 28],
        [2, 4, 7, 13, 16, 26, 29, 42],
        [3, 8, 12, 17, 25, 30, 41, 43],
        [9, 11, 18, 24, 31, 40, 44, 53],
        [10, 19, 23, 32, 39, 45, 52, 54],
        [20, 22, 33, 38, 46, 51, 55, 60],
        [21, 34, 37, 47, 50, 56, 59, 61],
        [35, 36, 48, 49, 57, 58, 62, 63],
    ];
    let n = usize::from(scale.eighths());
    ZIGZAG[..n]
        .iter()
        .flat_map(|row| &row[..n])
        .fold(0, |mask, &z| mask | 1 << z)
}

/// A progressive stream with the scans a decode at some scale can do without cut out.
#[derive(Debug)]
pub(crate) struct Pruned<'a> {
    /// The stream to decode.
    pub(crate) data: Cow<'a, [u8]>,
    /// Whether decoding it gives exactly the pixels of the whole stream at that scale;
    /// false when refinement scans of needed coefficients went too (see
    /// [`prune_scans`]).
    pub(crate) exact: bool,
    /// Components (bit i: the frame's i-th) whose DC lost its last bit, which makes
    /// their samples darker by half a DC step on average ([`correct_dc`] corrects it).
    pub(crate) dc_truncated: u8,
}

/// Cuts out of a progressive stream the scans a decode at `scale` can do without.
///
/// - A scan goes when its band holds no coefficient the reduced inverse DCT reads (at
///   1/8, every AC scan). The pixels are unchanged.
/// - At a reduced scale, a scan that only sends the last bit of its coefficients (a
///   refinement with `Ah = 1`, `Al = 0`) goes too: those are a third to a half of a
///   progressive file's bytes, and every scan kept costs a pass over the whole
///   coefficient buffer, while a missing last bit moves a coefficient by one quantiser
///   step at most, which the reduced IDCT and the downscale after it average out. DC
///   truncated so is darker by half a step on average; [`correct_dc`] adds it back.
///   The quality this costs is held to [`crate::SHRINK_ON_LOAD_MIN_PSNR_DB`].
/// - A refinement scan cannot be parsed without every earlier scan of its component and
///   band (which coefficients are already non-zero decides what its bits mean), so one
///   that follows a cut scan of its band goes too; its coefficients keep the precision
///   of their first pass. With libjpeg's scan script that happens at 1/4 (the luma
///   refinements of AC 1–63 follow the cut luma AC 6–63 scan).
///
/// The result is [`exact`](Pruned::exact) when only unneeded scans went.
pub(crate) fn prune_scans<'a>(
    data: &'a [u8],
    frame: &Frame,
    scans: &[Scan],
    scale: Scale,
) -> Pruned<'a> {
    let needed = needed_coefficients(scale);
    let reduced = scale != Scale::FULL;
    let index_of = |selector: u8| {
        frame.ids[..usize::from(frame.components).min(4)]
            .iter()
            .position(|&id| id == selector)
    };
    let mut dc_truncated = 0u8;
    // Per component selector, the coefficients some cut scan carried.
    let mut cut_bands: Vec<(u8, u64)> = Vec::new();
    let cut_band = |cut: &[(u8, u64)], selector: u8| {
        cut.iter()
            .find(|(s, _)| *s == selector)
            .map_or(0, |(_, band)| *band)
    };
    let mut exact = true;
    let mut cut: Vec<&Scan> = Vec::new();
    for scan in scans {
        let band = scan.band();
        let last_bit = reduced && scan.approximation_high == 1 && scan.approximation_low == 0;
        let useful = band & needed != 0;
        let parseable = scan.approximation_high == 0
            || scan
                .selectors()
                .iter()
                .all(|&c| cut_band(&cut_bands, c) & band == 0);
        if useful && parseable && !last_bit {
            continue;
        }
        exact &= !useful;
        if useful && scan.spectral_start == 0 {
            for i in scan.selectors().iter().filter_map(|&c| index_of(c)) {
                dc_truncated |= 1 << i;
            }
        }
        cut.push(scan);
        for &selector in scan.selectors() {
            match cut_bands.iter_mut().find(|(s, _)| *s == selector) {
                Some((_, b)) => *b |= band,
                None => cut_bands.push((selector, band)),
            }
        }
    }
    if cut.is_empty() {
        return Pruned {
            data: Cow::Borrowed(data),
            exact,
            dc_truncated,
        };
    }
    let mut pruned = Vec::with_capacity(data.len());
    let mut at = 0;
    for scan in cut {
        pruned.extend_from_slice(&data[at..scan.start]);
        at = scan.end;
    }
    pruned.extend_from_slice(&data[at..]);
    let pruned = Pruned {
        data: Cow::Owned(pruned),
        exact,
        dc_truncated,
    };
    tracing::debug!(
        bytes = data.len(),
        kept = pruned.data.len(),
        exact = pruned.exact,
        "pruned progressive scans"
    );
    pruned
}

/// Adds back to a decoded raster the average half DC step that [`prune_scans`] took from
/// each component in `truncated` (bit i: the frame's i-th component).
///
/// The last bit of a DC value is cut by an arithmetic shift, so the decoder sees
/// `2k` for `2k` or `2k + 1` steps: on average half a step low, an eighth of which
/// reaches every sample (the inverse DCT's DC gain), at every scale. For grey that is
/// the offset; for YCbCr it goes through libjpeg's (JFIF's) conversion to RGB. Other
/// colour spaces (RGB-coded, CMYK) are left as they are. Offsets round to whole levels,
/// so the usual high-quality tables (DC steps under 8) need none.
pub(crate) fn correct_dc(raster: &mut Raster, frame: &Frame, truncated: u8) {
    if truncated == 0 {
        return;
    }
    let shift = |i: usize| {
        if truncated & (1 << i) != 0 {
            f64::from(frame.dc_steps[i]) / 16.0
        } else {
            0.0
        }
    };
    let offsets: Vec<f64> = match (raster.layout, frame.components) {
        (Layout::Luma, 1) => vec![shift(0)],
        (Layout::Rgb, 3) if frame.adobe_transform != Some(0) => {
            let (y, cb, cr) = (shift(0), shift(1), shift(2));
            vec![
                y + 1.402 * cr,
                y - 0.344_136 * cb - 0.714_136 * cr,
                y + 1.772 * cb,
            ]
        }
        _ => return,
    };
    let offsets: Vec<i16> = offsets.iter().map(|o| o.round() as i16).collect();
    if offsets.iter().any(|&o| o != 0) {
        raster.add_offsets(&offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::scans;
    use crate::jpeg::test_streams::{eighths, frame, stream};

    #[test]
    fn needed_coefficients_are_the_top_left_corner() {
        assert_eq!(needed_coefficients(eighths(1)), 1);
        // (0,0) (0,1) (1,0) (1,1) are zigzag 0, 1, 2 and 4.
        assert_eq!(needed_coefficients(eighths(2)), 0b10111);
        assert_eq!(needed_coefficients(eighths(4)).count_ones(), 16);
        assert_eq!(needed_coefficients(Scale::FULL), u64::MAX);
    }

    #[test]
    fn pruning_drops_unused_bands_and_last_bits_at_reduced_scales() {
        // libjpeg's script, shortened: luma 1, chroma 2.
        let dc = (1, 0, 0, false);
        let luma_low = (1, 1, 5, false);
        let chroma = (2, 1, 63, false);
        let luma_high = (1, 6, 63, false);
        let luma_refine = (1, 1, 63, true);
        let dc_refine = (1, 0, 0, true);
        let chroma_refine = (2, 1, 63, true);
        let all = stream(&[
            dc,
            luma_low,
            chroma,
            luma_high,
            luma_refine,
            dc_refine,
            chroma_refine,
        ]);
        let found = scans(&all).expect("scans");
        assert_eq!(found.len(), 7);
        assert_eq!(
            found[0].end, found[1].start,
            "a scan ends at the next marker"
        );
        let frame = frame();

        // At 1/8 only the DC first pass stays; its last bit goes (component 0's DC).
        let eighth = prune_scans(&all, &frame, &found, eighths(1));
        assert_eq!(
            (&*eighth.data, eighth.exact, eighth.dc_truncated),
            (&stream(&[dc])[..], false, 0b1)
        );
        // At 1/4 the luma 6..63 band goes too, and the last bits of every band.
        let quarter = prune_scans(&all, &frame, &found, eighths(2));
        assert_eq!(
            (&*quarter.data, quarter.exact, quarter.dc_truncated),
            (&stream(&[dc, luma_low, chroma])[..], false, 0b1)
        );
        // At 1/2 every band is needed, but not the last bits.
        let half = prune_scans(&all, &frame, &found, eighths(4));
        assert_eq!(
            (&*half.data, half.exact),
            (&stream(&[dc, luma_low, chroma, luma_high])[..], false)
        );
        // At full scale every scan is kept and nothing is copied.
        let whole = prune_scans(&all, &frame, &found, Scale::FULL);
        assert!(matches!(whole.data, Cow::Borrowed(_)) && whole.exact && whole.dc_truncated == 0);
        // Unused bands alone leave the pixels exact.
        let first_passes = stream(&[dc, luma_low, chroma, luma_high]);
        let found = scans(&first_passes).expect("scans");
        let eighth = prune_scans(&first_passes, &frame, &found, eighths(1));
        assert_eq!((&*eighth.data, eighth.exact), (&stream(&[dc])[..], true));
    }

    #[test]
    fn truncated_dc_is_given_back_through_the_colour_conversion() {
        let frame = frame();
        let raster = |layout: Layout| Raster {
            width: 2,
            height: 1,
            layout,
            data: vec![100; 2 * layout.channels()],
        };
        // Half a step of 16, an eighth of it per sample: +1 to Y, Cb and Cr alike.
        let mut rgb = raster(Layout::Rgb);
        correct_dc(&mut rgb, &frame, 0b111);
        // R = Y + 1.402 Cr, G = Y − 0.344 Cb − 0.714 Cr, B = Y + 1.772 Cb.
        assert_eq!(rgb.data, [102, 100, 103, 102, 100, 103]);
        // Luma alone.
        let mut rgb = raster(Layout::Rgb);
        correct_dc(&mut rgb, &frame, 0b001);
        assert_eq!(rgb.data, [101; 6]);
        // Nothing truncated, or an RGB-coded frame: untouched.
        let mut rgb = raster(Layout::Rgb);
        correct_dc(&mut rgb, &frame, 0);
        let adobe_rgb = Frame {
            adobe_transform: Some(0),
            ..frame
        };
        correct_dc(&mut rgb, &adobe_rgb, 0b111);
        assert_eq!(rgb.data, [100; 6]);
        // Grey, saturating at white.
        let grey_frame = Frame {
            components: 1,
            dc_steps: [40, 0, 0, 0],
            ..frame
        };
        let mut grey = Raster {
            data: vec![250, 254],
            ..raster(Layout::Luma)
        };
        correct_dc(&mut grey, &grey_frame, 0b1);
        assert_eq!(grey.data, [253, 255]);
    }
}
