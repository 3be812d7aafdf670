//! Each stage of the pipeline, and the whole of it, on a few photos of `shared/corpus`.
//!
//! ```sh
//! cargo bench -p pixpool-imaging                          # libjpeg (no SIMD), zune-jpeg, jpeg-encoder
//! cargo bench -p pixpool-imaging --features libjpeg-simd   # libjpeg with SIMD for every JPEG
//! taskset -c 1 cargo bench -p pixpool-imaging -- decode/15   # one core, one group
//! ```
//!
//! Groups: `decode` (zune-jpeg whole, and the scaled decoder at 1/8, 1/4, 1/2 and 1),
//! `resize` (whole source to 800 and 1600 wide, Lanczos3), `encode` (1600 wide, q80) and
//! `process` (the built-in presets, and `medium` alone, from the file's bytes to encoded
//! outputs).
//! Skipped, with a message, when the corpus is absent (set `PIXPOOL_CORPUS`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pixpool_imaging::stages;
use pixpool_imaging::{process, Limits, Preset};

/// A 4 MP baseline photo, a 12 MP progressive one and a 20 MP baseline one.
const PHOTOS: [&str; 3] = [
    "04-fallenleaf.jpg",
    "12-sunset-progressive.jpg",
    "15-kleiber-20mp-orient6.jpg",
];

fn corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os("PIXPOOL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    if dir.join("MANIFEST.md").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping the imaging benchmarks: ../shared/corpus not found (set PIXPOOL_CORPUS)"
        );
        None
    }
}

fn photos() -> Vec<(&'static str, Vec<u8>)> {
    let Some(dir) = corpus() else {
        return Vec::new();
    };
    PHOTOS
        .iter()
        .map(|name| {
            let data = std::fs::read(dir.join(name)).expect("read a corpus photo");
            (*name, data)
        })
        .collect()
}

/// The file name up to its first dash: `15-kleiber-…` → `15`.
fn short(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, data) in photos() {
        let id = short(name);
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(BenchmarkId::new("whole-zune", id), |b| {
            b.iter(|| stages::decode_whole(&data).expect("decode"))
        });
        for eighths in [1u8, 2, 4, 8] {
            group.bench_function(BenchmarkId::new(format!("scaled-{eighths}of8"), id), |b| {
                b.iter(|| stages::decode_jpeg_scaled(&data, eighths).expect("decode"))
            });
        }
    }
    group.finish();
}

fn resize(c: &mut Criterion) {
    let mut group = c.benchmark_group("resize");
    for (name, data) in photos() {
        let source = stages::decode_whole(&data).expect("decode");
        let (w, h) = source.size();
        for width in [800, 1600] {
            let height = (u64::from(h) * width / u64::from(w)) as u32;
            let width = width as u32;
            group.bench_function(
                BenchmarkId::new(format!("whole-to-{width}"), short(name)),
                |b| b.iter(|| stages::resize(&source, width, height)),
            );
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, data) in photos() {
        let source = stages::decode_whole(&data).expect("decode");
        let (w, h) = source.size();
        let large = stages::resize(&source, 1600, (u64::from(h) * 1600 / u64::from(w)) as u32);
        group.bench_function(BenchmarkId::new("1600-q80", short(name)), |b| {
            b.iter(|| stages::encode_jpeg(&large, 80))
        });
    }
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("process");
    for (name, data) in photos() {
        for (set, presets) in [
            ("builtin", Preset::builtin()),
            ("medium", vec![Preset::medium()]),
        ] {
            group.bench_function(BenchmarkId::new(set, short(name)), |b| {
                b.iter(|| process(&data, &presets, &Limits::default()).expect("process"))
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    // A few seconds per benchmark: the machines are small and shared.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = stages_benches;
    config = config();
    targets = decode, resize, encode, pipeline
}
criterion_main!(stages_benches);
