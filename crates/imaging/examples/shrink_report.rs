//! Per-image timings of `process` and the quality of its `medium` output.
//!
//! ```sh
//! cargo run --release -p pixpool-imaging --example shrink_report -- ../shared/corpus builtin 5
//! ```
//!
//! For each JPEG of the folder: the best of N runs of the whole pipeline (and its stages)
//! with the preset set given (`medium` or `builtin`), the scale and decoder chosen, and
//! the PSNR of the 800-px `medium` output against the source
//! decoded whole (zune-jpeg), oriented and resized straight to that size with the same
//! Lanczos3 filter. For the PSNR the same presets are run once more with PNG output, so
//! that JPEG encoding does not count: what is left is the loss of shrink-on-load and of
//! the cascade (`medium` resampled from `large`).

mod common;

use std::path::Path;
use std::time::Instant;

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader};
use pixpool_imaging::{process, Limits, Preset};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "../shared/corpus".to_owned());
    let set = args.next().unwrap_or_else(|| "builtin".to_owned());
    let reps: usize = args.next().map_or(5, |n| n.parse().expect("a count"));
    let presets = match set.as_str() {
        "medium" => vec![Preset::medium()],
        _ => Preset::builtin(),
    };
    let out = std::env::temp_dir().join(format!("shrink-report-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("create output dir");

    let names = common::jpegs(&dir);
    println!(
        "{:34} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "file", "total", "decode", "resize", "encode", "psnr"
    );
    let mut sum = 0.0;
    for path in names {
        let mut best = [f64::MAX; 4];
        for _ in 0..reps {
            let started = Instant::now();
            let done = process(&path, &presets, &out, "r", &Limits::default()).expect("process");
            let total = started.elapsed().as_secs_f64() * 1000.0;
            let t = done.timings;
            for (b, v) in best
                .iter_mut()
                .zip([total, t.decode_ms, t.resize_ms, t.encode_ms])
            {
                *b = b.min(v);
            }
        }
        sum += best[0];
        let lossless: Vec<Preset> = presets
            .iter()
            .map(|p| Preset {
                format: pixpool_imaging::OutputFormat::Png,
                ..p.clone()
            })
            .collect();
        process(&path, &lossless, &out, "png", &Limits::default()).expect("process");
        let psnr = psnr_against_reference(&path, &out.join("png-medium.png"));
        let data = std::fs::read(&path).expect("read");
        let plan = pixpool_imaging::stages::jpeg_plan(&data, &presets)
            .expect("plan")
            .unwrap_or_default();
        println!(
            "{:34} {:8.1} {:7.1} {:7.1} {:7.1} {:7.2}  {plan}",
            path.file_name().expect("name").to_string_lossy(),
            best[0],
            best[1],
            best[2],
            best[3],
            psnr,
        );
    }
    println!("{:34} {sum:8.1}", "sum");
    let _ = std::fs::remove_dir_all(&out);
}

/// PSNR (RGB, 8 bits) of `output` against `source` decoded whole, oriented, and resized to
/// the output's size.
fn psnr_against_reference(source: &Path, output: &Path) -> f64 {
    let ours = image::open(output).expect("decode output").into_rgb8();
    let mut decoder = ImageReader::open(source)
        .expect("open")
        .with_guessed_format()
        .expect("guess")
        .into_decoder()
        .expect("decoder");
    let orientation = decoder.orientation().expect("orientation");
    let mut full = DynamicImage::from_decoder(decoder).expect("decode");
    full.apply_orientation(orientation);
    let full = full.into_rgb8();
    let (w, h) = full.dimensions();
    let src = Image::from_vec_u8(w, h, full.into_raw(), PixelType::U8x3).expect("image");
    let mut dst = Image::new(ours.width(), ours.height(), PixelType::U8x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)),
        )
        .expect("resize");
    let mse = ours
        .as_raw()
        .iter()
        .zip(dst.buffer())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum::<f64>()
        / ours.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}
