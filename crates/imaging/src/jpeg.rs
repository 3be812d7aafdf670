//! JPEG specifics: the stream's structure, and shrink-on-load.
//!
//! A JPEG stores 8×8 blocks of DCT coefficients. A decoder can run a smaller inverse DCT
//! (4×4, 2×2 or just the DC term) and get the image at 1/2, 1/4 or 1/8 of its size for
//! a fraction of the work, with the quality of a box-filtered downscale. The pipeline
//! asks for the smallest such [`Scale`] at which every output still has a source pixel
//! per output pixel, and resamples from there with Lanczos3 as usual.
//!
//! Who decodes (pure-Rust build):
//! - at full scale, zune-jpeg (through the `image` crate), the fastest Rust decoder;
//! - at a reduced scale, `jpeg-decoder` (the only Rust decoder with DCT scaling), where it
//!   beats zune-jpeg's full decode followed by a larger resize. Its Huffman decoding is
//!   slower than zune-jpeg's, which `prefer_scaled_decoder` weighs; the numbers are in
//!   the crate's benchmarks.
//! - For progressive files, scans that only carry coefficients the reduced inverse DCT
//!   never reads (e.g. every AC scan at 1/8) are cut out of the stream before
//!   `jpeg-decoder` sees it ([`prune_scans`]): the output is identical and the entropy
//!   decoding of those scans, the bulk of the file, is never done.
//!
//! With the `turbojpeg` feature, libjpeg-turbo decodes every JPEG at its scale instead
//! (`turbo`), except progressive files at 1/4 and 1/8, which `jpeg-decoder` decodes
//! faster once pruned (`prefer_jpeg_decoder_to_turbo`).

use std::borrow::Cow;

use crate::limits::Limits;
use crate::preset::Geometry;
use crate::raster::{Layout, Raster};

/// Most scans a progressive JPEG may have. Encoders write about 10 (libjpeg) to 20
/// (mozjpeg's optimised scripts); thousands of tiny scans are the known way to make a
/// small file cost minutes of decoding.
pub(crate) const MAX_SCANS: usize = 256;

/// Source pixels per output pixel (in each dimension) that the scaled decode must keep.
///
/// 1: the smallest scale that still has a pixel per output pixel. Against the source
/// decoded whole and resized straight to 800 px (`examples/shrink_report.rs`), the
/// corpus's `medium` outputs keep a PSNR of 40 to 56 dB, except a very detailed landscape
/// decoded at 1/4 to 816 px for 800 (37.7 dB: the reduced inverse DCT aliases a little and
/// the final resize barely filters); see [`crate::SHRINK_ON_LOAD_MIN_PSNR_DB`].
///
/// Measured alternative: 1.1 lifts every photo to 45 dB or more, but decodes the
/// near-misses at twice the scale: that landscape (progressive) then takes 111 ms instead
/// of 38, and the 16 corpus JPEGs 759 ms instead of 676 (+12 %). sharp keeps more margin
/// than either (its shrink-on-load costs it at most 44.7 dB on this corpus, and it skips
/// shrink-on-load for that landscape), and pays for it in decode time.
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

    /// libjpeg-turbo's scales between 1/2 and full size, which only the `turbojpeg`
    /// build decodes (see [`Scale::for_frame`]).
    #[cfg(feature = "turbojpeg")]
    const BETWEEN_HALF_AND_FULL: [Scale; 3] = [Scale(5), Scale(6), Scale(7)];

    /// 1, 2, 4 or 8 eighths (and 5, 6 or 7 in the `turbojpeg` build).
    pub(crate) fn from_eighths(eighths: u8) -> Option<Scale> {
        #[cfg(feature = "turbojpeg")]
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
    /// `turbojpeg` build, a baseline file that needs more than half its size is decoded
    /// at the smallest of libjpeg-turbo's 5/8, 6/8 and 7/8 that covers the outputs,
    /// rather than whole. Those IDCTs are plain C, but they decode a 1920 × 1280 photo in
    /// about the time of the whole (9.4 against 9.1 ms at 5/8) and hand back up to
    /// 2.5 times fewer pixels to resize: at 5/8 the corpus's quarter-turned photo comes
    /// out at its 800-px output's very size, with no resize left. Between 1/4 and 1/2
    /// (3/8) the decode is slower than at 1/2 by more than the resize saves, and
    /// progressive files keep the scales their scan pruning is made for.
    pub(crate) fn for_frame(frame: &Frame, width: u32, height: u32, outputs: &[Geometry]) -> Scale {
        let scale = Scale::smallest_for(width, height, outputs);
        #[cfg(feature = "turbojpeg")]
        if scale == Scale::FULL && !frame.progressive && frame.scalable {
            if let Some(finer) = Scale::BETWEEN_HALF_AND_FULL
                .into_iter()
                .find(|s| s.covers(width, height, outputs))
            {
                return finer;
            }
        }
        #[cfg(not(feature = "turbojpeg"))]
        let _ = frame;
        scale
    }
}

