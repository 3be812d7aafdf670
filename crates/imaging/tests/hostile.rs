//! The hostile inputs of `shared/corpus/bad`, and misuse by the caller.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::time::{Duration, Instant};

use common::{decode_output, process_medium, process_reporting};
use pixpool_imaging::{
    probe, process, process_with_progress, Format, ImagingError, Limits, Preset, Progress,
};

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
        let (result, reported) = process_reporting(
            &read_bad(&corpus, name),
            &[Preset::medium()],
            &Limits::default(),
        );
        let err = result.expect_err(name);
        assert!(matches!(err, ImagingError::Sniff), "{name}: {err:?}");
        assert!(err.is_input_error());
        assert!(reported.is_empty(), "{name}: nothing handed over");
    }
}

#[test]
fn truncated_jpeg_is_an_input_error() {
    // The `image` crate on its own decodes this file "successfully", grey below the cut.
    let corpus = corpus_or_skip!();
    let (result, reported) = process_reporting(
        &read_bad(&corpus, "truncated.jpg"),
        &[Preset::medium()],
        &Limits::default(),
    );
    let err = result.expect_err("a truncated JPEG must fail");
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
    assert!(reported.is_empty(), "nothing handed over");
}

#[test]
fn jpeg_named_png_is_processed_as_jpeg() {
    let corpus = corpus_or_skip!();
    let processed = process_medium(&corpus.join("bad/jpeg-named.png"));
    assert_eq!(processed.source_format, Format::Jpeg);
    assert_eq!(
        (processed.outputs[0].width, processed.outputs[0].height),
        (800, 500)
    );
}

#[test]
fn tiny_image_is_not_upscaled() {
    let corpus = corpus_or_skip!();
    let thumb = Preset {
        name: "thumb".to_owned(),
        width: 200,
        height: Some(200),
        fit: pixpool_imaging::Fit::Cover,
        ..Preset::medium()
    };
    let processed = process(
        &read_bad(&corpus, "tiny-8x8.jpg"),
        &[Preset::medium(), thumb],
        &Limits::default(),
    )
    .expect("process");
    for output in &processed.outputs {
        assert_eq!((output.width, output.height), (8, 8), "{}", output.preset);
        let (_, image) = decode_output(output);
        assert_eq!((image.width(), image.height()), (8, 8));
    }
}

#[test]
fn gif_with_5000_frames_reads_only_the_first() {
    let corpus = corpus_or_skip!();
    let input = read_bad(&corpus, "gif-5000-frames.gif");
    let started = Instant::now();
    let processed = process(&input, &[Preset::medium()], &Limits::default()).expect("process");
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
    let (_, image) = decode_output(output);
    let rgb = image.to_rgb8();
    assert!(rgb.pixels().all(|p| p.0.iter().all(|&c| c >= 250)));
}

#[test]
fn caller_mistakes_are_server_errors() {
    let corpus = corpus_or_skip!();
    let input = read_bad(&corpus, "tiny-8x8.jpg");

    // Preset names end up in file names and URLs as they are.
    for name in ["", "../escape", "a/b", ".hidden"] {
        let preset = Preset {
            name: name.to_owned(),
            ..Preset::medium()
        };
        let (result, reported) = process_reporting(&input, &[preset], &Limits::default());
        let err = result.expect_err(name);
        assert!(
            matches!(err, ImagingError::ValidatePreset { .. }),
            "{err:?}"
        );
        assert!(!err.is_input_error());
        assert!(reported.is_empty(), "{name:?}: nothing handed over");
    }
}

#[test]
fn a_sink_that_fails_stops_processing_as_a_server_error() {
    let corpus = corpus_or_skip!();
    let input = read_bad(&corpus, "tiny-8x8.jpg");
    let small = Preset {
        name: "small".to_owned(),
        width: 4,
        ..Preset::medium()
    };
    let presets = [small, Preset::medium()];

    // The first output handed over (the largest: `medium`) cannot be stored.
    let mut reported = Vec::new();
    let err = process_with_progress(&input, &presets, &Limits::default(), &mut |p| {
        if let Progress::Output { output, .. } = p {
            reported.push(output.preset.clone());
            return Err(std::io::Error::other("disk full").into());
        }
        Ok(())
    })
    .expect_err("the sink failed");
    match &err {
        ImagingError::Sink {
            preset: Some(preset),
            source,
        } => {
            assert_eq!(preset, "medium");
            assert_eq!(source.to_string(), "disk full");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_input_error() && !err.is_limit_exceeded());
    assert_eq!(reported, ["medium"], "nothing handed over after the error");

    // Refusing the decode report stops before any output is made.
    let mut outputs = 0;
    let err = process_with_progress(&input, &presets, &Limits::default(), &mut |p| match p {
        Progress::Decoded { .. } => Err("shutting down".into()),
        Progress::Output { .. } => {
            outputs += 1;
            Ok(())
        }
    })
    .expect_err("the sink refused the decode report");
    assert!(
        matches!(err, ImagingError::Sink { preset: None, .. }),
        "{err:?}"
    );
    assert!(!err.is_input_error());
    assert_eq!(outputs, 0);
}

#[test]
fn animation_frames_are_counted_without_decoding_and_limited() {
    let corpus = corpus_or_skip!();
    let started = std::time::Instant::now();
    // Streamed from the file, as the front passes its spooled upload.
    let open = |name: &str| BufReader::new(File::open(corpus.join(name)).expect("open"));
    let n =
        pixpool_imaging::count_frames(open("bad/gif-5000-frames.gif"), Format::Gif).expect("count");
    assert_eq!(n, 5000);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let err = Limits::default()
        .check_frames(n, 1000, 1000)
        .expect_err("over the limit");
    assert!(err.is_input_error() && err.is_limit_exceeded(), "{err}");
    assert!(err.to_string().contains("frame count"), "{err}");
    let still =
        pixpool_imaging::count_frames(open("20-raindrops.gif"), Format::Gif).expect("count");
    assert_eq!(still, 1);
    assert_eq!(
        pixpool_imaging::count_frames(open("19-aitzgorri.webp"), Format::WebP).expect("count"),
        1
    );
    let err = pixpool_imaging::check_animation(
        open("bad/gif-5000-frames.gif"),
        Format::Gif,
        &Limits::default(),
    )
    .expect_err("over the frame limit");
    assert!(err.is_input_error() && err.is_limit_exceeded(), "{err}");
}
