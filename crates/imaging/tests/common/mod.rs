//! Helpers shared by the integration tests: the corpus location, running the pipeline,
//! decoding what it made.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use pixpool_imaging::{ImagingError, Limits, Output, Preset, Processed, Progress};

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

/// Reads an input file whole, as the worker hands it over.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Runs `process` on the file at `input` with the medium preset and default limits.
pub fn process_medium(input: &Path) -> Processed {
    pixpool_imaging::process(&read(input), &[Preset::medium()], &Limits::default())
        .unwrap_or_else(|err| panic!("{}: {err:?}", input.display()))
}

/// Runs `process_with_progress` and returns its result with the name of every preset
/// whose output was reported: to check that nothing is handed over after an error.
pub fn process_reporting(
    input: &[u8],
    presets: &[Preset],
    limits: &Limits,
) -> (Result<Processed, ImagingError>, Vec<String>) {
    let mut reported = Vec::new();
    let result = pixpool_imaging::process_with_progress(input, presets, limits, &mut |p| {
        if let Progress::Output { output, .. } = p {
            reported.push(output.preset.clone());
        }
        Ok(())
    });
    (result, reported)
}

/// Decodes an output's bytes with the `image` crate (independent of our code).
pub fn decode_output(output: &Output) -> (&[u8], image::DynamicImage) {
    let image = image::load_from_memory(&output.data).expect("output decodes");
    (&output.data, image)
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

/// Mean absolute difference per sample of two RGB images of one size.
pub fn mean_difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}