/// What the frame header and the segments before it say about a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// SOF2: progressive, Huffman-coded.
    pub(crate) progressive: bool,
    /// SOF0, SOF1 or SOF2 with 8-bit samples: what a scaled DCT decode can handle.
    pub(crate) scalable: bool,
    /// Number of components: 1 (grey), 3 (YCbCr or RGB) or 4 (CMYK or YCCK).
    pub(crate) components: u8,
    /// The transform byte of an Adobe APP14 segment: 0 (none: RGB or CMYK), 1 (YCbCr),
    /// 2 (YCCK).
    pub(crate) adobe_transform: Option<u8>,
    /// The components' selectors, in the frame header's order (the first is luma in a
    /// YCbCr or grey image).
    pub(crate) ids: [u8; 4],
    /// Each component's DC quantiser step, from the tables defined before the frame
    /// header (0: unknown).
    pub(crate) dc_steps: [u16; 4],
}

impl Frame {
    /// Reads the segments from SOI up to the frame header, or `None` when the stream ends
    /// before one or is not a JPEG.
    pub(crate) fn parse(data: &[u8]) -> Option<Frame> {
        if data.get(..2)? != [0xff, 0xd8] {
            return None;
        }
        let mut adobe_transform = None;
        // DC step of each of the four table slots.
        let mut table_dc = [0u16; 4];
        let mut at = 2;
        loop {
            let (marker, body, next) = segment(data, at)?;
            match marker {
                0xc0..=0xcf if !matches!(marker, 0xc4 | 0xc8 | 0xcc) => {
                    let precision = *body.first()?;
                    let components = *body.get(5)?;
                    let (mut ids, mut dc_steps) = ([0u8; 4], [0u16; 4]);
                    // A header cut short leaves them unknown: the decoder will judge it.
                    for i in 0..usize::from(components).min(4) {
                        let Some(spec) = body.get(6 + 3 * i..9 + 3 * i) else {
                            break;
                        };
                        ids[i] = spec[0];
                        dc_steps[i] = table_dc.get(usize::from(spec[2])).copied().unwrap_or(0);
                    }
                    return Some(Frame {
                        progressive: marker == 0xc2,
                        scalable: matches!(marker, 0xc0..=0xc2) && precision == 8,
                        components,
                        adobe_transform,
                        ids,
                        dc_steps,
                    });
                }
                0xdb => {
                    // Tables of 64 steps, 8 or 16 bits each (`Pq`), in zigzag order: the
                    // first is DC's.
                    let mut t = body;
                    while let Some((&pq_tq, rest)) = t.split_first() {
                        let wide = pq_tq >> 4 != 0;
                        let len = if wide { 128 } else { 64 };
                        // A table cut short is for the decoder to refuse.
                        let Some(steps) = rest.get(..len) else { break };
                        let dc = if wide {
                            u16::from_be_bytes([steps[0], steps[1]])
                        } else {
                            u16::from(steps[0])
                        };
                        if let Some(slot) = table_dc.get_mut(usize::from(pq_tq & 0x0f)) {
                            *slot = dc;
                        }
                        t = &rest[len..];
                    }
                }
                0xee if body.starts_with(b"Adobe") => adobe_transform = body.get(11).copied(),
                0xda | 0xd9 => return None,
                _ => {}
            }
            at = next;
        }
    }
}

