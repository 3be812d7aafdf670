//! Peak resident memory (and time) of processing one image: the `VmHWM` of this process after
//! `process` has run, less the one before (what the pipeline itself costs; the input is
//! read before, and counts in neither).
//!
//! ```sh
//! cargo build --release -p pixpool-imaging --example peak_rss
//! for f in ../shared/corpus/*.*; do target/release/examples/peak_rss "$f" medium; done
//! ```

use std::path::Path;

use pixpool_imaging::{process, Limits, Preset};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args.next().expect("an image file");
    let set = args.next().unwrap_or_else(|| "medium".to_owned());
    let presets = match set.as_str() {
        "builtin" => Preset::builtin(),
        "medium" => vec![Preset::medium()],
        spec => vec![spec.parse::<Preset>().expect("a preset: NAME:WIDTH...")],
    };
    let data = std::fs::read(&file).expect("read the image file");
    let before = vm_hwm_kib();
    let started = std::time::Instant::now();
    let result = process(&data, &presets, &Limits::default());
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let after = vm_hwm_kib();
    let name = Path::new(&file)
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    match result {
        Ok(_) => println!(
            "{name:36} peak {:>6.1} MiB (pipeline {:>6.1} MiB) in {ms:.1} ms",
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / 1024.0
        ),
        Err(e) => println!("{name:36} error: {e}"),
    }
}
