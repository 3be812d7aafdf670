//! Bounds on what the decoders keep besides the pixels: the embedded ICC profile and
//! metadata chunks (text, EXIF, XMP).
//!
//! The dimension limits say nothing about these, and they can be large for their file
//! size: a PNG `iCCP` chunk is zlib-compressed, so 1 MB of file inflates to 1 GB of
//! profile, which the `png` decoder inflates whole while reading the header (and the
//! `image` crate then copies). The chunks are walked here, on the bytes in memory, before
//! any decoder sees them; the `iCCP` stream is inflated into a counter, never into a
//! buffer, and only up to the cap.

use std::io::{self, Read};

use crate::error::ImagingError;
use crate::format::Format;
use crate::jpeg::markers::{Markers, APP2, EOI, SOS};
use crate::limits::{MAX_ICC_PROFILE_BYTES, MAX_METADATA_BYTES};

/// Checks the ICC profile and the metadata chunks of a whole file against
/// [`MAX_ICC_PROFILE_BYTES`] and [`MAX_METADATA_BYTES`].
pub(crate) fn check(format: Format, data: &[u8]) -> Result<(), ImagingError> {
    match format {
        Format::Png => check_png(data),
        Format::Jpeg => check_jpeg(data),
        Format::WebP => check_webp(data),
        // GIF has no profile the decoder reads, and its comments are skipped; a HEIF's
        // profile and EXIF are read by us, capped, from libheif's handle.
        Format::Gif | Format::Heif => Ok(()),
    }
}

/// Adds up bytes of one kind and refuses past `limit`.
struct Budget {
    what: &'static str,
    limit: usize,
    used: usize,
}

impl Budget {
    fn new(what: &'static str, limit: usize) -> Budget {
        Budget {
            what,
            limit,
            used: 0,
        }
    }

