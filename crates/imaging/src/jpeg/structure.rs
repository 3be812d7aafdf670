//! What a stream's segments say: the frame header (and the tables and Adobe segment
//! before it), the scans, and whether the stream ends. Read with [`Markers`], never by
//! hand.

use super::markers::{self, MarkerError, Markers, Segment, APP14, DQT, EOI, SOF2, SOS};

/// Most scans a progressive JPEG may have. Encoders write about 10 (libjpeg) to 20
/// (mozjpeg's optimised scripts); thousands of tiny scans are the known way to make a
/// small file cost minutes of decoding.
pub(crate) const MAX_SCANS: usize = 256;

/// How a frame's samples are coded, from its SOF marker, sample precision and number of
/// components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// SOF0, SOF1: sequential DCT, Huffman-coded, 8-bit.
    Sequential,
    /// SOF2: progressive DCT, Huffman-coded, 8-bit.
    Progressive,
    /// SOF3: lossless (predictive), Huffman-coded: `jpeg-decoder` decodes it whole.
    Lossless,
    /// SOF9, SOF10: sequential or progressive DCT, arithmetic-coded, 8-bit: libjpeg's.
    Arithmetic,
    /// What no decoder here reads, in words for the client.
    Unsupported(&'static str),
}

impl Coding {
    /// The coding of a frame header `marker` with `precision`-bit samples.
    pub(crate) fn of(marker: u8, precision: u8, components: u8) -> Coding {
        match marker {
            0xc0..=0xc2 | 0xc9 | 0xca if precision != 8 => {
                Coding::Unsupported("12-bit (extended precision DCT)")
            }
            0xc0 | 0xc1 => Coding::Sequential,
            0xc2 => Coding::Progressive,
            // `jpeg-decoder` gives 16-bit samples for grey only.
            0xc3 if precision > 8 && components != 1 => {
                Coding::Unsupported("lossless colour over 8 bits per sample")
            }
            0xc3 if !(2..=16).contains(&precision) => Coding::Unsupported("lossless"),
            0xc3 if components != 1 && components != 3 => {
                Coding::Unsupported("lossless with other than 1 or 3 components")
            }
            0xc3 => Coding::Lossless,
            0xc9 | 0xca => Coding::Arithmetic,
            0xcb => Coding::Unsupported("lossless arithmetic-coded"),
            0xc5..=0xc7 | 0xcd..=0xcf => Coding::Unsupported("hierarchical (differential)"),
            _ => Coding::Unsupported("unknown frame type"),
        }
    }

    /// `Err` when this build cannot decode it.
    pub(crate) fn check(self) -> Result<(), crate::ImagingError> {
        let (coding, hint) = match self {
            Coding::Unsupported(coding) => (coding, ""),
            #[cfg(not(feature = "libjpeg"))]
            Coding::Arithmetic => (
                "arithmetic-coded",
                " by this build: the default and native-codecs builds read it (libjpeg)",
            ),
            _ => return Ok(()),
        };
        Err(crate::ImagingError::UnsupportedCoding { coding, hint })
    }
}

/// What the frame header and the segments before it say about a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// How the samples are coded.
    pub(crate) coding: Coding,
    /// Stored width and height.
    pub(crate) width: u16,
    pub(crate) height: u16,
    /// Bits per sample.
    pub(crate) precision: u8,
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
        let mut adobe_transform = None;
        // DC step of each of the four table slots.
        let mut table_dc = [0u16; 4];
        for item in Markers::new(data) {
            let (marker, body) = match item {
                Ok(segment) => (segment.marker, segment.body),
                // Read as empty, as libjpeg reads it: the decoder judges the stream.
                Err(MarkerError::BadLength { marker, .. }) => (marker, &[][..]),
                Err(_) => return None,
            };
            match marker {
                marker if markers::is_frame_header(marker) => {
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
                    let coding = Coding::of(marker, precision, components);
                    return Some(Frame {
                        coding,
                        height: u16::from_be_bytes([*body.get(1)?, *body.get(2)?]),
                        width: u16::from_be_bytes([*body.get(3)?, *body.get(4)?]),
                        precision,
                        // Huffman-coded only: scan pruning reads Huffman scans.
                        progressive: marker == SOF2,
                        // libjpeg's scaled IDCTs serve arithmetic-coded DCT files too.
                        scalable: matches!(
                            coding,
                            Coding::Sequential | Coding::Progressive | Coding::Arithmetic
                        ),
                        components,
                        adobe_transform,
                        ids,
                        dc_steps,
                    });
                }
                DQT => {
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
                APP14 if body.starts_with(b"Adobe") => adobe_transform = body.get(11).copied(),
                SOS | EOI => return None,
                _ => {}
            }
        }
        None
    }
}

