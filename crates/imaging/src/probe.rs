//! Header-only parsing: format and dimensions from the first bytes of a file.
//!
//! The HTTP front calls [`probe`] on the first chunk of an upload (up to 64 KiB) to refuse
//! an unsupported or oversized image before accepting it. Nothing is decoded and nothing is
//! allocated in proportion to the declared size: each format's header is read by hand, a
//! few bytes at fixed places (PNG, GIF, WebP) or a walk over marker lengths (JPEG).
//!
//! Dimensions are the *stored* ones: the EXIF orientation is not applied (limits do not
//! care about rotation when width and height share a bound).

use serde::{Deserialize, Serialize};

use crate::error::ImagingError;
use crate::format::Format;
use crate::jpeg::markers::{self, MarkerError, Markers, EOI, SOS};
use crate::jpeg::Coding;

/// What the header of an image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The format sniffed from the magic bytes.
    pub format: Format,
    /// Stored width in pixels (GIF: the logical screen, or the widest frame in the bytes
    /// given when one is wider: a frame is decoded at its own size).
    pub width: u32,
    /// Stored height in pixels (GIF: the logical screen, or the tallest frame seen).
    pub height: u32,
    /// Number of frames when it is cheap to know from the header: 1 for JPEG and still
    /// PNG/WebP, the `acTL` count for APNG; `None` for GIF and animated WebP (counting
    /// would mean walking the whole file) or when the head ends too early to tell.
    pub frames: Option<u32>,
}

/// Reads format, dimensions and (when cheap) frame count from the first bytes of a file.
///
/// `head` may be the whole file or just its beginning; 64 KiB is plenty for every corpus
/// image except JPEGs with large ICC profiles before the frame header, for which
/// [`ImagingError::ProbeIncomplete`] says how many bytes were not enough.
pub fn probe(head: &[u8]) -> Result<Probe, ImagingError> {
    let format = Format::sniff(head).ok_or(ImagingError::Sniff)?;
    let incomplete = ImagingError::ProbeIncomplete {
        format,
        given: head.len(),
    };
    let corrupt = |reason| ImagingError::ParseHeader { format, reason };
    let (width, height, frames) = match format {
        Format::Jpeg => probe_jpeg(head).map(|(w, h)| (w, h, Some(1))),
        Format::Png => probe_png(head),
        Format::Gif => probe_gif(head),
        Format::Heif => probe_heif(head).map(|(w, h)| (w, h, Some(1))),
        Format::WebP => probe_webp(head),
    }
    .map_err(|err| match err {
        HeaderError::Incomplete => incomplete,
        HeaderError::Corrupt(reason) => corrupt(reason),
        HeaderError::Unsupported(err) => err,
    })?;
    if width == 0 || height == 0 {
        return Err(corrupt("zero width or height"));
    }
    Ok(Probe {
        format,
        width,
        height,
        frames,
    })
}

/// Why a header could not be read; mapped to [`ImagingError`] by [`probe`].
enum HeaderError {
    /// The bytes end before the dimensions.
    Incomplete,
    /// The bytes contradict the format.
    Corrupt(&'static str),
    /// A coding of the format this build does not decode.
    Unsupported(ImagingError),
}

fn be16(bytes: &[u8], at: usize) -> Result<u16, HeaderError> {
    match bytes.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(HeaderError::Incomplete),
    }
}

fn be32(bytes: &[u8], at: usize) -> Result<u32, HeaderError> {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(HeaderError::Incomplete),
    }
}

fn le16(bytes: &[u8], at: usize) -> Result<u16, HeaderError> {
    match bytes.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_le_bytes([a, b])),
        _ => Err(HeaderError::Incomplete),
    }
}

fn le24(bytes: &[u8], at: usize) -> Result<u32, HeaderError> {
    match bytes.get(at..at + 3) {
        Some(&[a, b, c]) => Ok(u32::from_le_bytes([a, b, c, 0])),
        _ => Err(HeaderError::Incomplete),
    }
}

fn le32(bytes: &[u8], at: usize) -> Result<u32, HeaderError> {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(HeaderError::Incomplete),
    }
}