    fn add(&mut self, bytes: usize) -> Result<(), ImagingError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            return Err(ImagingError::CheckMetadata {
                what: self.what,
                at_least: self.used,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// Every chunk, to `IEND`: `iCCP` inflated (bounded), text and `eXIf` chunks counted as
/// stored (the decoder keeps them raw; it inflates text only when asked, and we never ask).
fn check_png(data: &[u8]) -> Result<(), ImagingError> {
    let mut icc = Budget::new("ICC profile", MAX_ICC_PROFILE_BYTES);
    let mut kept = Budget::new("metadata", MAX_METADATA_BYTES);
    let mut at = 8; // past the signature
    while let Some(head) = data.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let body = &data[at + 8..];
        // A chunk cut short holds what the file has, no more.
        let body = &body[..len.min(body.len())];
        match &head[4..8] {
            b"iCCP" => icc.add(inflated_iccp_len(body))?,
            b"tEXt" | b"zTXt" | b"iTXt" | b"eXIf" => kept.add(body.len())?,
            b"IEND" => break,
            _ => {}
        }
        // length(4) type(4) data(len) crc(4)
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// The inflated size of an `iCCP` chunk's profile, counted up to one byte past the cap.
/// A chunk that does not parse or inflate counts as empty: the decoder ignores it too.
fn inflated_iccp_len(body: &[u8]) -> usize {
    // keyword (1-79 bytes), NUL, compression method (0: zlib), zlib stream
    let Some(nul) = body.iter().take(80).position(|&b| b == 0) else {
        return 0;
    };
    let Some(stream) = body.get(nul + 2..) else {
        return 0;
    };
    let cap = u64::try_from(MAX_ICC_PROFILE_BYTES).unwrap_or(u64::MAX);
    let mut inflater = flate2::read::ZlibDecoder::new(stream).take(cap.saturating_add(1));
    let mut counted = 0usize;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match inflater.read(&mut buf) {
            Ok(0) => return counted,
            Ok(n) => counted += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Corrupt: what came out before counts (it is what a decoder would hold).
            Err(_) => return counted,
        }
    }
}

/// The `APP2` segments before the first scan: an ICC profile is split over several
/// (`ICC_PROFILE\0`, sequence number, count, then the data), reassembled by the decoder.
fn check_jpeg(data: &[u8]) -> Result<(), ImagingError> {
    const ICC_TAG: &[u8] = b"ICC_PROFILE\0";
    let mut icc = Budget::new("ICC profile", MAX_ICC_PROFILE_BYTES);
    // Up to the first segment that does not parse: the decoder refuses the file there.
    for segment in Markers::new(data).map_while(Result::ok) {
        match segment.marker {
            // The scan (or the end): no decoder reads a profile after it.
            EOI | SOS => return Ok(()),
            APP2 => {
                if let Some(rest) = segment.body.strip_prefix(ICC_TAG) {
                    // sequence number and count, then the data
                    icc.add(rest.len().saturating_sub(2))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The RIFF chunks: `ICCP` against the ICC cap, `EXIF` and `XMP ` against the metadata
/// cap (the decoder reads each into a buffer of the chunk's declared size).
fn check_webp(data: &[u8]) -> Result<(), ImagingError> {
    let mut icc = Budget::new("ICC profile", MAX_ICC_PROFILE_BYTES);
    let mut kept = Budget::new("metadata", MAX_METADATA_BYTES);
    let mut at = 12; // past RIFF, size, WEBP
    while let Some(head) = data.get(at..at + 8) {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        match &head[..4] {
            b"ICCP" => icc.add(len)?,
            b"EXIF" | b"XMP " => kept.add(len)?,
            _ => {}
        }
        // Chunks are padded to an even length.
        at = at
            .saturating_add(8)
            .saturating_add(len)
            .saturating_add(len & 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_with_icc(segments: usize, per_segment: usize) -> Vec<u8> {
        let mut jpeg = b"\xff\xd8".to_vec();
        for n in 0..segments {
            let len = 2 + 12 + 2 + per_segment;
            jpeg.extend_from_slice(&[0xff, 0xe2]);
            jpeg.extend_from_slice(&u16::try_from(len).expect("segment").to_be_bytes());
            jpeg.extend_from_slice(b"ICC_PROFILE\0");
            jpeg.extend_from_slice(&[u8::try_from(n + 1).expect("seq"), 255]);
            jpeg.extend(std::iter::repeat_n(0u8, per_segment));
        }
        jpeg.extend_from_slice(b"\xff\xda\x00\x02\xff\xd9");
        jpeg
    }

    #[test]
    fn jpeg_icc_segments_are_added_up() {
        // 65 segments of 65,000 bytes: 4.03 MiB, over the 4 MiB cap; 64 are under it.
        let err = check(Format::Jpeg, &jpeg_with_icc(65, 65_000)).expect_err("over the cap");
        assert!(err.is_limit_exceeded() && err.is_input_error(), "{err:?}");
        assert!(err.to_string().contains("ICC profile"), "{err}");
        check(Format::Jpeg, &jpeg_with_icc(64, 65_000)).expect("under the cap");
    }

    fn webp_with(kind: &[u8; 4], declared: u32) -> Vec<u8> {
        let mut w = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
        w.extend_from_slice(&[0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        w.extend_from_slice(kind);
        w.extend_from_slice(&declared.to_le_bytes());
        w.extend_from_slice(&[0; 16]);
        w
    }

    #[test]
    fn webp_iccp_and_exif_chunks_are_capped_on_their_declared_size() {
        let over = u32::try_from(MAX_ICC_PROFILE_BYTES + 1).expect("small");
        let err = check(Format::WebP, &webp_with(b"ICCP", over)).expect_err("ICCP");
        assert!(err.is_limit_exceeded(), "{err:?}");
        check(Format::WebP, &webp_with(b"ICCP", 3144)).expect("a normal profile");
        let err = check(Format::WebP, &webp_with(b"EXIF", u32::MAX)).expect_err("EXIF");
        assert!(err.to_string().contains("metadata"), "{err}");
    }

    #[test]
    fn png_text_chunks_are_counted_and_a_broken_iccp_is_left_to_the_decoder() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let chunk = |png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
            png.extend_from_slice(&u32::try_from(data.len()).expect("len").to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&[0; 4]); // CRC: not ours to check
        };
        chunk(&mut png, b"iCCP", b"name\0\0not zlib at all");
        check(Format::Png, &png).expect("a broken profile is ignored, as png does");
        let text = vec![b'a'; 1 << 20];
        for _ in 0..(MAX_METADATA_BYTES >> 20) {
            chunk(&mut png, b"tEXt", &text);
        }
        check(Format::Png, &png).expect("at the cap");
        chunk(&mut png, b"iTXt", b"x");
        let err = check(Format::Png, &png).expect_err("over the cap");
        assert!(err.is_limit_exceeded(), "{err:?}");
    }
}
