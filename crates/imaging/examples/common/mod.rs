//! What the examples share.

use std::path::{Path, PathBuf};

/// The JPEGs of a folder (`*.jpg`), sorted by name.
pub fn jpegs(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    names
}
