//! Helpers shared by the integration tests: the corpus location and scratch directories.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use pixpool_imaging::{Limits, Output, Preset, Processed};

/// `$PIXPOOL_CORPUS`, else `<repo>/../shared/corpus` (the checkout sits beside `shared/`).
pub fn corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os("PIXPOOL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    dir.join("MANIFEST.md").is_file().then_some(dir)
}

/// Returns the corpus directory, or prints why the test is skipped and returns from it.
#[macro_export]
macro_rules! corpus_or_skip {
    () => {
        match common::corpus() {
            Some(dir) => dir,
            None => {
                eprintln!(
                    "skipping: ../shared/corpus not found (set PIXPOOL_CORPUS to run this test)"
                );
                return;
            }
        }
    };
}

/// A fresh directory under cargo's per-target scratch space, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("imaging-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Names of every entry, sorted: to check that no temporary file is left behind.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read scratch dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `process` with the medium preset and default limits.
pub fn process_medium(input: &Path, out: &ScratchDir) -> Processed {
    pixpool_imaging::process(
        input,
        &[Preset::medium()],
        out.path(),
        "job",
        &Limits::default(),
    )
    .unwrap_or_else(|err| panic!("{}: {err:?}", input.display()))
}

/// Reads an output back and decodes it with the `image` crate (independent of our code).
pub fn decode_output(out: &ScratchDir, output: &Output) -> (Vec<u8>, image::DynamicImage) {
    let bytes = std::fs::read(out.path().join(&output.file_name)).expect("read output");
    let image = image::load_from_memory(&bytes).expect("output decodes");
    (bytes, image)
}

/// Mean colour of each cell of a `cols` × `rows` grid, RGB.
pub fn grid_means(image: &image::RgbImage, cols: u32, rows: u32) -> Vec<[f64; 3]> {
    let (w, h) = image.dimensions();
    let mut cells = Vec::new();
    for row in 0..rows {
        for col in 0..cols {
            let (x0, x1) = (col * w / cols, (col + 1) * w / cols);
            let (y0, y1) = (row * h / rows, (row + 1) * h / rows);
            let mut sum = [0f64; 3];
            for y in y0..y1 {
                for x in x0..x1 {
                    let p = image.get_pixel(x, y).0;
                    for c in 0..3 {
                        sum[c] += f64::from(p[c]);
                    }
                }
            }
            let n = f64::from((x1 - x0) * (y1 - y0));
            cells.push(sum.map(|s| s / n));
        }
    }
    cells
}

/// Mean and largest absolute difference between two grids of cell means, over every
/// cell and channel.
pub fn grid_distance(a: &[[f64; 3]], b: &[[f64; 3]]) -> (f64, f64) {
    let diffs: Vec<f64> = a
        .iter()
        .zip(b)
        .flat_map(|(p, q)| (0..3).map(move |c| (p[c] - q[c]).abs()))
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    (mean, diffs.iter().copied().fold(0.0, f64::max))
}
