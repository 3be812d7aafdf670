//! The hostile inputs of `shared/corpus/bad`, and misuse by the caller.

mod common;

use std::time::{Duration, Instant};

use common::{decode_output, process_medium, ScratchDir};
use pixpool_imaging::{probe, process, Format, ImagingError, Limits, Preset};

fn read_bad(corpus: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(corpus.join("bad").join(name)).expect("read bad file")
}

#[test]
fn sniff_trusts_content_not_names() {
    let corpus = corpus_or_skip!();
    let cases = [
        ("not-an-image.jpg", None),
        ("empty.jpg", None),
        ("jpeg-named.png", Some(Format::Jpeg)),
        ("truncated.jpg", Some(Format::Jpeg)),
        ("png-bomb-50000x50000-header.png", Some(Format::Png)),
        ("gif-5000-frames.gif", Some(Format::Gif)),
        ("tiny-8x8.jpg", Some(Format::Jpeg)),
    ];
    for (name, want) in cases {
        let bytes = read_bad(&corpus, name);
        assert_eq!(Format::sniff(&bytes), want, "{name}");
    }
}

#[test]
fn probe_reports_bomb_dimensions_from_the_header() {
    let corpus = corpus_or_skip!();
    let cases = [
        ("png-bomb-50000x50000-header.png", 50_000, 50_000),
        ("png-bomb-50000x50000-full.png", 50_000, 50_000),
        ("jpeg-65500x65500.jpg", 65_500, 65_500),
    ];
    for (name, w, h) in cases {
        let bytes = read_bad(&corpus, name);
        let head = &bytes[..bytes.len().min(64 * 1024)];
        let started = Instant::now();
        let got = probe(head).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{name}: header only"
        );
        assert_eq!((got.width, got.height), (w, h), "{name}");
        let err = Limits::default()
            .check_dimensions(got.width, got.height)
            .expect_err("a bomb is over the limits");
        assert!(err.is_input_error() && err.is_limit_exceeded(), "{err:?}");
    }

    let gif = probe(&read_bad(&corpus, "gif-5000-frames.gif")).expect("probe gif");
    assert_eq!(
        (gif.format, gif.width, gif.height),
        (Format::Gif, 1000, 1000)
    );
    let truncated = probe(&read_bad(&corpus, "truncated.jpg")).expect("header is intact");
    assert_eq!((truncated.width, truncated.height), (1920, 1200));
    for name in ["not-an-image.jpg", "empty.jpg"] {
        let err = probe(&read_bad(&corpus, name)).expect_err(name);
        assert!(matches!(err, ImagingError::Sniff), "{name}: {err:?}");
        assert!(err.is_input_error());
    }
}

#[test]
fn non_images_are_refused_as_input_errors() {
    let corpus = corpus_or_skip!();
    for name in ["not-an-image.jpg", "empty.jpg"] {
        let out = ScratchDir::new("non-image");
        let err = process(
            &corpus.join("bad").join(name),
            &[Preset::medium()],
            out.path(),
            "job",
            &Limits::default(),
        )
        .expect_err(name);
        assert!(matches!(err, ImagingError::Sniff), "{name}: {err:?}");
        assert!(err.is_input_error());
        assert!(out.entries().is_empty(), "{name}: nothing written");
    }
}

#[test]
fn truncated_jpeg_is_an_input_error() {
    // The `image` crate on its own decodes this file "successfully", grey below the cut.
    let corpus = corpus_or_skip!();
    let out = ScratchDir::new("truncated");
    let err = process(
        &corpus.join("bad/truncated.jpg"),
        &[Preset::medium()],
        out.path(),
        "job",
        &Limits::default(),
    )
    .expect_err("a truncated JPEG must fail");
    assert!(
        matches!(
            err,
            ImagingError::DecodeTruncated {
                format: Format::Jpeg
            }
        ),
        "{err:?}"
    );
    assert!(err.is_input_error());
    assert!(out.entries().is_empty());
}

#[test]
fn jpeg_named_png_is_processed_as_jpeg() {
    let corpus = corpus_or_skip!();
    let out = ScratchDir::new("named");
    let processed = process_medium(&corpus.join("bad/jpeg-named.png"), &out);
    assert_eq!(processed.source_format, Format::Jpeg);
    assert_eq!(
        (processed.outputs[0].width, processed.outputs[0].height),
        (800, 500)
    );
}

