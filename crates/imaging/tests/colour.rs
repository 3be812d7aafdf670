//! Embedded ICC profiles: pixels come out as sRGB, compared with LittleCMS's rendering.
//!
//! `test-data/04-fallenleaf-p3.jpg` (400×250, Display P3 profile, JPEG q95 4:4:4) and
//! `04-fallenleaf-adobergb.png` (200×125, Adobe RGB (1998) profile) were made from
//! `04-fallenleaf.jpg` with Pillow 13.0 and LittleCMS 2.19: resized (Lanczos), converted
//! from sRGB into the profile (relative colorimetric) and saved with it embedded. The
//! profiles themselves are the standard definitions, written by moxcms (`encode()`).

mod common;

use std::path::{Path, PathBuf};

use common::{decode_output, grid_distance, grid_means, read};
use pixpool_imaging::{process, Limits, Preset};

/// Mean colours on an 8×5 grid of LittleCMS's sRGB rendering of the P3 file
/// (`buildTransform(<P3>, sRGB, "RGB", "RGB", renderingIntent=1)`, then
/// `resize((8, 5), Image.BOX)`). The Adobe RGB file renders within one level of it
/// (both hold the same sRGB picture); read with its profile ignored, either file is
/// 6.7 to 6.8 away on average and 15 to 24 at most.
const FALLENLEAF_SRGB_GRID: [[f64; 3]; 40] = [
    [81.0, 56.0, 52.0],
    [87.0, 55.0, 51.0],
    [86.0, 60.0, 57.0],
    [84.0, 51.0, 46.0],
    [96.0, 60.0, 48.0],
    [98.0, 62.0, 51.0],
    [76.0, 48.0, 35.0],
    [132.0, 87.0, 41.0],
    [120.0, 78.0, 40.0],
    [150.0, 87.0, 47.0],
    [187.0, 61.0, 40.0],
    [186.0, 70.0, 42.0],
    [176.0, 113.0, 55.0],
    [202.0, 137.0, 73.0],
    [163.0, 97.0, 42.0],
    [112.0, 69.0, 37.0],
    [190.0, 139.0, 64.0],
    [201.0, 139.0, 65.0],
    [204.0, 124.0, 68.0],
    [219.0, 151.0, 76.0],
    [247.0, 187.0, 111.0],
    [243.0, 175.0, 101.0],
    [166.0, 105.0, 63.0],
    [189.0, 127.0, 58.0],
    [143.0, 90.0, 43.0],
    [185.0, 125.0, 59.0],
    [241.0, 177.0, 97.0],
    [205.0, 148.0, 83.0],
    [202.0, 134.0, 60.0],
    [231.0, 143.0, 73.0],
    [176.0, 102.0, 55.0],
    [137.0, 90.0, 44.0],
    [165.0, 96.0, 36.0],
    [131.0, 78.0, 35.0],
    [166.0, 111.0, 48.0],
    [188.0, 128.0, 78.0],
    [119.0, 78.0, 46.0],
    [151.0, 114.0, 76.0],
    [169.0, 128.0, 64.0],
    [128.0, 94.0, 36.0],
];

fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-data")
        .join(name)
}

/// A lossless preset at the source's own size: what comes out is the decoded,
/// colour-converted pixels themselves.
fn lossless(width: u32) -> Preset {
    format!("same:{width}:png").parse().expect("a valid preset")
}

#[test]
fn rgb_profiles_are_converted_to_srgb() {
    for (name, width) in [
        ("04-fallenleaf-p3.jpg", 400),
        ("04-fallenleaf-adobergb.png", 200),
    ] {
        let input = test_data(name);
        let processed = process(&read(&input), &[lossless(width)], &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let (_, image) = decode_output(&processed.outputs[0]);
        assert_eq!(image.width(), width, "{name}: kept at its size");
        let (mean, max) = grid_distance(&grid_means(&image.to_rgb8(), 8, 5), &FALLENLEAF_SRGB_GRID);
        // The same file read as if it were sRGB (the `image` crate applies no profile):
        // what the test tells apart from a conversion.
        let raw = image::open(&input).expect("decodes").to_rgb8();
        let (raw_mean, raw_max) = grid_distance(&grid_means(&raw, 8, 5), &FALLENLEAF_SRGB_GRID);
        eprintln!(
            "{name}: converted {mean:.2} / {max:.2}, profile ignored {raw_mean:.2} / {raw_max:.2}"
        );
        assert!(raw_mean > 5.0, "{name}: the file must differ from sRGB");
        assert!(
            mean < 1.0 && max < 3.0,
            "{name}: mean {mean:.2}, max {max:.2}"
        );
    }
}
