//! The real photographs of `shared/corpus` through `process` and `probe`.
//!
//! Expected sizes come from the corpus's own `manifest.json`; expected pixels come from an
//! independent decode with the `image` crate (orientation applied to the full-size source,
//! where the pipeline orients its small outputs instead).

mod common;

use std::path::Path;

use common::{decode_output, grid_distance, grid_means, process_medium, read};
use image::{DynamicImage, ImageDecoder, ImageReader};
use pixpool_imaging::{
    probe, process, Fit, Format, ImagingError, Limits, OutputFormat, Preset, Processed, Progress,
};

/// One photograph as `manifest.json` describes it.
struct Photo {
    name: String,
    format: Format,
    width: u32,
    height: u32,
    orientation: u8,
}

fn photos(corpus: &Path) -> Vec<Photo> {
    let json = std::fs::read_to_string(corpus.join("manifest.json")).expect("read manifest.json");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&json).expect("parse manifest");
    let photos: Vec<Photo> = entries
        .iter()
        .map(|e| Photo {
            name: e["name"].as_str().expect("name").to_owned(),
            format: match e["format"].as_str().expect("format") {
                "JPEG" => Format::Jpeg,
                "PNG" => Format::Png,
                "WEBP" => Format::WebP,
                "GIF" => Format::Gif,
                other => panic!("unexpected format {other}"),
            },
            width: u32::try_from(e["width"].as_u64().expect("width")).expect("u32"),
            height: u32::try_from(e["height"].as_u64().expect("height")).expect("u32"),
            orientation: e["orientation"]
                .as_u64()
                .map_or(1, |o| u8::try_from(o).expect("u8")),
        })
        .collect();
    assert_eq!(photos.len(), 20, "the corpus has 20 photographs");
    photos
}

/// The source as a viewer shows it: decoded by `image`, EXIF orientation applied, alpha
/// flattened onto white, as RGB.
fn reference(path: &Path) -> image::RgbImage {
    let reader = ImageReader::open(path)
        .expect("open")
        .with_guessed_format()
        .expect("guess");
    let mut decoder = reader.into_decoder().expect("decoder");
    let orientation = decoder.orientation().expect("orientation");
    let mut image = DynamicImage::from_decoder(decoder).expect("decode");
    image.apply_orientation(orientation);
    let mut rgba = image.into_rgba8();
    for p in rgba.pixels_mut() {
        let a = u32::from(p[3]);
        for c in 0..3 {
            let v = (u32::from(p[c]) * a + 255 * (255 - a) + 127) / 255;
            p[c] = u8::try_from(v).expect("byte");
        }
    }
    DynamicImage::ImageRgba8(rgba).into_rgb8()
}

/// Largest difference between two grids of cell means, over cells and channels.
fn max_grid_diff(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(p, q)| (0..3).map(move |c| (p[c] - q[c]).abs()))
        .fold(0.0, f64::max)
}

fn medium_dims(photo: &Photo) -> (u32, u32) {
    let (w, h) = if matches!(photo.orientation, 5..=8) {
        (photo.height, photo.width)
    } else {
        (photo.width, photo.height)
    };
    if w <= 800 {
        (w, h)
    } else {
        (800, (f64::from(h) * 800.0 / f64::from(w)).round() as u32)
    }
}

