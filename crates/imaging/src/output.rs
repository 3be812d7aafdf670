//! Atomic output files: a reader sees either no file or the whole file.
//!
//! Each output is written to `.<name>.tmp` in the output directory (a dot file, so that a
//! directory listing or a static file server skips it), flushed to disk, then renamed over
//! `<name>`. The rename is atomic within a file system; the fsync before it makes sure the
//! name never points at data still in the page cache when the machine goes down. A caller
//! that flushes later itself ([`crate::Flush::Later`], then [`crate::sync_outputs`])
//! skips that fsync: readers still only ever see whole files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::error::ImagingError;
use crate::pipeline::Flush;

/// Writes `bytes` to `dir/name` through a temporary file and a rename; with
/// [`Flush::Now`] the temporary file is flushed to disk first (else see [`sync_files`]).
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    flush: Flush,
) -> Result<(), ImagingError> {
    let temp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let result = write_temp(&temp, bytes, flush).and_then(|()| {
        fs::rename(&temp, &target).map_err(|source| ImagingError::WriteOutput {
            path: target.clone(),
            source,
        })
    });
    if result.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_temp(path: &Path, bytes: &[u8], flush: Flush) -> Result<(), ImagingError> {
    let failed = |source| ImagingError::WriteOutput {
        path: path.to_owned(),
        source,
    };
    // Truncate rather than create_new: a temp file left by a crashed worker is garbage.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    if flush == Flush::Now {
        file.sync_all().map_err(failed)?;
    }
    Ok(())
}

/// Flushes files already renamed into place, then their directory (the renames).
pub(crate) fn sync_files(dir: &Path, names: &[&str]) -> Result<(), ImagingError> {
    for name in names {
        let path = dir.join(name);
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|source| ImagingError::WriteOutput { path, source })?;
    }
    sync_dir(dir);
    Ok(())
}

/// Makes the renames themselves durable. Some file systems refuse to sync a directory;
/// the files are already complete then, so that is only logged.
pub(crate) fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        debug!(cause = %err, dir = %dir.display(), "could not sync output directory");
    }
}

/// Removes outputs already renamed into place when a later one fails, so that a failed
/// job leaves nothing behind.
pub(crate) fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        if let Err(err) = fs::remove_file(path) {
            debug!(cause = %err, path = %path.display(), "could not remove partial output");
        }
    }
}
