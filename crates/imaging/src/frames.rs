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
use std::path::Path;

use crate::error::ImagingError;
use crate::format::Format;
use crate::limits::Limits;

/// Frames in the file at `path` (1 for a still image and for JPEG/PNG).
pub fn count_frames(path: &Path, format: Format) -> Result<u32, ImagingError> {
    walk_file(path, format, &mut |_, _, _| Ok(()))
}

/// Frames in the file at `path`, each checked on its own size ([`Limits::check_frame`]),
/// their number against [`Limits::max_frames`] and the sum of their areas against
/// [`Limits::max_animation_pixels`]. Returns the count (1 for JPEG/PNG).
pub fn check_animation(path: &Path, format: Format, limits: &Limits) -> Result<u32, ImagingError> {
    walk_file(path, format, &mut frame_checker(limits))
}

/// Checks every frame of a file already in memory (the decoder's input) on its own size
/// only. Their number and total area are the upload's business ([`check_animation`]):
/// the decoder reads the first frame alone.
pub(crate) fn check_frame_sizes_in(
    data: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<u32, ImagingError> {
    let mut check = |frame, width, height| limits.check_frame(frame, width, height);
    let counted = walk(&mut Cursor::new(data), format, &mut check);
    settle(counted, |e| ImagingError::ReadInput {
        path: "<memory>".into(),
        source: e,
    })
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

fn walk_file(path: &Path, format: Format, on_frame: &mut OnFrame<'_>) -> Result<u32, ImagingError> {
    let read_err = |source| ImagingError::ReadInput {
        path: path.to_owned(),
        source,
    };
    if matches!(format, Format::Jpeg | Format::Png) {
        return Ok(1);
    }
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut r = BufReader::with_capacity(64 * 1024, file);
    settle(walk(&mut r, format, on_frame), read_err)
}

fn walk<R: BufRead + Seek>(
    r: &mut R,
    format: Format,
    on_frame: &mut OnFrame<'_>,
) -> Result<u32, FrameScan> {
    match format {
        Format::Gif => gif_frames(r, on_frame),
        Format::WebP => webp_frames(r, on_frame),
        Format::Jpeg | Format::Png => Ok(1),
    }
}

fn settle(
    counted: Result<u32, FrameScan>,
    read_err: impl FnOnce(io::Error) -> ImagingError,
) -> Result<u32, ImagingError> {
    match counted {
        Ok(n) => Ok(n.max(1)),
        // A structure that ends early or does not parse is the decoder's
        // business (it fails the job); for counting, what was seen counts.
        Err(FrameScan::Truncated(n)) => Ok(n.max(1)),
        Err(FrameScan::Io(e)) => Err(read_err(e)),
        Err(FrameScan::Refused(e)) => Err(e),
    }
}

enum FrameScan {
    /// The file ended (or went wrong) after this many frames.
    Truncated(u32),
    Io(io::Error),
    /// A frame is over the limits.
    Refused(ImagingError),
}

fn byte<R: Read>(r: &mut R, frames: u32) -> Result<u8, FrameScan> {
    let mut b = [0u8; 1];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(b[0]),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameScan::Truncated(frames)),
        Err(e) => Err(FrameScan::Io(e)),
    }
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
    r.read_exact(&mut head)
        .map_err(|_| FrameScan::Truncated(0))?;
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
                r.read_exact(&mut desc)
                    .map_err(|_| FrameScan::Truncated(frames))?;
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
    r.read_exact(&mut riff)
        .map_err(|_| FrameScan::Truncated(0))?;
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
            r.read_exact(&mut frame)
                .map_err(|_| FrameScan::Truncated(frames))?;
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
        let dir = std::env::temp_dir().join(format!("pixpool-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join(format!("f-{}-{format:?}", bytes.len()));
        std::fs::write(&p, bytes).expect("write");
        let n = count_frames(&p, format).expect("count");
        let _ = std::fs::remove_file(&p);
        n
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
        // On a file: also the count and the sum of the frames' areas.
        let dir = std::env::temp_dir().join(format!("pixpool-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("three.gif");
        std::fs::write(&path, gif(3)).expect("write");
        let few = Limits {
            max_frames: 2,
            ..Limits::default()
        };
        assert_eq!(
            check_frame_sizes_in(&gif(3), Format::Gif, &few).expect("sizes only"),
            3
        );
        let err = check_animation(&path, Format::Gif, &few).expect_err("3 frames");
        assert!(err.to_string().contains("frame count"), "{err}");
        let small = Limits {
            max_animation_pixels: 2,
            ..Limits::default()
        };
        let err = check_animation(&path, Format::Gif, &small).expect_err("3 pixels");
        assert!(err.to_string().contains("sum of frame areas"), "{err}");
        let err = check_animation(&path, Format::Gif, &limits);
        assert_eq!(err.expect("within the limits"), 3);
        let _ = std::fs::remove_file(&path);
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
