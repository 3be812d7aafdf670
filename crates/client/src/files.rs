//! Walking the paths given on the command line and sniffing each file.
//!
//! Only a file's first bytes decide whether it is uploaded, by the server's own
//! test ([`Format::sniff`] from `pixpool-model`): a `README` is skipped, a JPEG
//! named `photo.png` is not.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pixpool_model::{Format, SNIFF_LEN};

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
            Ok(head) => match Format::sniff(&head) {
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

    /// Writes `bytes` to `dir/name`.
    fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write a test file");
        path
    }

    #[test]
    fn files_are_sniffed_by_content_with_the_servers_rules() {
        let dir = std::env::temp_dir().join(format!("pixpool-client-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a test dir");
        file(&dir, "a-photo.png", b"\xff\xd8\xff\xe0\0\x10JFIF\0");
        file(&dir, "b.webp", b"RIFF\x10\0\0\0WEBPVP8 ");
        file(&dir, "c.gif", b"GIF89a\x01\0\x01\0");
        // `GIF8` alone is not a GIF for the server, so it is not uploaded.
        file(&dir, "d.gif", b"GIF8xx\x01\0\x01\0");
        file(&dir, "e.txt", b"# README\n");
        let walk = walk(std::slice::from_ref(&dir));
        let _ = std::fs::remove_dir_all(&dir);

        let found: Vec<_> = walk
            .images
            .iter()
            .map(|i| (i.path.file_name().expect("name").to_owned(), i.format))
            .collect();
        assert_eq!(
            found,
            [
                ("a-photo.png".into(), Format::Jpeg),
                ("b.webp".into(), Format::WebP),
                ("c.gif".into(), Format::Gif),
            ]
        );
        let skipped: Vec<_> = walk
            .skipped
            .iter()
            .map(|s| (s.path.file_name().expect("name").to_owned(), s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                ("d.gif".into(), SkipReason::NotAnImage),
                ("e.txt".into(), SkipReason::NotAnImage),
            ]
        );
        assert!(walk.unreadable.is_empty(), "{:?}", walk.unreadable);
    }

    #[test]
    fn formats_give_the_parts_content_type_and_a_readable_name() {
        assert_eq!(Format::WebP.content_type(), "image/webp");
        assert_eq!(Format::WebP.to_string(), "WebP");
        assert_eq!(Format::Jpeg.to_string(), "JPEG");
    }
}
