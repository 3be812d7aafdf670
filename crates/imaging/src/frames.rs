//! Counting the frames of an animation without decoding it: GIF image
//! descriptors and WebP `ANMF` chunks are found by skipping over the file's
//! blocks by their lengths. pixpool only ever decodes the first frame, but a
//! 5000-frame "image" is refused at the door all the same: its cost to every
//! other tool that touches it later is frames × area.
//!
//! Each frame declares its own size, which may exceed the logical screen (GIF) or
//! canvas (WebP): a GIF with a 1×1 screen and a 16000×16000 first frame makes the
//! decoder allocate the frame. [`check_animation`] holds every frame to the limits.

use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom};

use crate::error::ImagingError;
use crate::format::Format;
use crate::limits::Limits;

/// Buffer between the walk and `reader`: the walk reads a byte or a few at a time and
/// skips forward, so most skips land within the buffer instead of costing a seek.
const READ_BUFFER: usize = 64 * 1024;

/// Frames in the image that `reader` yields, positioned at its first byte (1 for a still
/// image, and for JPEG/PNG, which are not read at all).
///
/// Streams: blocks are skipped by seeking, never read into memory whole.
pub fn count_frames<R: Read + Seek>(reader: R, format: Format) -> Result<u32, ImagingError> {
    walk_reader(reader, format, &mut |_, _, _| Ok(()))
}

/// Frames in the image that `reader` yields, positioned at its first byte, each checked
/// on its own size ([`Limits::check_frame`]), their number against
/// [`Limits::max_frames`] and the sum of their areas against
/// [`Limits::max_animation_pixels`]. Returns the count (1 for JPEG/PNG, which are not
/// read at all).
///
/// Streams like [`count_frames`]: made for a spooled upload behind a [`BufReader`],
/// however large.
pub fn check_animation<R: Read + Seek>(
    reader: R,
    format: Format,
    limits: &Limits,
) -> Result<u32, ImagingError> {
    walk_reader(reader, format, &mut frame_checker(limits))
}

/// Checks every frame of an image already in memory (the decoder's input) on its own
/// size only. Their number and total area are the upload's business
/// ([`check_animation`]): the decoder reads the first frame alone.
pub(crate) fn check_frame_sizes_in(
    data: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<u32, ImagingError> {
    let mut check = |frame, width, height| limits.check_frame(frame, width, height);
    settle(walk(&mut Cursor::new(data), format, &mut check))
}

/// Called with each frame (from 1) and its declared width and height.
type OnFrame<'a> = dyn FnMut(u32, u32, u32) -> Result<(), ImagingError> + 'a;

fn frame_checker(limits: &Limits) -> impl FnMut(u32, u32, u32) -> Result<(), ImagingError> + '_ {
    let mut pixels = 0u64;
    move |frame, width, height| {
        limits.check_frame(frame, width, height)?;
        pixels = pixels.saturating_add(u64::from(width) * u64::from(height));
        let exceeded = |limit| ImagingError::CheckFrames {
            frames: frame,
            width,
            height,
            limit,
        };
        if frame > limits.max_frames {
            return Err(exceeded("frame count"));
        }
        if pixels > limits.max_animation_pixels {
            return Err(exceeded("animation pixels (sum of frame areas)"));
        }
        Ok(())
    }
}

fn walk_reader<R: Read + Seek>(
    reader: R,
    format: Format,
    on_frame: &mut OnFrame<'_>,
) -> Result<u32, ImagingError> {
    if matches!(format, Format::Jpeg | Format::Png) {
        return Ok(1);
    }
    // Buffered here whatever the caller passes: a `BufReader` given in costs one copy
    // per refill, while an unbuffered `File` would cost a system call per byte.
    let mut r = BufReader::with_capacity(READ_BUFFER, reader);
    settle(walk(&mut r, format, on_frame))
}

fn walk<R: BufRead + Seek>(
    r: &mut R,
    format: Format,
    on_frame: &mut OnFrame<'_>,
) -> Result<u32, FrameScan> {
    match format {
        Format::Gif => gif_frames(r, on_frame),
        Format::WebP => webp_frames(r, on_frame),
        // A HEIF's primary image is one picture (sequences are refused by libheif's
        // primary-image handle, which is all that is read).
        Format::Jpeg | Format::Png | Format::Heif => Ok(1),
    }
}

