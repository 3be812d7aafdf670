//! Per-image time of `process` with the bench's preset (`medium`: 800 px wide, JPEG q80)
//! over every image of a folder, as the median of N runs, with its stages; then the sum.
//!
//! ```sh
//! cargo build --release -p pixpool-imaging --example corpus_times
//! taskset -c 1 target/release/examples/corpus_times ../shared/corpus 9
//! ```
//!
//! Medians rather than minima: the machine is shared, and the median is what a worker
//! sees over many jobs. The runs of all images are interleaved (one round after another),
//! so that drift in the machine's speed spreads over every image alike.

use std::time::Instant;

use pixpool_imaging::{process, Limits, Preset};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "../shared/corpus".to_owned());
    let reps: usize = args.next().map_or(9, |n| n.parse().expect("a count"));
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("read corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| ["jpg", "png", "webp", "gif"].iter().any(|x| e == *x))
        })
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let presets = [Preset::medium()];
    // Per file, one entry per rep: total, decode, resize, encode.
    let mut times: Vec<Vec<[f64; 4]>> = vec![Vec::with_capacity(reps); files.len()];
    for _ in 0..reps {
        for (runs, data) in times.iter_mut().zip(&files) {
            let started = Instant::now();
            let done = process(data, &presets, &Limits::default()).expect("process");
            let total = started.elapsed().as_secs_f64() * 1000.0;
            let t = done.timings;
            runs.push([total, t.decode_ms, t.resize_ms, t.encode_ms]);
        }
    }
    println!(
        "{:34} {:>8} {:>8} {:>8} {:>8}",
        "file", "total", "decode", "resize", "encode"
    );
    let mut sum = [0.0; 4];
    for (path, runs) in paths.iter().zip(&times) {
        let mut row = [0.0; 4];
        for (k, cell) in row.iter_mut().enumerate() {
            let mut column: Vec<f64> = runs.iter().map(|r| r[k]).collect();
            *cell = median(&mut column);
            sum[k] += *cell;
        }
        let name = path.file_name().expect("a file").to_string_lossy();
        println!(
            "{name:34} {:8.2} {:8.2} {:8.2} {:8.2}",
            row[0], row[1], row[2], row[3]
        );
    }
    println!(
        "{:34} {:8.2} {:8.2} {:8.2} {:8.2}",
        "sum of medians", sum[0], sum[1], sum[2], sum[3]
    );
}