/// Walks the JPEG marker segments up to the first frame header (SOFn). Its sizes are
/// read within its own length: one too short to hold them is corrupt.
fn probe_jpeg(data: &[u8]) -> Result<(u32, u32), HeaderError> {
    const NO_FRAME: HeaderError = HeaderError::Corrupt("no frame header before the scan");
    for item in Markers::new(data) {
        // `cut`: the head ends inside this segment, so a short body may grow.
        let (marker, body, cut) = match item {
            Ok(segment) => (segment.marker, segment.body, false),
            Err(MarkerError::Truncated {
                marker: Some(marker),
                partial,
                ..
            }) => (marker, partial, true),
            Err(MarkerError::Truncated { marker: None, .. }) => {
                return Err(HeaderError::Incomplete)
            }
            Err(MarkerError::BadLength { marker: SOS, .. }) => return Err(NO_FRAME),
            Err(MarkerError::BadLength { .. }) => {
                return Err(HeaderError::Corrupt(
                    "marker segment shorter than its length",
                ))
            }
            Err(MarkerError::NoStartOfImage | MarkerError::NotAMarker { .. }) => {
                return Err(HeaderError::Corrupt("expected a marker"))
            }
        };
        match marker {
            EOI | SOS => return Err(NO_FRAME),
            marker if markers::is_frame_header(marker) => {
                // precision(1) height(2) width(2) components(1): what a head cut in the
                // frame header may still hold.
                return match (be16(body, 1), be16(body, 3)) {
                    (Ok(height), Ok(width)) => {
                        // Refused at the door, not accepted and then failed (a head cut
                        // before the component count leaves it to the worker).
                        if let (Some(&precision), Some(&components)) = (body.first(), body.get(5)) {
                            Coding::of(marker, precision, components)
                                .check()
                                .map_err(HeaderError::Unsupported)?;
                        }
                        Ok((u32::from(width), u32::from(height)))
                    }
                    _ if cut => Err(HeaderError::Incomplete),
                    _ => Err(HeaderError::Corrupt("frame header too short for its size")),
                };
            }
            _ if cut => return Err(HeaderError::Incomplete),
            _ => {}
        }
    }
    Err(HeaderError::Incomplete)
}

/// The size of the largest `ispe` property, once the `meta` box is whole in `data`; in
/// a build without libheif, refused whatever it says.
fn probe_heif(data: &[u8]) -> Result<(u32, u32), HeaderError> {
    if !cfg!(feature = "heif") {
        return Err(HeaderError::Unsupported(ImagingError::UnsupportedFormat {
            format: Format::Heif,
            hint: crate::heif::BUILD_HINT,
        }));
    }
    crate::heif::largest_extent(data).ok_or(HeaderError::Incomplete)
}

/// IHDR is always the first chunk: dimensions at fixed offsets. Then looks for `acTL`
/// (APNG) among the chunks before the first `IDAT`, as far as the head goes.
fn probe_png(data: &[u8]) -> Result<(u32, u32, Option<u32>), HeaderError> {
    if data.len() >= 16 && &data[12..16] != b"IHDR" {
        return Err(HeaderError::Corrupt("first chunk is not IHDR"));
    }
    let width = be32(data, 16)?;
    let height = be32(data, 20)?;
    let mut at = 8;
    let frames = loop {
        let (Ok(len), Some(kind)) = (be32(data, at), data.get(at + 4..at + 8)) else {
            break None;
        };
        match kind {
            b"acTL" => break be32(data, at + 8).ok(),
            b"IDAT" | b"IEND" => break Some(1),
            _ => {}
        }
        // length(4) type(4) data(len) crc(4)
        match usize::try_from(len)
            .ok()
            .and_then(|len| at.checked_add(len + 12))
        {
            Some(next) => at = next,
            None => break None,
        }
    };
    Ok((width, height, frames))
}

/// The logical screen size is at a fixed offset. Frames may be larger than the screen
/// (and the decoder allocates the frame): the image descriptors the head reaches widen
/// the size reported. Counting frames would need a walk over all blocks.
fn probe_gif(data: &[u8]) -> Result<(u32, u32, Option<u32>), HeaderError> {
    let mut width = le16(data, 6)?;
    let mut height = le16(data, 8)?;
    for (w, h) in gif_frame_sizes(data) {
        width = width.max(w);
        height = height.max(h);
    }
    Ok((u32::from(width), u32::from(height), None))
}

