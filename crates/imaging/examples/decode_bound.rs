//! The issue-4 bound: per-image worker time against libjpeg-turbo's decode-only time for
//! that image at the scale the pipeline chooses.
//!
//! ```sh
//! cargo run --release -p pixpool-imaging --features turbojpeg --example decode_bound -- ../shared/corpus 7
//! ```
//!
//! For each JPEG of the folder, best of N runs of:
//! - `turbo decode`: libjpeg-turbo decoding the file as it is (every progressive scan) at
//!   the DCT scale the pipeline picks for the `medium` preset (800 px wide), into RGB;
//! - `pipeline`: [`process_with_progress`] with `medium`, as a worker runs it on the bytes
//!   in memory: decode (scans pruned), resize, encode, each output handed to a callback.
//!   Storing the output is the worker's and is not counted (nor is the turbo decode's
//!   input read from a file), so the ratio compares two in-memory computations;
//! - `decode/resize/encode`: the pipeline's own stage timings (best of each).
//!
//! Every file is processed once before the timings, as a worker that has run jobs
//! before. The last line gives the median and worst `pipeline / turbo decode` ratios.

mod common;

use std::time::Instant;

use pixpool_imaging::stages::{jpeg_scale_eighths, scale_label};
use pixpool_imaging::{process_with_progress, Limits, Preset, Progress};
use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

fn turbo_decode(data: &[u8], eighths: u8) -> f64 {
    let started = Instant::now();
    let mut d = Decompressor::new().expect("decompressor");
    let header = d.read_header(data).expect("header");
    let factor = ScalingFactor::new(usize::from(eighths), 8);
    if factor != ScalingFactor::ONE {
        d.set_scaling_factor(factor).expect("scaling factor");
    }
    let (w, h) = (factor.scale(header.width), factor.scale(header.height));
    let format = if header.colorspace == turbojpeg::Colorspace::CMYK
        || header.colorspace == turbojpeg::Colorspace::YCCK
    {
        PixelFormat::CMYK
    } else {
        PixelFormat::RGB
    };
    let mut pixels = vec![0u8; w * h * format.size()];
    d.decompress(
        data,
        Image {
            pixels: &mut pixels[..],
            width: w,
            pitch: w * format.size(),
            height: h,
            format,
        },
    )
    .expect("decode");
    std::hint::black_box(&pixels);
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
        "| {:32} | {:>5} | {:>12} | {:>11} | {:>20} | {:>6} |",
        "file", "scale", "turbo decode", "pipeline ms", "decode/resize/encode", "ratio"
    );
    println!(
        "|{:-<34}|{:->7}|{:->14}|{:->13}|{:->22}|{:->8}|",
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
            best[0] = best[0].min(turbo_decode(&data, eighths));
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
            "| {name:32} | {scale:>5} | {:>12.1} | {:>11.1} | {:>20} | {ratio:>5.2}× |",
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
