//! Counting the frames of an animation without decoding it: GIF image
//! descriptors and WebP `ANMF` chunks are found by skipping over the file's
//! blocks by their lengths. pixpool only ever decodes the first frame, but a
//! 5000-frame "image" is refused at the door all the same: its cost to every
//! other tool that touches it later is frames × area.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::ImagingError;
use crate::format::Format;

/// Frames in the file at `path` (1 for a still image and for JPEG/PNG).
pub fn count_frames(path: &Path, format: Format) -> Result<u32, ImagingError> {
    let read_err = |source| ImagingError::ReadInput {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let counted = match format {
        Format::Gif => gif_frames(&mut r),
        Format::WebP => webp_frames(&mut r),
        Format::Jpeg | Format::Png => return Ok(1),
    };
    match counted {
        Ok(n) => Ok(n.max(1)),
        // A structure that ends early or does not parse is the decoder's
        // business (it fails the job); for counting, what was seen counts.
        Err(FrameScan::Truncated(n)) => Ok(n.max(1)),
        Err(FrameScan::Io(e)) => Err(read_err(e)),
    }
}

enum FrameScan {
    /// The file ended (or went wrong) after this many frames.
    Truncated(u32),
    Io(io::Error),
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

fn gif_frames<R: BufRead + Seek>(r: &mut R) -> Result<u32, FrameScan> {
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
                let mut desc = [0u8; 9];
                r.read_exact(&mut desc)
                    .map_err(|_| FrameScan::Truncated(frames))?;
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

fn webp_frames<R: BufRead + Seek>(r: &mut R) -> Result<u32, FrameScan> {
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
        if &chunk[..4] == b"ANMF" {
            frames = frames.saturating_add(1);
        }
        let len = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        // Chunks are padded to an even length.
        let padded = i64::from(len) + i64::from(len & 1);
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
