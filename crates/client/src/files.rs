//! Walking the paths given on the command line and sniffing each file.
//!
//! Only a file's first bytes decide whether it is uploaded (the server decides
//! the same way): a `README` is skipped, a JPEG named `photo.png` is not.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An image format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `FF D8 FF`.
    Jpeg,
    /// `89 'PNG' 0D 0A 1A 0A`.
    Png,
    /// `GIF8`.
    Gif,
    /// `RIFF` ‹size› `WEBP`.
    Webp,
}

impl Format {
    /// The media type sent as the part's `Content-Type`.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
            Format::Webp => "image/webp",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Gif => "GIF",
            Format::Webp => "WebP",
        })
    }
}

/// Bytes needed to tell every [`Format`] apart (`RIFF`, 4 size bytes, `WEBP`).
pub const SNIFF_LEN: usize = 12;

/// The format of a file starting with `head`, if it is one we upload.
pub fn sniff(head: &[u8]) -> Option<Format> {
    match head {
        [0xFF, 0xD8, 0xFF, ..] => Some(Format::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(Format::Png),
        [b'G', b'I', b'F', b'8', ..] => Some(Format::Gif),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(Format::Webp),
        _ => None,
    }
}

/// A file to upload.
#[derive(Debug, Clone)]
pub struct Image {
    /// As found: a path given, or joined below a directory given.
    pub path: PathBuf,
    /// Its size when sniffed; the upload sends exactly this many bytes.
    pub bytes: u64,
    /// What its magic bytes say.
    pub format: Format,
}

/// A file that is not uploaded, and why (printed as a one-line note).
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it is skipped.
    pub reason: SkipReason,
}

/// Why a file is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Its first bytes are not JPEG, PNG, GIF or WebP.
    NotAnImage,
    /// A FIFO, socket or device: never opened, since reading it could block.
    NotARegularFile,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotAnImage => "not an image (JPEG, PNG, GIF or WebP)",
            SkipReason::NotARegularFile => "not a regular file",
        })
    }
}

/// Everything found under the paths given.
#[derive(Debug, Default)]
pub struct Walk {
    /// Files to upload, in walk order (each directory's entries sorted by name).
    pub images: Vec<Image>,
    /// Files passed over.
    pub skipped: Vec<Skipped>,
    /// Paths that could not be read (missing, no permission): these count as
    /// failures, since the user asked for them.
    pub unreadable: Vec<(PathBuf, io::Error)>,
}

/// Walks `paths` recursively (following symbolic links, each directory once).
pub fn walk(paths: &[PathBuf]) -> Walk {
    let mut walk = Walk::default();
    let mut seen_dirs = HashSet::new();
    for path in paths {
        visit(path, &mut walk, &mut seen_dirs);
    }
    walk
}

fn visit(path: &Path, walk: &mut Walk, seen_dirs: &mut HashSet<(u64, u64)>) {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return walk.unreadable.push((path.to_path_buf(), e)),
    };
    if meta.is_dir() {
        // A symbolic link back up the tree would otherwise recurse forever.
        if !seen_dirs.insert((meta.dev(), meta.ino())) {
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => return walk.unreadable.push((path.to_path_buf(), e)),
        };
        let mut children = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => children.push(entry.path()),
                Err(e) => walk.unreadable.push((path.to_path_buf(), e)),
            }
        }
        children.sort();
        for child in children {
            visit(&child, walk, seen_dirs);
        }
    } else if !meta.is_file() {
        walk.skipped.push(Skipped {
            path: path.to_path_buf(),
            reason: SkipReason::NotARegularFile,
        });
    } else {
        match read_head(path) {
            Ok(head) => match sniff(&head) {
                Some(format) => walk.images.push(Image {
                    path: path.to_path_buf(),
                    bytes: meta.len(),
                    format,
                }),
                None => walk.skipped.push(Skipped {
                    path: path.to_path_buf(),
                    reason: SkipReason::NotAnImage,
                }),
            },
            Err(e) => walk.unreadable.push((path.to_path_buf(), e)),
        }
    }
}

/// Up to [`SNIFF_LEN`] bytes from the start of the file (fewer if it is shorter).
fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    File::open(path)?
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_format_by_its_magic() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(Format::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(Format::Png));
        assert_eq!(sniff(b"GIF89a"), Some(Format::Gif));
        assert_eq!(sniff(b"GIF87a"), Some(Format::Gif));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(Format::Webp));
    }

    #[test]
    fn refuses_near_misses() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(&[0xFF, 0xD8]), None);
        assert_eq!(sniff(b"# README\n"), None);
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"\x89PNG\r\n"), None);
    }
}
