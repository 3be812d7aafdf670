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

use common::{mean_difference, read};
use pixpool_imaging::{probe, process, Format, Limits, Preset};

fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-data")
        .join(name)
}

/// `jpeg` encoded as HEIC by heif-enc at quality 90.
fn heic_of(jpeg: &Path) -> Vec<u8> {
    let heif_enc = std::env::var_os("PIXPOOL_HEIF_ENC").unwrap_or_else(|| "heif-enc".into());
    // Unique per call: the tests run in parallel, some on the same photo.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!(
        "pixpool-heif-{}-{n}-{}.heic",
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

/// The offset and length of each box of `data` (from `from` to its end): (type, start,
/// header length, size).
fn boxes(data: &[u8], from: usize, to: usize) -> Vec<([u8; 4], usize, usize, usize)> {
    let (mut out, mut at) = (Vec::new(), from);
    while at + 8 <= to {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().expect("4 bytes");
        assert!(
            size >= 8 && at + size <= to,
            "a plain box layout (no 64-bit sizes)"
        );
        out.push((kind, at, 8, size));
        at += size;
    }
    out
}

fn find(list: &[([u8; 4], usize, usize, usize)], kind: &[u8; 4]) -> (usize, usize) {
    let (_, at, _, size) = *list.iter().find(|b| &b.0 == kind).expect("the box");
    (at, size)
}

fn add_to_u32(data: &mut [u8], at: usize, delta: u32) {
    let v = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) + delta;
    data[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// `heic` (as heif-enc 1.15 writes it: one `ipma` entry, 1-byte associations, 4-byte
/// `iloc` fields) with an `irot` of `angle` × 90° anticlockwise added to the primary
/// image's properties, as an iPhone writes one: the boxes around it grow and the
/// `iloc` positions of what follows move by as much.
fn with_irot(heic: &[u8], angle: u8) -> Vec<u8> {
    let irot = [0, 0, 0, 9, b'i', b'r', b'o', b't', angle];
    let top = boxes(heic, 0, heic.len());
    let (meta, meta_size) = find(&top, b"meta");
    let inner = boxes(heic, meta + 12, meta + meta_size);
    let (iprp, iprp_size) = find(&inner, b"iprp");
    let (iloc, _) = find(&inner, b"iloc");
    let props = boxes(heic, iprp + 8, iprp + iprp_size);
    let (ipco, ipco_size) = find(&props, b"ipco");
    let (ipma, ipma_size) = find(&props, b"ipma");
    let count = boxes(heic, ipco + 8, ipco + ipco_size).len();
    // ipma v0: entry count (4), item id (2), association count (1), associations.
    let associations = ipma + 12 + 4 + 2;
    assert_eq!(
        u32::from_be_bytes(heic[ipma + 12..ipma + 16].try_into().expect("4")),
        1
    );
    let mut out = heic[..ipco + ipco_size].to_vec();
    out.extend_from_slice(&irot);
    out.extend_from_slice(&heic[ipco + ipco_size..ipma + ipma_size]);
    // Essential, property index `count + 1` (1-based).
    out.push(0x80 | u8::try_from(count + 1).expect("few properties"));
    out.extend_from_slice(&heic[ipma + ipma_size..]);
    let delta = irot.len() + 1;
    let shifted = |at: usize| {
        // `ipma` starts right where the `irot` goes: it moves too.
        if at >= ipco + ipco_size {
            at + irot.len()
        } else {
            at
        }
    };
    for at in [meta, iprp] {
        add_to_u32(&mut out, at, delta as u32);
    }
    add_to_u32(&mut out, ipco, irot.len() as u32);
    add_to_u32(&mut out, shifted(ipma), 1);
    out[shifted(associations)] += 1;
    // iloc v0 with 4-byte offset, length and base offset fields: every item lies after
    // the `meta` box, `delta` further on now.
    assert_eq!(
        &out[iloc + 12..iloc + 14],
        [0x44, 0x40],
        "4-byte iloc fields"
    );
    let items = u16::from_be_bytes([out[iloc + 14], out[iloc + 15]]);
    let mut at = iloc + 16;
    for _ in 0..items {
        // item id (2), data reference index (2), base offset (4), extent count (2).
        add_to_u32(&mut out, at + 4, delta as u32);
        let extents = usize::from(u16::from_be_bytes([out[at + 8], out[at + 9]]));
        at += 10 + extents * 8;
    }
    out
}

#[test]
fn an_irot_is_applied_and_the_exif_turn_then_ignored() {
    let jpeg_path = test_data("01-storm-orient6.jpg");
    let heic = heic_of(&jpeg_path);
    // 270° anticlockwise is the EXIF's 90° clockwise: the iPhone way, both present.
    let turned = with_irot(&heic, 3);
    let from_heic = render(&turned, 320);
    let from_jpeg = render(&read(&jpeg_path), 320);
    assert_eq!(from_heic.dimensions(), (320, 480), "turned once, not twice");
    let d = mean_difference(&from_heic, &from_jpeg);
    assert!(d < 4.0, "{d:.2} levels from the JPEG turned the same way");
    // Half a turn by `irot` alone: upside down, not the EXIF's quarter.
    let upside_down = render(&with_irot(&heic, 2), 320);
    assert_eq!(upside_down.dimensions(), (320, 213));
}