fn settle(counted: Result<u32, FrameScan>) -> Result<u32, ImagingError> {
    match counted {
        Ok(n) => Ok(n.max(1)),
        // A structure that ends early or does not parse is the decoder's
        // business (it fails the job); for counting, what was seen counts.
        Err(FrameScan::Truncated(n)) => Ok(n.max(1)),
        Err(FrameScan::Io(source)) => Err(ImagingError::ReadFrames { source }),
        Err(FrameScan::Refused(e)) => Err(e),
    }
}

enum FrameScan {
    /// The input ended, or stopped making sense, after this many frames.
    Truncated(u32),
    Io(io::Error),
    /// A frame is over the limits.
    Refused(ImagingError),
}

/// Fills `buf`; the end of the input is a truncation after `frames`, while any other
/// failure is the reader's (a server fault, not a short file).
fn fill<R: Read>(r: &mut R, buf: &mut [u8], frames: u32) -> Result<(), FrameScan> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameScan::Truncated(frames)),
        Err(e) => Err(FrameScan::Io(e)),
    }
}

fn byte<R: Read>(r: &mut R, frames: u32) -> Result<u8, FrameScan> {
    let mut b = [0u8; 1];
    fill(r, &mut b, frames)?;
    Ok(b[0])
}

fn skip<R: BufRead + Seek>(r: &mut R, n: i64) -> Result<(), FrameScan> {
    r.seek_relative(n).map_err(FrameScan::Io)
}

/// Skips a chain of GIF data sub-blocks (length byte, data; 0 ends).
fn skip_sub_blocks<R: BufRead + Seek>(r: &mut R, frames: u32) -> Result<(), FrameScan> {
    loop {
        match byte(r, frames)? {
            0 => return Ok(()),
            n => skip(r, i64::from(n))?,
        }
    }
}

fn gif_frames<R: BufRead + Seek>(r: &mut R, on_frame: &mut OnFrame<'_>) -> Result<u32, FrameScan> {
    let mut frames = 0u32;
    let mut head = [0u8; 13];
    fill(r, &mut head, 0)?;
    let flags = head[10];
    if flags & 0x80 != 0 {
        skip(r, 3 * (1i64 << ((flags & 0x07) + 1)))?;
    }
    loop {
        match byte(r, frames)? {
            0x2C => {
                frames = frames.saturating_add(1);
                // left(2) top(2) width(2) height(2) flags(1), little-endian
                let mut desc = [0u8; 9];
                fill(r, &mut desc, frames)?;
                let width = u16::from_le_bytes([desc[4], desc[5]]);
                let height = u16::from_le_bytes([desc[6], desc[7]]);
                on_frame(frames, u32::from(width), u32::from(height))
                    .map_err(FrameScan::Refused)?;
                if desc[8] & 0x80 != 0 {
                    skip(r, 3 * (1i64 << ((desc[8] & 0x07) + 1)))?;
                }
                byte(r, frames)?; // LZW minimum code size
                skip_sub_blocks(r, frames)?;
            }
            0x21 => {
                byte(r, frames)?; // extension label
                skip_sub_blocks(r, frames)?;
            }
            0x3B => return Ok(frames),
            _ => return Err(FrameScan::Truncated(frames)),
        }
    }
}