/// The segment whose marker starts at `at`: its marker byte, its body (after the length)
/// and the offset just past it. Markers without a body (RSTn, SOI, EOI, TEM) have an
/// empty one.
fn segment(data: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    if *data.get(at)? != 0xff {
        return None;
    }
    let mut at = at;
    while data.get(at) == Some(&0xff) {
        at += 1;
    }
    let marker = *data.get(at)?;
    at += 1;
    if matches!(marker, 0x01 | 0xd0..=0xd9) {
        return Some((marker, &[], at));
    }
    let len = usize::from(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]));
    let body = data.get(at + 2..at + len.max(2))?;
    Some((marker, body, at + len.max(2)))
}

/// Offset of the byte after a scan's entropy-coded data that starts at `at`: the first
/// `FF` that is neither a stuffed `FF 00` nor a restart marker.
fn entropy_end(data: &[u8], mut at: usize) -> usize {
    loop {
        let Some(ff) = data[at..].iter().position(|&b| b == 0xff) else {
            return data.len();
        };
        at += ff;
        match data.get(at + 1) {
            Some(0x00 | 0xd0..=0xd7) => at += 2,
            _ => return at,
        }
    }
}

/// One scan of a JPEG: where its SOS segment starts and its entropy-coded data ends, and
/// the band of coefficients (in zigzag order) it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    start: usize,
    end: usize,
    /// Component selectors (as the frame header numbers them), `components` of them.
    selectors: [u8; 4],
    components: u8,
    spectral_start: u8,
    spectral_end: u8,
    /// Successive approximation, high bit: non-zero for a refinement scan.
    approximation_high: u8,
    /// Successive approximation, low bit: 0 for the scan that completes its band.
    approximation_low: u8,
}

impl Scan {
    /// The band as a mask over zigzag positions.
    fn band(&self) -> u64 {
        let (lo, hi) = (
            u32::from(self.spectral_start),
            u32::from(self.spectral_end.min(63)),
        );
        if lo > hi {
            // Malformed: claim every coefficient, so that it is kept and the decoder
            // complains.
            return u64::MAX;
        }
        (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
    }

    fn selectors(&self) -> &[u8] {
        &self.selectors[..usize::from(self.components)]
    }
}

/// Why the scans of a stream could not be listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScanError {
    /// More scans than [`MAX_SCANS`].
    #[error("more than {MAX_SCANS} scans")]
    TooMany,
    /// A segment is cut off or malformed; the decoder will say more.
    #[error("malformed segment")]
    Malformed,
}

/// Lists the scans of a stream, refusing more than [`MAX_SCANS`].
pub(crate) fn scans(data: &[u8]) -> Result<Vec<Scan>, ScanError> {
    let mut found = Vec::new();
    let mut at = 2;
    while at < data.len() {
        let (marker, body, next) = segment(data, at).ok_or(ScanError::Malformed)?;
        match marker {
            0xd9 => break,
            0xda => {
                if found.len() == MAX_SCANS {
                    return Err(ScanError::TooMany);
                }
                let count = *body.first().ok_or(ScanError::Malformed)?;
                let n = usize::from(count);
                if !(1..=4).contains(&n) {
                    return Err(ScanError::Malformed);
                }
                let tail = body.get(1 + 2 * n..4 + 2 * n);
                let &[spectral_start, spectral_end, approximation] =
                    tail.ok_or(ScanError::Malformed)?
                else {
                    unreachable!("a three-byte slice")
                };
                let mut selectors = [0; 4];
                for (i, selector) in selectors[..n].iter_mut().enumerate() {
                    *selector = body[1 + 2 * i];
                }
                let end = entropy_end(data, next);
                found.push(Scan {
                    start: at,
                    end,
                    selectors,
                    components: count,
                    spectral_start,
                    spectral_end,
                    approximation_high: approximation >> 4,
                    approximation_low: approximation & 0x0f,
                });
                at = end;
            }
            _ => at = next,
        }
    }
    Ok(found)
}

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
///   Measured on the corpus's seven progressive photos (`examples/shrink_report.rs`,
///   libjpeg-turbo): their decodes take 21 % less time (316 to 250 ms), for 0.4 to 4.6
///   dB of PSNR (the least, 37.3 dB, is the landscape that shrink-on-load already
///   brings to 37.7; the others keep 40.9 dB or more); see
///   [`crate::SHRINK_ON_LOAD_MIN_PSNR_DB`].
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

