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

use std::time::Instant;

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
    let names = common::jpegs(&dir);
    println!(
        "{:34} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "file", "total", "decode", "resize", "encode", "psnr"
    );
    let mut sum = 0.0;
    for path in names {
        let data = std::fs::read(&path).expect("read");
        let mut best = [f64::MAX; 4];
        for _ in 0..reps {
            let started = Instant::now();
            let done = process(&data, &presets, &Limits::default()).expect("process");
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
        let png = process(&data, &lossless, &Limits::default()).expect("process");
        let medium = png
            .outputs
            .iter()
            .find(|o| o.preset == "medium")
            .expect("the preset sets given both have `medium`");
        let psnr =
            pixpool_imaging::stages::psnr_against_whole_decode(&data, &medium.data).expect("psnr");
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
}