#[test]
fn every_photo_makes_a_medium_jpeg_true_to_the_source() {
    let corpus = corpus_or_skip!();
    let mut timings = Vec::new();
    for photo in photos(&corpus) {
        let path = corpus.join(&photo.name);
        let processed = process_medium(&path);

        assert_eq!(processed.source_format, photo.format, "{}", photo.name);
        let (want_w, want_h) = medium_dims(&photo);
        let [output] = &processed.outputs[..] else {
            panic!("{}: one preset, one output", photo.name);
        };
        assert_eq!(output.preset, "medium");
        assert_eq!(output.format, OutputFormat::Jpeg);
        assert_eq!(output.content_type, "image/jpeg");

        let (bytes, image) = decode_output(output);
        assert_eq!(output.bytes, bytes.len() as u64);
        assert_eq!(
            image::guess_format(bytes).expect("format"),
            image::ImageFormat::Jpeg
        );
        assert_eq!(
            (output.width, output.height),
            (image.width(), image.height())
        );
        assert_eq!(output.width, want_w, "{}", photo.name);
        // Aspect ratio within one pixel of the displayed source's.
        let (src_w, src_h) = (processed.source_width, processed.source_height);
        let exact_h = f64::from(src_h) * f64::from(output.width) / f64::from(src_w);
        assert!(
            (f64::from(output.height) - exact_h).abs() <= 1.0,
            "{}: {}×{} from {src_w}×{src_h}",
            photo.name,
            output.width,
            output.height
        );
        assert_eq!(output.height, want_h, "{}", photo.name);

        // Metadata is not carried over.
        assert!(!contains(bytes, b"Exif\0\0"), "{}: EXIF copied", photo.name);
        assert!(
            !contains(bytes, b"ICC_PROFILE"),
            "{}: ICC copied",
            photo.name
        );

        // Same picture, same place: compare 4×4 grids of mean colour with the reference.
        // The `image` crate applies no ICC profile: the CMYK photo's colours come from
        // its profile, and are checked against LittleCMS instead (below).
        let ours = grid_means(&image.to_rgb8(), 4, 4);
        let theirs = grid_means(&reference(&path), 4, 4);
        let diff = max_grid_diff(&ours, &theirs);
        let tolerance = if photo.name == "16-fig-cmyk.jpg" {
            f64::INFINITY
        } else {
            4.0
        };
        assert!(
            diff < tolerance,
            "{}: grid differs by {diff:.1}",
            photo.name
        );

        timings.push((photo.name, processed.timings, diff));
    }
    eprintln!("per image, ms:                         decode  resize  encode  grid diff");
    for (name, t, diff) in timings {
        eprintln!(
            "  {name:36} {:7.1} {:7.1} {:7.1} {diff:6.2}",
            t.decode_ms, t.resize_ms, t.encode_ms
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn exif_orientation_is_applied() {
    let corpus = corpus_or_skip!();
    // (file, displayed medium size, portrait?)
    let cases = [
        ("01-storm-orient6.jpg", (800, 1200)),
        ("03-wood-orient3.jpg", (800, 600)),
        ("08-path-orient8.jpg", (800, 1280)),
        ("15-kleiber-20mp-orient6.jpg", (800, 1422)),
    ];
    for (name, size) in cases {
        let path = corpus.join(name);
        let processed = process_medium(&path);
        let output = &processed.outputs[0];
        assert_eq!((output.width, output.height), size, "{name}");
        let (_, image) = decode_output(output);

        // Against the source as stored (no orientation), the grids must disagree: this is
        // what makes the check above meaningful for the 180° case, where the size alone
        // cannot tell.
        let ours = grid_means(&image.to_rgb8(), 4, 4);
        let oriented = grid_means(&reference(&path), 4, 4);
        let stored = image::open(&path).expect("decode").into_rgb8();
        let stored = grid_means(&stored, 4, 4);
        let right = max_grid_diff(&ours, &oriented);
        let wrong = max_grid_diff(&ours, &stored);
        assert!(
            right < 4.0 && wrong > 3.0 * right,
            "{name}: oriented {right:.1}, stored {wrong:.1}"
        );
    }
}

#[test]
fn greyscale_stays_one_channel() {
    let corpus = corpus_or_skip!();
    let processed = process_medium(&corpus.join("06-grey-grayscale.jpg"));
    let (bytes, image) = decode_output(&processed.outputs[0]);
    assert_eq!(
        image.color(),
        image::ColorType::L8,
        "written as a 1-channel JPEG"
    );
    // A one-component SOF0: ... 08 <h> <w> 01 — the component count right after the size.
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("baseline frame header");
    assert_eq!(bytes[sof + 9], 1, "one component in the frame header");
}

#[test]
fn transparent_corners_become_white_in_jpeg_and_stay_transparent_in_png() {
    let corpus = corpus_or_skip!();
    let path = corpus.join("18-twowings-alpha.png");
    let presets = [
        Preset::medium(),
        Preset {
            name: "medium-png".to_owned(),
            format: OutputFormat::Png,
            ..Preset::medium()
        },
        Preset {
            name: "small-webp".to_owned(),
            width: 300,
            format: OutputFormat::WebP,
            ..Preset::medium()
        },
    ];
    let processed = process(&read(&path), &presets, &Limits::default()).expect("process");
    let made: Vec<_> = processed
        .outputs
        .iter()
        .map(|o| (o.preset.as_str(), o.format, o.content_type.as_str()))
        .collect();
    assert_eq!(
        made,
        [
            ("medium", OutputFormat::Jpeg, "image/jpeg"),
            ("medium-png", OutputFormat::Png, "image/png"),
            ("small-webp", OutputFormat::WebP, "image/webp"),
        ]
    );

    let (_, jpeg) = decode_output(&processed.outputs[0]);
    let jpeg = jpeg.to_rgb8();
    let (w, h) = jpeg.dimensions();
    for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
        let p = jpeg.get_pixel(x, y).0;
        assert!(
            p.iter().all(|&c| c >= 245),
            "corner ({x},{y}) is {p:?}, not white"
        );
    }

    for output in &processed.outputs[1..] {
        let (_, image) = decode_output(output);
        assert!(image.color().has_alpha(), "{} keeps alpha", output.preset);
        let rgba = image.to_rgba8();
        let (w, h) = rgba.dimensions();
        assert_eq!(
            rgba.get_pixel(0, 0).0[3],
            0,
            "{}: corner transparent",
            output.preset
        );
        assert_eq!(
            rgba.get_pixel(w / 2, h / 2).0[3],
            255,
            "{}: centre opaque",
            output.preset
        );
    }
}

/// Reference means for `16-fig-cmyk.jpg` on a 4×3 grid of LittleCMS's sRGB rendering
/// (`jpgicc -q100` 2.14: its embedded FOGRA39L profile, the perceptual intent, which is
/// libvips' too, with the black-point compensation LittleCMS applies for it), then the
/// mean of each cell. The naive conversion (what the pipeline did before it read
/// profiles) is about 24 away on average; the relative colorimetric rendering without
/// compensation about 6 (`tests/colour.rs` compares every pixel).
const FIG_ICC_GRID: [[f64; 3]; 12] = [
    [141.4, 139.8, 137.9],
    [91.7, 55.8, 44.8],
    [168.1, 67.4, 49.3],
    [181.2, 131.7, 124.1],
    [136.4, 129.3, 127.0],
    [193.2, 61.6, 31.2],
    [195.1, 71.7, 44.3],
    [156.8, 41.6, 25.3],
    [143.9, 139.6, 134.8],
    [168.7, 107.9, 99.1],
    [159.1, 52.5, 34.8],
    [147.4, 87.3, 78.2],
];

#[test]
fn cmyk_colours_match_a_colour_managed_reference() {
    let corpus = corpus_or_skip!();
    let processed = process_medium(&corpus.join("16-fig-cmyk.jpg"));
    let (_, image) = decode_output(&processed.outputs[0]);
    let (mean, max) = grid_distance(&grid_means(&image.to_rgb8(), 4, 3), &FIG_ICC_GRID);
    eprintln!("CMYK vs ICC reference: mean abs diff {mean:.2}, max {max:.2}");
    assert!(mean < 1.5 && max < 4.0, "mean {mean:.2}, max {max:.2}");
}

#[test]
fn cover_makes_a_centred_square_thumbnail() {
    let corpus = corpus_or_skip!();
    let path = corpus.join("02-blinds.jpg"); // 1920×1200
    let thumb = Preset {
        name: "thumb".to_owned(),
        width: 200,
        height: Some(200),
        fit: Fit::Cover,
        format: OutputFormat::Jpeg,
        alternatives: Vec::new(),
        quality: 80,
        alpha_format: None,
    };
    let processed = process(&read(&path), &[thumb], &Limits::default()).expect("process");
    let output = &processed.outputs[0];
    assert_eq!(
        (
            output.width,
            output.height,
            output.preset.as_str(),
            output.format
        ),
        (200, 200, "thumb", OutputFormat::Jpeg)
    );

    // The centre 1200×1200 of the source, which is what the thumbnail must show.
    let source = reference(&path);
    let centre = image::imageops::crop_imm(&source, 360, 0, 1200, 1200).to_image();
    let (_, image) = decode_output(output);
    let diff = max_grid_diff(
        &grid_means(&image.to_rgb8(), 4, 4),
        &grid_means(&centre, 4, 4),
    );
    assert!(
        diff < 4.0,
        "thumbnail differs from the centre crop by {diff:.1}"
    );
    // And it is not simply the whole image squashed.
    let squashed = max_grid_diff(
        &grid_means(&image.to_rgb8(), 4, 4),
        &grid_means(&source, 4, 4),
    );
    assert!(squashed > diff, "centre {diff:.1}, whole {squashed:.1}");
}

#[test]
fn cover_on_a_portrait_rotated_source() {
    let corpus = corpus_or_skip!();
    let banner = Preset {
        name: "banner".to_owned(),
        width: 600,
        height: Some(200),
        fit: Fit::Cover,
        format: OutputFormat::Jpeg,
        alternatives: Vec::new(),
        quality: 80,
        alpha_format: None,
    };
    let path = corpus.join("01-storm-orient6.jpg");
    let processed = process(&read(&path), &[banner], &Limits::default()).expect("process");
    let output = &processed.outputs[0];
    assert_eq!((output.width, output.height), (600, 200));
    // Displayed 1280×1920: the banner shows the middle 1280×427 strip.
    let source = reference(&path);
    let strip = image::imageops::crop_imm(&source, 0, 746, 1280, 427).to_image();
    let (_, image) = decode_output(output);
    let diff = max_grid_diff(
        &grid_means(&image.to_rgb8(), 3, 1),
        &grid_means(&strip, 3, 1),
    );
    assert!(
        diff < 4.0,
        "banner differs from the centre strip by {diff:.1}"
    );
}

#[test]
fn cascaded_presets_match_presets_made_from_the_source() {
    let corpus = corpus_or_skip!();
    let path = corpus.join("09-picosdeeuropa-progressive.jpg"); // 3264×2448
    let large = Preset {
        name: "large".to_owned(),
        width: 1600,
        ..Preset::medium()
    };
    let thumb = Preset {
        name: "thumb".to_owned(),
        width: 200,
        height: Some(200),
        fit: Fit::Cover,
        format: OutputFormat::Jpeg,
        alternatives: Vec::new(),
        quality: 90,
        alpha_format: None,
    };
    let input = read(&path);
    // Given smallest first on purpose: the pipeline must still go largest first, and
    // report outputs in the order given.
    let presets = [thumb.clone(), Preset::medium(), large];
    let processed: Processed = process(&input, &presets, &Limits::default()).expect("process");
    let sizes: Vec<_> = processed
        .outputs
        .iter()
        .map(|o| (o.preset.as_str(), o.width, o.height))
        .collect();
    assert_eq!(
        sizes,
        [
            ("thumb", 200, 200),
            ("medium", 800, 600),
            ("large", 1600, 1200)
        ]
    );

    let direct = process(&input, &[thumb], &Limits::default()).expect("process");
    let (_, cascaded) = decode_output(&processed.outputs[0]);
    let (_, direct) = decode_output(&direct.outputs[0]);
    let (a, b) = (cascaded.to_rgb8(), direct.to_rgb8());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    let mean = total as f64 / a.as_raw().len() as f64;
    assert!(
        mean < 3.0,
        "cascaded thumbnail differs by {mean:.2} per sample"
    );
}

#[test]
fn probe_reads_every_header() {
    let corpus = corpus_or_skip!();
    for photo in photos(&corpus) {
        let bytes = std::fs::read(corpus.join(&photo.name)).expect("read");
        let whole = probe(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", photo.name));
        assert_eq!(
            (whole.format, whole.width, whole.height),
            (photo.format, photo.width, photo.height),
            "{}",
            photo.name
        );
        let frames = if photo.format == Format::Gif {
            None
        } else {
            Some(1)
        };
        assert_eq!(whole.frames, frames, "{}", photo.name);

        let head = &bytes[..bytes.len().min(64 * 1024)];
        match probe(head) {
            Ok(got) => assert_eq!(got, whole, "{}", photo.name),
            // Only the CMYK JPEG carries a 247 KB ICC profile before its frame header.
            Err(ImagingError::ProbeIncomplete { format, given }) => {
                assert_eq!(photo.name, "16-fig-cmyk.jpg", "{format:?} {given}");
            }
            Err(e) => panic!("{}: {e:?}", photo.name),
        }
    }
}

#[test]
fn alpha_format_keeps_transparency_only_for_sources_that_have_it() {
    let corpus = corpus_or_skip!();
    let keep = Preset {
        name: "keep".to_owned(),
        alpha_format: Some(OutputFormat::Png),
        ..Preset::medium()
    };
    for (photo, format) in [
        ("18-twowings-alpha.png", OutputFormat::Png),
        ("17-aqua.png", OutputFormat::Jpeg),
        ("04-fallenleaf.jpg", OutputFormat::Jpeg),
    ] {
        let mut seen = Vec::new();
        let mut handed_over = Vec::new();
        let processed = pixpool_imaging::process_with_progress(
            &read(&corpus.join(photo)),
            std::slice::from_ref(&keep),
            &Limits::default(),
            &mut |p| {
                seen.push(format!("{p:?}"));
                if let Progress::Output { index, output } = p {
                    handed_over.push((index, output.clone()));
                }
                Ok(())
            },
        )
        .expect("process");
        let output = &processed.outputs[0];
        assert_eq!(output.format, format, "{photo}");
        assert_eq!(output.content_type, format.content_type(), "{photo}");
        assert_eq!(seen.len(), 2, "decoded + one output reported: {seen:?}");
        assert!(
            seen[0].starts_with("Decoded") && seen[1].starts_with("Output"),
            "{seen:?}"
        );
        // What the callback was handed is what the call returns, bytes and all.
        assert_eq!(handed_over, [(0, output.clone())], "{photo}");
        assert_eq!(output.bytes, output.data.len() as u64, "{photo}");
    }
}

#[test]
fn every_jpeg_output_stays_within_the_stated_psnr_bound() {
    let corpus = corpus_or_skip!();
    // PNG output: the JPEG encoder's own loss does not count, only the decode's.
    let lossless = [Preset {
        format: OutputFormat::Png,
        ..Preset::medium()
    }];
    let mut worst = (f64::INFINITY, String::new());
    for photo in photos(&corpus).iter().filter(|p| p.format == Format::Jpeg) {
        let input = read(&corpus.join(&photo.name));
        let processed = process(&input, &lossless, &Limits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", photo.name));
        let output = &processed.outputs[0].data;
        let psnr = pixpool_imaging::stages::psnr_against_whole_decode(&input, output)
            .unwrap_or_else(|e| panic!("{}: {e}", photo.name));
        eprintln!("{:36} {psnr:6.2} dB", photo.name);
        if psnr < worst.0 {
            worst = (psnr, photo.name.clone());
        }
    }
    assert!(
        worst.0 >= pixpool_imaging::SHRINK_ON_LOAD_MIN_PSNR_DB,
        "{} at {:.2} dB, under the stated {} dB",
        worst.1,
        worst.0,
        pixpool_imaging::SHRINK_ON_LOAD_MIN_PSNR_DB
    );
}