#[cfg(not(feature = "turbojpeg"))]
/// Whether `jpeg-decoder` at `scale` (plus the smaller resize that follows) beats
/// zune-jpeg's full decode (plus the larger resize), from the measurements in the
/// crate's benchmarks.
pub(crate) fn prefer_scaled_decoder(frame: &Frame, scale: Scale) -> bool {
    // CMYK: `jpeg-decoder` took 58 ms where zune-jpeg's full decode and the larger
    // resize took 45 (4.5 MP, 3 MB). Everything else gains at 1/4 and 1/8, most of all
    // progressive files (their AC scans pruned): 2 to 3 times faster. At 1/2 the gain is
    // smaller and varies (−20 % to +10 % per photo, a gain over the corpus).
    frame.scalable && frame.components != 4 && scale < Scale::FULL
}

/// Whether, in the `turbojpeg` build, `jpeg-decoder` decodes this JPEG rather than
/// libjpeg-turbo: progressive files at 1/4 and 1/8, whose pruned streams it decodes in
/// 40 % less time (the corpus's five such photos: 142 ms against 226, best of 5 each,
/// side by side), where libjpeg-turbo walks its whole coefficient buffer once a scan and
/// smooths every block whose coefficients are incomplete. At 1/2 and for baseline files
/// libjpeg-turbo is the faster (by 5 % and 25 %).
#[cfg(feature = "turbojpeg")]
pub(crate) fn prefer_jpeg_decoder_to_turbo(frame: &Frame, scale: Scale) -> bool {
    frame.progressive && frame.scalable && frame.components != 4 && scale.eighths() <= 2
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
    /// The embedded CMYK profile's transform, for CMYK and YCCK files (`None`: the
    /// naive conversion).
    pub(crate) cmyk: Option<&'a moxcms::Transform8BitExecutor>,
}

