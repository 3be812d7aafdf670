//! JPEG codings beyond Huffman DCT: lossless (SOF3) and arithmetic-coded (SOF9, SOF10)
//! files are decoded in every build that can (lossless: every build; arithmetic: the
//! default and native-codecs builds, through libjpeg), and refused with a named coding
//! where a build cannot.
//!
//! Test files (`test-data/`): `lossless-rgb.jpg` (64×48, 8-bit RGB) and
//! `lossless-grey12.jpg` (64×48, 12-bit grey) were written by
//! `tests/make_lossless_jpeg.py` from the formulas repeated below; `04-fallenleaf-arith.jpg`,
//! `04-fallenleaf-arith-progressive.jpg` and `04-fallenleaf-huffman.jpg` by libjpeg-turbo
//! 2.1.5's `cjpeg -quality 90` (`-arithmetic`, `-arithmetic -progressive`, neither) from
//! one PPM (`djpeg -scale 1/8` of `04-fallenleaf.jpg`): the same DCT coefficients
//! entropy-coded three ways.

mod common;

use std::path::PathBuf;

use common::{mean_difference, read};
use pixpool_imaging::{process, Limits, Preset};

fn test_data(name: &str) -> Vec<u8> {
    read(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../test-data")
            .join(name),
    )
}

/// A PNG preset `width` wide: the decoded pixels themselves when that is the width.
fn png(width: u32) -> Preset {
    format!("same:{width}:png").parse().expect("a valid preset")
}

/// The one output of `input` through `preset`, decoded.
fn render(input: &[u8], preset: Preset) -> image::DynamicImage {
    let done = process(input, &[preset], &Limits::default()).expect("processed");
    image::load_from_memory(&done.outputs[0].data).expect("a PNG")
}

#[test]
fn a_lossless_rgb_jpeg_decodes_to_its_exact_samples() {
    let got = render(&test_data("lossless-rgb.jpg"), png(64)).to_rgb8();
    assert_eq!(got.dimensions(), (64, 48));
    for (x, y, px) in got.enumerate_pixels() {
        let want = [
            (x * 255 / 63) as u8,
            (y * 255 / 47) as u8,
            (((x ^ y) * 4) & 0xff) as u8,
        ];
        assert_eq!(px.0, want, "at {x},{y}");
    }
}

#[test]
fn a_12_bit_lossless_grey_jpeg_is_scaled_to_8_bits() {
    let got = render(&test_data("lossless-grey12.jpg"), png(64)).to_luma8();
    for (x, y, px) in got.enumerate_pixels() {
        let v = (x * 4095 / 63 + (y / 8) * 300) % 4096;
        let want = ((v * 255 + 2047) / 4095) as u8;
        assert_eq!(px.0[0], want, "at {x},{y}");
    }
}

#[test]
fn a_lossless_jpegs_exif_orientation_is_applied() {
    // APP1 with a little-endian TIFF holding Orientation = 6 (rotate 90° clockwise),
    // right after SOI.
    let mut app1 =
        b"\xff\xe1\x00\x22Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0"
            .to_vec();
    assert_eq!(app1.len(), 2 + 0x22);
    let plain = test_data("lossless-rgb.jpg");
    let mut rotated = plain[..2].to_vec();
    rotated.append(&mut app1);
    rotated.extend_from_slice(&plain[2..]);
    let got = render(&rotated, png(48)).to_rgb8();
    assert_eq!(got.dimensions(), (48, 64), "displayed portrait");
    // The stored top-left corner (black red, black green) is now top-right.
    let stored = render(&plain, png(64)).to_rgb8();
    assert_eq!(got.get_pixel(47, 0), stored.get_pixel(0, 0));
    assert_eq!(got.get_pixel(0, 0), stored.get_pixel(0, 47));
}

#[test]
fn arithmetic_coded_jpegs_decode_like_their_huffman_twin_at_every_scale() {
    let twin = test_data("04-fallenleaf-huffman.jpg");
    for name in [
        "04-fallenleaf-arith.jpg",
        "04-fallenleaf-arith-progressive.jpg",
    ] {
        let arith = test_data(name);
        if !cfg!(feature = "libjpeg") {
            let err = process(&arith, &[png(320)], &Limits::default()).expect_err("refused");
            assert!(err.is_unsupported(), "{name}: {err:?}");
            assert!(err.to_string().contains("arithmetic-coded"), "{err}");
            continue;
        }
        // Whole (320 px), and 80 px: a 1/4-scale decode.
        for width in [320, 80] {
            let got = render(&arith, png(width)).to_rgb8();
            let want = render(&twin, png(width)).to_rgb8();
            let d = mean_difference(&got, &want);
            // The same coefficients; only the decoders' IDCT and upsampling differ.
            assert!(d < 1.0, "{name} at {width} px: {d:.2} levels from its twin");
        }
    }
}
