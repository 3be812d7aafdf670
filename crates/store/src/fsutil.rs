//! Durable file replacement: what makes a job record survive power loss.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `bytes` so that a reader (or a restart after power loss)
/// sees either the old content or the new, never a mix: write a temp file in the
/// same directory, fsync it, rename it over `path`, fsync the directory.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// [`replace_durably`] without the directory fsync: the new content is on disk before its
/// name can be, so a reader after power loss still sees the old content or the new,
/// never a torn file; but the replacement itself may be undone. For a state that a crash
/// may roll back to the previous durable one (one fsync instead of two).
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    // The pid keeps two processes writing the same record from sharing a temp file.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// fsyncs a directory, making the renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_only_the_new_content_and_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("pixpool-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("rec.json");
        replace_durably(&path, b"one").expect("first write");
        replace_durably(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read back"), b"two");
        replace_atomically(&path, b"three").expect("third write");
        assert_eq!(fs::read(&path).expect("read back"), b"three");
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp files left: {names:?}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