#[test]
fn tiny_image_is_not_upscaled() {
    let corpus = corpus_or_skip!();
    let out = ScratchDir::new("tiny");
    let thumb = Preset {
        name: "thumb".to_owned(),
        width: 200,
        height: Some(200),
        fit: pixpool_imaging::Fit::Cover,
        ..Preset::medium()
    };
    let processed = process(
        &corpus.join("bad/tiny-8x8.jpg"),
        &[Preset::medium(), thumb],
        out.path(),
        "job",
        &Limits::default(),
    )
    .expect("process");
    for output in &processed.outputs {
        assert_eq!((output.width, output.height), (8, 8), "{}", output.preset);
        let (_, image) = decode_output(&out, output);
        assert_eq!((image.width(), image.height()), (8, 8));
    }
}

#[test]
fn gif_with_5000_frames_reads_only_the_first() {
    let corpus = corpus_or_skip!();
    let out = ScratchDir::new("gif");
    let started = Instant::now();
    let processed = process_medium(&corpus.join("bad/gif-5000-frames.gif"), &out);
    let elapsed = started.elapsed();
    // Sharp takes 16 ms; compositing every frame would take minutes and 20 GB.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        processed.timings.decode_ms < 500.0,
        "{:?}",
        processed.timings
    );
    let output = &processed.outputs[0];
    assert_eq!((output.width, output.height), (800, 800));
    // Frame 1 is one white pixel on a transparent screen: all white once flattened.
    let (_, image) = decode_output(&out, output);
    let rgb = image.to_rgb8();
    assert!(rgb.pixels().all(|p| p.0.iter().all(|&c| c >= 250)));
}

#[test]
fn caller_mistakes_are_server_errors() {
    let corpus = corpus_or_skip!();
    let input = corpus.join("bad/tiny-8x8.jpg");
    let out = ScratchDir::new("caller");

    let missing = process(
        &corpus.join("bad/does-not-exist.jpg"),
        &[Preset::medium()],
        out.path(),
        "job",
        &Limits::default(),
    )
    .expect_err("missing input");
    assert!(
        matches!(missing, ImagingError::ReadInput { .. }),
        "{missing:?}"
    );
    assert!(!missing.is_input_error());

    let no_dir = process(
        &input,
        &[Preset::medium()],
        &out.path().join("absent"),
        "job",
        &Limits::default(),
    )
    .expect_err("missing output dir");
    assert!(
        matches!(no_dir, ImagingError::WriteOutput { .. }),
        "{no_dir:?}"
    );
    assert!(!no_dir.is_input_error());

    for stem in ["", "../escape", "a/b", ".hidden"] {
        let err = process(
            &input,
            &[Preset::medium()],
            out.path(),
            stem,
            &Limits::default(),
        )
        .expect_err(stem);
        assert!(matches!(err, ImagingError::ValidateStem { .. }), "{err:?}");
        assert!(!err.is_input_error());
    }
    assert!(out.entries().is_empty());
}

#[test]
fn animation_frames_are_counted_without_decoding_and_limited() {
    let corpus = corpus_or_skip!();
    let started = std::time::Instant::now();
    let n = pixpool_imaging::count_frames(
        &corpus.join("bad/gif-5000-frames.gif"),
        pixpool_imaging::Format::Gif,
    )
    .expect("count");
    assert_eq!(n, 5000);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let err = Limits::default()
        .check_frames(n, 1000, 1000)
        .expect_err("over the limit");
    assert!(err.is_input_error() && err.is_limit_exceeded(), "{err}");
    assert!(err.to_string().contains("frame count"), "{err}");
    let still = pixpool_imaging::count_frames(
        &corpus.join("20-raindrops.gif"),
        pixpool_imaging::Format::Gif,
    )
    .expect("count");
    assert_eq!(still, 1);
    assert_eq!(
        pixpool_imaging::count_frames(
            &corpus.join("19-aitzgorri.webp"),
            pixpool_imaging::Format::WebP
        )
        .expect("count"),
        1
    );
}