fn webp_frames<R: BufRead + Seek>(r: &mut R, on_frame: &mut OnFrame<'_>) -> Result<u32, FrameScan> {
    let mut frames = 0u32;
    let mut riff = [0u8; 12];
    fill(r, &mut riff, 0)?;
    let mut chunk = [0u8; 8];
    loop {
        match r.read_exact(&mut chunk) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(frames),
            Err(e) => return Err(FrameScan::Io(e)),
        }
        let len = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        // Chunks are padded to an even length.
        let mut padded = i64::from(len) + i64::from(len & 1);
        if &chunk[..4] == b"ANMF" {
            frames = frames.saturating_add(1);
        }
        // A frame too short to hold its own header has no pixels to allocate for.
        if &chunk[..4] == b"ANMF" && len >= 12 {
            // X(3) Y(3) width - 1 (3) height - 1 (3), little-endian
            let mut frame = [0u8; 12];
            fill(r, &mut frame, frames)?;
            padded -= 12;
            let width = u32::from_le_bytes([frame[6], frame[7], frame[8], 0]) + 1;
            let height = u32::from_le_bytes([frame[9], frame[10], frame[11], 0]) + 1;
            on_frame(frames, width, height).map_err(FrameScan::Refused)?;
        }
        r.seek(SeekFrom::Current(padded)).map_err(FrameScan::Io)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gif(frames: usize) -> Vec<u8> {
        let mut g = b"GIF89a".to_vec();
        g.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0]); // 1×1, 2-colour global table
        g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
        g.extend_from_slice(&[0x21, 0xFF, 3, b'N', b'E', b'T', 0]); // an extension
        for _ in 0..frames {
            g.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
            g.extend_from_slice(&[2, 2, 0x4C, 0x01, 0]);
        }
        g.push(0x3B);
        g
    }

    fn count(bytes: &[u8], format: Format) -> u32 {
        count_frames(Cursor::new(bytes), format).expect("count")
    }

    #[test]
    fn gif_frames_are_counted_and_truncation_counts_what_was_seen() {
        assert_eq!(count(&gif(1), Format::Gif), 1);
        assert_eq!(count(&gif(7), Format::Gif), 7);
        let cut = gif(7);
        assert!(count(&cut[..cut.len() - 12], Format::Gif) >= 5);
    }

    #[test]
    fn each_frame_is_held_to_the_limits_on_its_own_size() {
        let limits = Limits::default();
        let check = |bytes: &[u8], format| check_frame_sizes_in(bytes, format, &limits);
        assert_eq!(check(&gif(3), Format::Gif).expect("small frames"), 3);
        // The second frame declares 16000×16000 on a 1×1 screen.
        let mut big = gif(1);
        big.pop();
        big.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0x80, 0x3E, 0x80, 0x3E, 0]);
        big.extend_from_slice(&[2, 2, 0x4C, 0x01, 0, 0x3B]);
        let err = check(&big, Format::Gif).expect_err("a frame over the pixel limit");
        assert!(err.is_limit_exceeded(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "frame 2 of 16000×16000 exceeds the pixel count limit"
        );
        // A WebP frame of 16384×20000.
        let mut w = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
        w.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        w.extend_from_slice(b"ANMF\x10\0\0\0");
        w.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0xFF, 0x3F, 0, 0x1F, 0x4E, 0, 0, 0, 0, 0]);
        let err = check(&w, Format::WebP).expect_err("a frame over the height limit");
        assert!(err.to_string().contains("16384×20000"), "{err}");
        // Through a reader: also the count and the sum of the frames' areas.
        let three = gif(3);
        let few = Limits {
            max_frames: 2,
            ..Limits::default()
        };
        assert_eq!(
            check_frame_sizes_in(&gif(3), Format::Gif, &few).expect("sizes only"),
            3
        );
        let err = check_animation(Cursor::new(&three), Format::Gif, &few).expect_err("3 frames");
        assert!(err.to_string().contains("frame count"), "{err}");
        let small = Limits {
            max_animation_pixels: 2,
            ..Limits::default()
        };
        let err = check_animation(Cursor::new(&three), Format::Gif, &small).expect_err("3 pixels");
        assert!(err.to_string().contains("sum of frame areas"), "{err}");
        let err = check_animation(Cursor::new(&three), Format::Gif, &limits);
        assert_eq!(err.expect("within the limits"), 3);
    }

    /// A reader whose every call fails, as a spool file on a failing disk would.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk gone"))
        }
    }

    impl Seek for Broken {
        fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
            Err(io::Error::other("disk gone"))
        }
    }

    #[test]
    fn a_failing_reader_is_the_servers_fault_not_a_short_image() {
        for format in [Format::Gif, Format::WebP] {
            let err = check_animation(Broken, format, &Limits::default()).expect_err("read");
            assert!(
                matches!(err, ImagingError::ReadFrames { .. }),
                "{format:?}: {err:?}"
            );
            assert!(!err.is_input_error(), "{err:?}");
        }
        // JPEG and PNG are still images: the reader is not touched.
        assert_eq!(count_frames(Broken, Format::Jpeg).expect("not read"), 1);
    }

    #[test]
    fn webp_anmf_chunks_are_counted() {
        let mut w = b"RIFF\0\0\0\0WEBP".to_vec();
        w.extend_from_slice(b"VP8X\x0a\0\0\0");
        w.extend_from_slice(&[0; 10]);
        for _ in 0..3 {
            w.extend_from_slice(b"ANMF\x03\0\0\0abc\0");
        }
        assert_eq!(count(&w, Format::WebP), 3);
        assert_eq!(count(b"RIFF\0\0\0\0WEBPVP8 \x02\0\0\0ab", Format::WebP), 1);
    }
}
