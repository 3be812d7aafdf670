//! HEIC/HEIF input, in the build with libheif (`--features heif`, part of native-codecs):
//! test files are made here from test-data photos with Debian's `heif-enc`
//! (libheif-examples; `PIXPOOL_HEIF_ENC`, else `PATH`), and rendered next to the JPEG
//! they were made from.
//!
//! - a Display P3 photo: its ICC profile is honoured (ignored, the picture would be
//!   6.7 levels off on average, see `colour.rs`);
//! - a photo whose EXIF says "rotate 90°": heif-enc 1.15 keeps the EXIF and writes no
//!   `irot`, so the EXIF orientation is the one to apply, once.
#![cfg(feature = "heif")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::read;
use pixpool_imaging::{probe, process, Format, Limits, Preset};

fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-data")
        .join(name)
}

/// `jpeg` encoded as HEIC by heif-enc at quality 90.
fn heic_of(jpeg: &Path) -> Vec<u8> {
    let heif_enc = std::env::var_os("PIXPOOL_HEIF_ENC").unwrap_or_else(|| "heif-enc".into());
    let out = std::env::temp_dir().join(format!(
        "pixpool-heif-{}-{}.heic",
        std::process::id(),
        jpeg.file_stem().and_then(|s| s.to_str()).unwrap_or("x")
    ));
    let status = Command::new(&heif_enc)
        .args(["-q", "90", "-o"])
        .arg(&out)
        .arg(jpeg)
        .status()
        .unwrap_or_else(|e| panic!("{heif_enc:?} (apt-get install libheif-examples): {e}"));
    assert!(status.success(), "heif-enc failed on {}", jpeg.display());
    let bytes = read(&out);
    let _ = std::fs::remove_file(&out);
    bytes
}

fn render(input: &[u8], width: u32) -> image::RgbImage {
    let preset: Preset = format!("same:{width}:png").parse().expect("a preset");
    let done = process(input, &[preset], &Limits::default()).expect("processed");
    image::load_from_memory(&done.outputs[0].data)
        .expect("a PNG")
        .to_rgb8()
}

fn mean_difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn a_display_p3_heic_comes_out_as_the_same_srgb_picture_as_its_jpeg() {
    let jpeg_path = test_data("04-fallenleaf-p3.jpg");
    let heic = heic_of(&jpeg_path);
    assert_eq!(Format::sniff(&heic), Some(Format::Heif));
    let head = &heic[..heic.len().min(64 * 1024)];
    let probed = probe(head).expect("the door reads its size");
    assert_eq!((probed.width, probed.height), (400, 250));
    let from_heic = render(&heic, 400);
    let from_jpeg = render(&read(&jpeg_path), 400);
    let d = mean_difference(&from_heic, &from_jpeg);
    assert!(d < 3.0, "{d:.2} levels from the JPEG's sRGB rendering");
}

#[test]
fn a_heic_with_an_exif_turn_and_no_irot_is_turned_once() {
    let jpeg_path = test_data("01-storm-orient6.jpg");
    let heic = heic_of(&jpeg_path);
    let from_heic = render(&heic, 320);
    let from_jpeg = render(&read(&jpeg_path), 320);
    assert_eq!(from_heic.dimensions(), (320, 480), "displayed portrait");
    let d = mean_difference(&from_heic, &from_jpeg);
    assert!(d < 4.0, "{d:.2} levels from the JPEG turned the same way");
}

#[test]
fn a_heic_over_the_limits_is_refused_on_its_header() {
    let heic = heic_of(&test_data("04-fallenleaf-p3.jpg"));
    let limits = Limits {
        max_pixels: 400 * 250 - 1,
        ..Limits::default()
    };
    let preset: Preset = "x:100:png".parse().expect("a preset");
    let err = process(&heic, &[preset], &limits).expect_err("over the pixel limit");
    assert!(err.is_limit_exceeded(), "{err}");
}
