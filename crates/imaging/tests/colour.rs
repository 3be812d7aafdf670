//! Embedded ICC profiles: pixels come out as sRGB, compared with LittleCMS's rendering.
//!
//! `test-data/04-fallenleaf-p3.jpg` (400×250, Display P3 profile, JPEG q95 4:4:4) and
//! `04-fallenleaf-adobergb.png` (200×125, Adobe RGB (1998) profile) were made from
//! `04-fallenleaf.jpg` with Pillow 13.0 and LittleCMS 2.19: resized (Lanczos), converted
//! from sRGB into the profile (relative colorimetric) and saved with it embedded. The
//! profiles themselves are the standard definitions, written by moxcms (`encode()`).
//!
//! CMYK JPEGs are compared pixel by pixel with what LittleCMS's own `jpgicc` (Debian's
//! `liblcms2-utils`) makes of the same file, run here; the tests that need it say they
//! skip when it is not installed (CI installs it).

mod common;

use std::path::{Path, PathBuf};

use common::{decode_output, grid_distance, grid_means, mean_difference, read};
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

/// `jpgicc` (`PIXPOOL_JPGICC`, else `PATH`), or `None` with the reason printed.
fn jpgicc() -> Option<std::ffi::OsString> {
    let tool = std::env::var_os("PIXPOOL_JPGICC").unwrap_or_else(|| "jpgicc".into());
    let found = std::process::Command::new(&tool).arg("-h").output().is_ok();
    if !found {
        eprintln!("skipping: jpgicc not found (apt-get install liblcms2-utils)");
    }
    found.then_some(tool)
}

/// `jpeg` without its ICC profile (the APP2 `ICC_PROFILE` segments), the rest as it is.
fn strip_icc(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut at = 2;
    loop {
        let marker = jpeg[at + 1];
        if marker == 0xDA {
            out.extend_from_slice(&jpeg[at..]);
            return out;
        }
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        let segment = &jpeg[at..at + 2 + len];
        if !(marker == 0xE2 && segment[4..].starts_with(b"ICC_PROFILE\0")) {
            out.extend_from_slice(segment);
        }
        at += 2 + len;
    }
}

/// `jpeg` with `icc` embedded right after its SOI, in APP2 chunks.
fn embed_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = icc.chunks(65_519).collect();
    let mut out = jpeg[..2].to_vec();
    for (i, chunk) in chunks.iter().enumerate() {
        let len = u16::try_from(2 + 14 + chunk.len()).expect("a chunk fits a segment");
        out.extend_from_slice(&[0xFF, 0xE2]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"ICC_PROFILE\0");
        out.extend_from_slice(&[
            u8::try_from(i + 1).expect("few chunks"),
            u8::try_from(chunks.len()).expect("few chunks"),
        ]);
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// LittleCMS's sRGB rendering of `jpeg` by `jpgicc` (its defaults: the perceptual
/// intent, black-point compensation as LittleCMS applies it for that intent, sRGB out),
/// `input_profile` standing in for a missing embedded one; written at quality 100.
fn littlecms(
    jpgicc: &std::ffi::OsStr,
    jpeg: &[u8],
    name: &str,
    input_profile: &Path,
) -> image::RgbImage {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("colour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (input, output) = (
        dir.join(format!("{name}.jpg")),
        dir.join(format!("{name}-lcms.jpg")),
    );
    std::fs::write(&input, jpeg).expect("write the input");
    let mut profile_arg = std::ffi::OsString::from("-i");
    profile_arg.push(input_profile);
    let status = std::process::Command::new(jpgicc)
        .arg("-q100")
        .arg(profile_arg)
        .arg(&input)
        .arg(&output)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run jpgicc");
    assert!(status.success(), "jpgicc failed on {name}");
    let image = image::open(&output)
        .expect("jpgicc's output decodes")
        .to_rgb8();
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// CMYK JPEGs come out as LittleCMS renders them for libvips (perceptual intent, black
/// point compensated): the corpus's prepress photo (inverted Adobe CMYK with a FOGRA39L
/// profile), the same inks with no profile, and with an RGB profile that cannot apply to
/// inks, both of which take the CMYK profile libvips assumes (`profiles/`).
///
/// Measured 2026-12-04, mean absolute difference from `jpgicc`'s rendering: pixpool 0.3
/// (tagged) and 0.5 (untagged); sharp 0.35.5 on libvips 8.18.7: 1.0 and 4.3; pixpool
/// before, with the relative intent, no compensation and the naive formula when untagged:
/// 6.6 and 11.1.
#[test]
fn cmyk_matches_littlecms() {
    let Some(corpus) = common::corpus() else {
        eprintln!("skipping: ../shared/corpus not found (set PIXPOOL_CORPUS to run this test)");
        return;
    };
    let Some(jpgicc) = jpgicc() else { return };
    let tagged = read(&corpus.join("16-fig-cmyk.jpg"));
    let untagged = strip_icc(&tagged);
    let rgb_profile = std::fs::read(test_data("04-fallenleaf-p3.jpg"))
        .map(|p3| {
            use image::ImageDecoder;
            image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(p3))
                .and_then(|mut d| d.icc_profile())
                .expect("read the P3 profile")
                .expect("a P3 profile")
        })
        .expect("read the P3 file");
    let mistagged = embed_icc(&untagged, &rgb_profile);
    let default_profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/chemical-proof.icc");
    // jpgicc uses the embedded profile when there is one, else `-i`.
    let untagged_reference = littlecms(&jpgicc, &untagged, "untagged", &default_profile);
    for (name, jpeg, reference) in [
        (
            "tagged",
            &tagged,
            littlecms(&jpgicc, &tagged, "tagged", &default_profile),
        ),
        ("untagged", &untagged, untagged_reference.clone()),
        ("mistagged", &mistagged, untagged_reference),
    ] {
        let (width, height) = reference.dimensions();
        let processed = process(jpeg, &[lossless(width)], &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let (_, image) = decode_output(&processed.outputs[0]);
        let ours = image.to_rgb8();
        assert_eq!(
            ours.dimensions(),
            (width, height),
            "{name}: kept at its size"
        );
        let distance = mean_difference(&ours, &reference);
        // The naive conversion (the `image` crate's): what the test tells apart.
        let naive = image::load_from_memory(jpeg).expect("decodes").to_rgb8();
        let naive_distance = mean_difference(&naive, &reference);
        eprintln!("{name}: {distance:.2} from jpgicc; the naive formula {naive_distance:.2}");
        assert!(
            naive_distance > 5.0,
            "{name}: the reference must differ from the naive formula"
        );
        assert!(
            distance < 1.0,
            "{name}: {distance:.2} from LittleCMS's rendering"
        );
    }
}