/// The sizes in the GIF image descriptors found in `data` by skipping blocks by their
/// lengths, up to where `data` ends or stops making sense (the decoder judges the rest).
fn gif_frame_sizes(data: &[u8]) -> Vec<(u16, u16)> {
    let colour_table = |flags: u8| 3usize << ((flags & 0x07) + 1);
    let mut sizes = Vec::new();
    let Some(&flags) = data.get(10) else {
        return sizes;
    };
    let mut at = 13;
    if flags & 0x80 != 0 {
        at += colour_table(flags);
    }
    // Skips a chain of sub-blocks (length byte, data; 0 ends); `None` past the end.
    let skip_sub_blocks = |mut at: usize| loop {
        match *data.get(at)? {
            0 => return Some(at + 1),
            n => at += 1 + usize::from(n),
        }
    };
    loop {
        match data.get(at) {
            Some(0x2C) => {
                let (Ok(w), Ok(h), Some(&local)) =
                    (le16(data, at + 5), le16(data, at + 7), data.get(at + 9))
                else {
                    return sizes;
                };
                sizes.push((w, h));
                at += 10;
                if local & 0x80 != 0 {
                    at += colour_table(local);
                }
                // LZW minimum code size, then the image data
                match skip_sub_blocks(at + 1) {
                    Some(next) => at = next,
                    None => return sizes,
                }
            }
            // An extension: label, then sub-blocks.
            Some(0x21) => match skip_sub_blocks(at + 2) {
                Some(next) => at = next,
                None => return sizes,
            },
            _ => return sizes,
        }
    }
}