/// One scan of a JPEG: where its SOS segment starts and its entropy-coded data ends, and
/// the band of coefficients (in zigzag order) it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(super) start: usize,
    pub(super) end: usize,
    /// Component selectors (as the frame header numbers them), `components` of them.
    selectors: [u8; 4],
    components: u8,
    pub(super) spectral_start: u8,
    spectral_end: u8,
    /// Successive approximation, high bit: non-zero for a refinement scan.
    pub(super) approximation_high: u8,
    /// Successive approximation, low bit: 0 for the scan that completes its band.
    pub(super) approximation_low: u8,
}

impl Scan {
    /// The band as a mask over zigzag positions.
    pub(super) fn band(&self) -> u64 {
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

    pub(super) fn selectors(&self) -> &[u8] {
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
    let mut walk = Markers::new(data);
    while let Some(item) = walk.next() {
        let segment = match item {
            // Skipped, as libjpeg skips it; a scan header cannot be.
            Err(MarkerError::BadLength { marker, .. }) if marker != SOS => continue,
            Err(_) => return Err(ScanError::Malformed),
            Ok(segment) => segment,
        };
        match segment.marker {
            EOI => break,
            SOS => {
                if found.len() == MAX_SCANS {
                    return Err(ScanError::TooMany);
                }
                let body = segment.body;
                let count = *body.first().ok_or(ScanError::Malformed)?;
                let n = usize::from(count);
                if !(1..=4).contains(&n) {
                    return Err(ScanError::Malformed);
                }
                let Some(&[spectral_start, spectral_end, approximation]) =
                    body.get(1 + 2 * n..4 + 2 * n)
                else {
                    return Err(ScanError::Malformed);
                };
                let mut selectors = [0; 4];
                for (i, selector) in selectors[..n].iter_mut().enumerate() {
                    *selector = body[1 + 2 * i];
                }
                found.push(Scan {
                    start: segment.start,
                    end: walk.skip_scan_data(),
                    selectors,
                    components: count,
                    spectral_start,
                    spectral_end,
                    approximation_high: approximation >> 4,
                    approximation_low: approximation & 0x0f,
                });
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Whether a JPEG has an end-of-image marker after its first scan.
///
/// zune-jpeg (as the `image` crate configures it) decodes a cut-off file without complaint
/// and fills the missing rows with grey. Inside entropy-coded data every 0xFF byte is
/// followed by 0x00 or a restart marker, so `FF D9` after the first start-of-scan can only
/// be the real end of image. Segments before the scan are skipped by their lengths, so an
/// embedded EXIF thumbnail's own `FF D9` does not count.
pub(crate) fn has_end(data: &[u8]) -> bool {
    let Some(scan) = first_scan(data) else {
        // No scan at all: let the decoder report what is wrong.
        return true;
    };
    // From the end, where the marker is: a byte-pair scan from the front read a whole
    // photo for it (1 % of a worker's CPU).
    memchr::memmem::rfind(&data[scan..], &[0xff, EOI]).is_some()
}

/// Offset of the first SOS segment, its header whole or not (the end is looked for
/// after it either way).
fn first_scan(data: &[u8]) -> Option<usize> {
    for item in Markers::new(data) {
        match item {
            Ok(Segment {
                marker: SOS, start, ..
            })
            | Err(
                MarkerError::Truncated {
                    marker: Some(SOS),
                    start,
                    ..
                }
                | MarkerError::BadLength { marker: SOS, start },
            ) => return Some(start),
            Ok(Segment { marker: EOI, .. }) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::test_streams::stream;

    #[test]
    fn too_many_scans_are_refused() {
        let many = stream(&vec![(1, 0, 0, false); MAX_SCANS + 1]);
        assert_eq!(scans(&many), Err(ScanError::TooMany));
        let enough = stream(&vec![(1, 0, 0, false); MAX_SCANS]);
        assert_eq!(scans(&enough).map(|s| s.len()), Ok(MAX_SCANS));
    }

    #[test]
    fn a_scan_ends_where_the_next_marker_starts() {
        let data = stream(&[(1, 0, 0, false), (2, 1, 5, false)]);
        let found = scans(&data).expect("scans");
        assert_eq!((found[0].start, found[0].end), (2, 18));
        assert_eq!((found[1].start, found[1].end), (18, 34));
        assert_eq!(&data[found[1].end..], b"\xff\xd9");
        // Cut in its data, the last scan runs to the end of the bytes; cut just after an
        // `FF`, it may have been a marker's: malformed.
        assert_eq!(scans(&data[..29]).map(|s| s[1].end), Ok(29));
        assert_eq!(scans(&data[..30]), Err(ScanError::Malformed));
        // A scan header cut short is malformed.
        assert_eq!(scans(&data[..22]), Err(ScanError::Malformed));
    }

    #[test]
    fn every_frame_type_has_a_coding_and_the_unreadable_ones_are_named() {
        use Coding::*;
        assert_eq!(Coding::of(0xc0, 8, 3), Sequential);
        assert_eq!(Coding::of(0xc1, 8, 3), Sequential);
        assert_eq!(Coding::of(0xc2, 8, 1), Progressive);
        assert_eq!(Coding::of(0xc3, 8, 3), Lossless);
        assert_eq!(Coding::of(0xc3, 16, 1), Lossless);
        assert_eq!(Coding::of(0xc9, 8, 3), Arithmetic);
        assert_eq!(Coding::of(0xca, 8, 3), Arithmetic);
        for (marker, precision, components, words) in [
            (0xc1, 12, 3, "12-bit (extended precision DCT)"),
            (0xca, 12, 3, "12-bit (extended precision DCT)"),
            (0xc3, 12, 3, "lossless colour over 8 bits per sample"),
            (0xcb, 8, 3, "lossless arithmetic-coded"),
            (0xc5, 8, 3, "hierarchical (differential)"),
            (0xcf, 8, 3, "hierarchical (differential)"),
        ] {
            let coding = Coding::of(marker, precision, components);
            assert_eq!(coding, Unsupported(words), "SOF{:x}", marker & 0x0f);
            let err = coding.check().expect_err("refused");
            assert!(err.to_string().starts_with(words), "{err}");
            assert!(err.is_unsupported() && err.is_input_error());
        }
        // Arithmetic coding is libjpeg's: the pure-Rust build refuses it, saying which
        // builds read it.
        let arithmetic = Arithmetic.check();
        assert_eq!(arithmetic.is_ok(), cfg!(feature = "libjpeg"));
        if let Err(e) = arithmetic {
            assert!(e.to_string().contains("default and native-codecs"), "{e}");
        }
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
                coding: Coding::Progressive,
                width: 16,
                height: 16,
                precision: 8,
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

    #[test]
    fn end_marker_must_follow_the_scan() {
        // SOI, APP1 containing a thumbnail's FF D9, SOS, data, no EOI.
        let cut = b"\xff\xd8\xff\xe1\x00\x06\xff\xd9\x00\x00\xff\xda\x00\x02\x12\x34";
        assert!(!has_end(cut));
        let whole = [&cut[..], b"\xff\xd9"].concat();
        assert!(has_end(&whole));
        // Stuffed FF 00 and restart markers are not the end.
        let stuffed = [&cut[..], b"\xff\x00\xff\xd3\x56"].concat();
        assert!(!has_end(&stuffed));
        // No scan at all, or a stream that cannot be walked to one: the decoder judges.
        assert!(has_end(b"\xff\xd8\xff\xe1\x00\x06\xff\xd9"));
        assert!(has_end(b"\xff\xd8\x00"));
        // A scan header cut short still needs the end after it.
        assert!(!has_end(b"\xff\xd8\xff\xda\x00"));
    }
}
