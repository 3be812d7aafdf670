//! The issue-4 bound: per-image worker time against libjpeg-turbo's decode-only time for
//! that image at the scale the pipeline chooses (libjpeg-turbo's code with its SIMD
//! assembly, as `mozjpeg-sys` bundles it: the `libjpeg-simd` build).
//!
//! ```sh
//! cargo run --release -p pixpool-imaging --features libjpeg-simd --example decode_bound -- ../shared/corpus 7
//! ```
//!
//! For each JPEG of the folder, best of N runs of:
//! - `libjpeg decode`: libjpeg decoding the file as it is (every progressive scan; block
//!   smoothing off) at the DCT scale the pipeline picks for the `medium` preset (800 px
//!   wide), into RGB (CMYK: the inks);
//! - `pipeline`: [`process_with_progress`] with `medium`, as a worker runs it on the bytes
//!   in memory: decode (scans pruned), resize, encode, each output handed to a callback.
//!   Storing the output is the worker's and is not counted (nor is the libjpeg decode's
//!   input read from a file), so the ratio compares two in-memory computations;
//! - `decode/resize/encode`: the pipeline's own stage timings (best of each).
//!
//! Every file is processed once before the timings, as a worker that has run jobs
//! before. The last line gives the median and worst `pipeline / libjpeg decode` ratios.

mod common;

use std::time::Instant;

use pixpool_imaging::stages::{jpeg_scale_eighths, libjpeg_decode_stream, scale_label};
use pixpool_imaging::{process_with_progress, Limits, Preset, Progress};
fn libjpeg_decode(data: &[u8], eighths: u8) -> f64 {
    let started = Instant::now();
    let bytes = libjpeg_decode_stream(data, eighths).expect("decode");
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "../shared/corpus".to_owned());
    let reps: usize = args.next().map_or(7, |n| n.parse().expect("a count"));
    let presets = vec![Preset::medium()];
    let names = common::jpegs(&dir);
    // As a worker runs a job: each output is handed over as it is made (here only looked
    // at, so that the compiler cannot drop the encoding).
    let run = |data: &[u8]| {
        process_with_progress(data, &presets, &Limits::default(), &mut |p| {
            if let Progress::Output { output, .. } = p {
                std::hint::black_box(&output.data);
            }
            Ok(())
        })
        .expect("process")
    };
    // One pass over every file first, as a worker that has run jobs before: glibc's
    // malloc raises its mmap threshold to the largest block freed so far, so the first
    // jobs of a process page-fault more than the rest, whatever their order.
    for path in &names {
        run(&std::fs::read(path).expect("read"));
    }
    println!(
        "| {:32} | {:>5} | {:>14} | {:>11} | {:>20} | {:>6} |",
        "file", "scale", "libjpeg decode", "pipeline ms", "decode/resize/encode", "ratio"
    );
    println!(
        "|{:-<34}|{:->7}|{:->16}|{:->13}|{:->22}|{:->8}|",
        "", ":", ":", ":", ":", ":"
    );
    let mut ratios = Vec::new();
    for path in names {
        let data = std::fs::read(&path).expect("read");
        let eighths = jpeg_scale_eighths(&data, &presets)
            .expect("header")
            .expect("a JPEG");
        let mut best = [f64::MAX; 6];
        for _ in 0..reps {
            best[0] = best[0].min(libjpeg_decode(&data, eighths));
            let started = Instant::now();
            let done = run(&data);
            best[1] = best[1].min(started.elapsed().as_secs_f64() * 1e3);
            let t = done.timings;
            best[2] = best[2].min(t.decode_ms + t.resize_ms + t.encode_ms);
            best[3] = best[3].min(t.decode_ms);
            best[4] = best[4].min(t.resize_ms);
            best[5] = best[5].min(t.encode_ms);
        }
        let ratio = best[1] / best[0];
        ratios.push(ratio);
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let scale = scale_label(eighths);
        println!(
            "| {name:32} | {scale:>5} | {:>14.1} | {:>11.1} | {:>20} | {ratio:>5.2}× |",
            best[0],
            best[1],
            format!("{:.1} / {:.1} / {:.1}", best[3], best[4], best[5]),
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let worst = ratios.last().copied().unwrap_or(f64::NAN);
    println!(
        "RESULT median_ratio={median:.2} worst_ratio={worst:.2} images={}",
        ratios.len()
    );
}