/// The first chunk after `RIFF....WEBP` is `VP8 ` (lossy), `VP8L` (lossless) or `VP8X`
/// (extended: canvas size and flags).
fn probe_webp(data: &[u8]) -> Result<(u32, u32, Option<u32>), HeaderError> {
    let chunk = data.get(12..16).ok_or(HeaderError::Incomplete)?;
    match chunk {
        b"VP8 " => {
            // chunk header(8), frame tag(3), start code 9D 01 2A, then 14-bit sizes.
            if data.get(23..26).ok_or(HeaderError::Incomplete)? != b"\x9d\x01\x2a" {
                return Err(HeaderError::Corrupt("VP8 start code missing"));
            }
            let width = le16(data, 26)? & 0x3fff;
            let height = le16(data, 28)? & 0x3fff;
            Ok((u32::from(width), u32::from(height), Some(1)))
        }
        b"VP8L" => {
            if data.get(20) != Some(&0x2f) {
                return Err(HeaderError::Corrupt("VP8L signature missing"));
            }
            // 14 bits width - 1, 14 bits height - 1, little-endian bit order.
            let bits = le32(data, 21)?;
            let width = (bits & 0x3fff) + 1;
            let height = ((bits >> 14) & 0x3fff) + 1;
            Ok((width, height, Some(1)))
        }
        b"VP8X" => {
            const ANIMATION_FLAG: u8 = 0x02;
            let flags = *data.get(20).ok_or(HeaderError::Incomplete)?;
            let width = le24(data, 24)? + 1;
            let height = le24(data, 27)? + 1;
            let frames = (flags & ANIMATION_FLAG == 0).then_some(1);
            Ok((width, height, frames))
        }
        _ => Err(HeaderError::Corrupt("unknown first WebP chunk")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        let got = probe(&png).expect("probe");
        assert_eq!((got.format, got.width, got.height), (Format::Png, 640, 480));
        assert_eq!(got.frames, None, "head ends before any IDAT");
    }

    #[test]
    fn short_heads_are_incomplete_not_corrupt() {
        for head in [
            &b"\xff\xd8\xff"[..],
            b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0",
            b"GIF89a\x01",
        ] {
            let err = probe(head).expect_err("too short");
            assert!(
                matches!(err, ImagingError::ProbeIncomplete { .. }),
                "{head:?}: {err:?}"
            );
            assert!(!err.is_input_error());
        }
    }

    #[test]
    fn jpeg_codings_no_build_reads_are_refused_by_the_probe_naming_them() {
        // SOI, then a frame header of each kind: 8-bit, 300 × 200, 3 components.
        let with_sof = |code: u8, precision: u8| {
            let mut jpeg = vec![0xff, 0xd8, 0xff, code, 0, 17, precision, 0, 200, 1, 44, 3];
            jpeg.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
            jpeg
        };
        for (code, precision) in [(0xc0, 8), (0xc1, 8), (0xc2, 8), (0xc3, 8)] {
            let got = probe(&with_sof(code, precision)).expect("read by every build");
            assert_eq!((got.width, got.height), (300, 200));
        }
        for (code, precision, words) in [
            (0xc5, 8, "hierarchical (differential)"),
            (0xcb, 8, "lossless arithmetic-coded"),
            (0xc1, 12, "12-bit"),
        ] {
            let err = probe(&with_sof(code, precision)).expect_err("refused");
            assert!(err.is_unsupported(), "{err:?}");
            assert!(err.to_string().contains(words), "{err}");
        }
        assert_eq!(
            probe(&with_sof(0xc9, 8)).is_ok(),
            cfg!(feature = "libjpeg"),
            "arithmetic coding: libjpeg's"
        );
    }

    #[test]
    fn jpeg_scan_before_frame_is_corrupt() {
        let err = probe(b"\xff\xd8\xff\xda\0\x02").expect_err("no SOF");
        assert!(err.is_input_error(), "{err:?}");
    }

    #[test]
    fn jpeg_with_app_segments() {
        // SOI, APP0 of 16 bytes, SOF0 declaring 300 wide and 200 high.
        let mut jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0".to_vec();
        jpeg.extend_from_slice(b"\xff\xc0\0\x11\x08\0\xc8\x01\x2c\x03");
        let got = probe(&jpeg).expect("probe");
        assert_eq!((got.width, got.height, got.frames), (300, 200, Some(1)));
    }

    #[test]
    fn jpeg_frame_header_cut_by_the_head_still_gives_its_size() {
        // SOI, SOF0 declaring 17 bytes, 300 wide and 200 high, cut after the width.
        let jpeg = b"\xff\xd8\xff\xc0\0\x11\x08\0\xc8\x01\x2c";
        let got = probe(jpeg).expect("probe");
        assert_eq!((got.width, got.height), (300, 200));
        // Cut before the width: more bytes would tell.
        let err = probe(&jpeg[..9]).expect_err("cut");
        assert!(
            matches!(err, ImagingError::ProbeIncomplete { .. }),
            "{err:?}"
        );
        // Whole but too short for its sizes (length 4): corrupt, whatever follows.
        let err = probe(b"\xff\xd8\xff\xc0\0\x04\x08\0\xc8\x01\x2c").expect_err("short");
        assert!(err.is_input_error(), "{err:?}");
    }

    #[test]
    fn gif_frames_larger_than_the_screen_widen_the_size() {
        let mut gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\0\0\0\xff\xff\xff".to_vec();
        gif.extend_from_slice(&[0x21, 0xFE, 2, b'h', b'i', 0]); // a comment first
        let frame = |w: u16, h: u16| {
            let mut f = vec![0x2C, 0, 0, 0, 0];
            f.extend_from_slice(&w.to_le_bytes());
            f.extend_from_slice(&h.to_le_bytes());
            f.extend_from_slice(&[0, 2, 2, 0x4C, 0x01, 0]);
            f
        };
        gif.extend(frame(16_000, 3));
        gif.extend(frame(5, 12_000));
        let got = probe(&gif).expect("probe");
        assert_eq!((got.width, got.height, got.frames), (16_000, 12_000, None));
        // A head that ends inside the first frame still reports it.
        let got = probe(&gif[..37]).expect("probe");
        assert_eq!((got.width, got.height), (16_000, 3));
        // Without frames, the screen.
        let got = probe(&gif[..19]).expect("probe");
        assert_eq!((got.width, got.height), (1, 1));
    }

    #[test]
    fn webp_vp8x_animated_has_unknown_frames() {
        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
        webp.extend_from_slice(&[0x02, 0, 0, 0]); // flags: animation
        webp.extend_from_slice(&[0x1f, 0x03, 0x00]); // width - 1 = 799
        webp.extend_from_slice(&[0x57, 0x02, 0x00]); // height - 1 = 599
        let got = probe(&webp).expect("probe");
        assert_eq!((got.width, got.height, got.frames), (800, 600, None));
    }
}