/// Decodes a JPEG at its scale with `jpeg-decoder` into RGB or grey.
///
/// CMYK and YCCK go through the embedded profile's transform; without one they are
/// converted as zune-jpeg does (see `decode`): the stored values are taken as Adobe's
/// inverted ones, `R = C'·K'/255`.
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

    #[test]
    fn needed_coefficients_are_the_top_left_corner() {
        assert_eq!(needed_coefficients(Scale(1)), 1);
        // (0,0) (0,1) (1,0) (1,1) are zigzag 0, 1, 2 and 4.
        assert_eq!(needed_coefficients(Scale(2)), 0b10111);
        assert_eq!(needed_coefficients(Scale(4)).count_ones(), 16);
        assert_eq!(needed_coefficients(Scale::FULL), u64::MAX);
    }

    /// SOI, a scan with the given band and some entropy data (with a stuffed byte and a
    /// restart marker), and so on, then EOI.
    /// Each scan is (component, first coefficient, last coefficient, refinement?); a
    /// refinement sends the last bit (`Ah = 1`, `Al = 0`), a first pass all but that bit.
    fn stream(bands: &[(u8, u8, u8, bool)]) -> Vec<u8> {
        let mut s = vec![0xff, 0xd8];
        for &(c, lo, hi, refine) in bands {
            let approximation = if refine { 0x10 } else { 0x01 };
            s.extend_from_slice(&[0xff, 0xda, 0x00, 0x08, 0x01, c, 0x00, lo, hi, approximation]);
            s.extend_from_slice(&[lo, 0xff, 0x00, 0xff, 0xd0, hi]);
        }
        s.extend_from_slice(&[0xff, 0xd9]);
        s
    }

    /// libjpeg-turbo's scales between 1/2 and whole: only in its build, only for
    /// baseline files, only where 1/2 is not enough.
    #[test]
    fn scales_between_half_and_whole_are_for_baseline_files_and_libjpeg_turbo() {
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
            if cfg!(feature = "turbojpeg") {
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
            cfg!(feature = "turbojpeg")
        );
    }

    /// A YCbCr frame whose luma is component 1 and chroma 2 and 3.
    fn frame() -> Frame {
        Frame {
            progressive: true,
            scalable: true,
            components: 3,
            adobe_transform: None,
            ids: [1, 2, 3, 0],
            dc_steps: [16, 16, 16, 0],
        }
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
        let eighth = prune_scans(&all, &frame, &found, Scale(1));
        assert_eq!(
            (&*eighth.data, eighth.exact, eighth.dc_truncated),
            (&stream(&[dc])[..], false, 0b1)
        );
        // At 1/4 the luma 6..63 band goes too, and the last bits of every band.
        let quarter = prune_scans(&all, &frame, &found, Scale(2));
        assert_eq!(
            (&*quarter.data, quarter.exact, quarter.dc_truncated),
            (&stream(&[dc, luma_low, chroma])[..], false, 0b1)
        );
        // At 1/2 every band is needed, but not the last bits.
        let half = prune_scans(&all, &frame, &found, Scale(4));
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
        let eighth = prune_scans(&first_passes, &frame, &found, Scale(1));
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

    #[test]
    fn too_many_scans_are_refused() {
        let many = stream(&vec![(1, 0, 0, false); MAX_SCANS + 1]);
        assert_eq!(scans(&many), Err(ScanError::TooMany));
        let enough = stream(&vec![(1, 0, 0, false); MAX_SCANS]);
        assert_eq!(scans(&enough).map(|s| s.len()), Ok(MAX_SCANS));
    }

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
        let (pruned, whole) = (decode(&found, Scale(1)), decode(&[], Scale(1)));
        assert_eq!((pruned.width, pruned.height), (544, 306));
        assert!(
            psnr(&pruned, &whole) > 45.0,
            "1/8 at {:.1} dB",
            psnr(&pruned, &whole)
        );
        assert!(prune_scans(&data, &frame, &found, Scale(1)).data.len() < data.len() / 4);
        // 1/4: luma AC loses its last two refinement bits, chroma AC and DC the last.
        let (pruned, whole) = (decode(&found, Scale(2)), decode(&[], Scale(2)));
        assert!(
            psnr(&pruned, &whole) > 40.0,
            "1/4 at {:.1} dB",
            psnr(&pruned, &whole)
        );
    }

    #[test]
    fn frame_header_and_adobe_segment_are_read() {
        // SOI, APP14 "Adobe" with transform 2, SOF2 of 4 components.
        let mut s = vec![0xff, 0xd8, 0xff, 0xee, 0x00, 0x0e];
        s.extend_from_slice(b"Adobe\x00\x64\x00\x00\x00\x00\x02");
        s.extend_from_slice(&[0xff, 0xc2, 0x00, 0x0b, 0x08, 0x00, 0x10, 0x00, 0x10, 0x04]);
        s.extend_from_slice(&[0; 12]);
        let frame = Frame::parse(&s).expect("frame");
        assert_eq!(
            frame,
            Frame {
                progressive: true,
                scalable: true,
                components: 4,
                adobe_transform: Some(2),
                ids: [0; 4],
                dc_steps: [0; 4],
            }
        );
        assert_eq!(Frame::parse(b"\xff\xd8\xff\xd9"), None);
        assert_eq!(Frame::parse(b"GIF89a"), None);
    }
}
