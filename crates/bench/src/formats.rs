//! `--format-cost`: what each output format costs per 800-px variant, in this process
//! (`pixpool-imaging` as the worker runs it, one thread), on every corpus photo: the
//! encode time the pipeline reports and the bytes written. AVIF runs only for presets
//! that list it, so its price is stated apart from the server benchmark.

use std::fmt::Write as _;

use anyhow::Context;
use pixpool_imaging::{process, Limits, OutputFormat, Preset};

use crate::corpus::Corpus;
use crate::stats::{median, percentile};

/// The formats measured, the reference (JPEG) first.
const FORMATS: [OutputFormat; 3] = [OutputFormat::Jpeg, OutputFormat::WebP, OutputFormat::Avif];

/// Per format: every encode time (ms) and size (bytes), one per photo and rep.
struct Measured {
    format: OutputFormat,
    encode_ms: Vec<f64>,
    bytes: Vec<f64>,
}

/// Runs `reps` passes over the corpus (formats alternated photo by photo, so drift
/// hits them alike) and returns the table and its `RESULT` line.
pub fn run(corpus: &Corpus, reps: u32) -> anyhow::Result<String> {
    let mut measured: Vec<Measured> = FORMATS
        .iter()
        .map(|&format| Measured {
            format,
            encode_ms: Vec::new(),
            bytes: Vec::new(),
        })
        .collect();
    for _ in 0..reps {
        for photo in &corpus.photos {
            for m in &mut measured {
                let preset: Preset = format!("medium:800:{}:q80", m.format.name())
                    .parse()
                    .context("the 800-px preset")?;
                let done = process(&photo.bytes, &[preset], &Limits::default())
                    .with_context(|| format!("{} as {}", photo.name, m.format.name()))?;
                m.encode_ms.push(done.timings.encode_ms);
                m.bytes.push(done.outputs[0].bytes as f64);
            }
        }
    }
    let jpeg_bytes: f64 = measured[0].bytes.iter().sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n800-px variant of each of {} photos, q80, {reps} rep(s), one thread:\n",
        corpus.photos.len()
    );
    let _ = writeln!(
        out,
        "| format | encode ms, median | p90 | bytes, median | size vs JPEG |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    let mut result = String::from("RESULT");
    for m in &measured {
        let ms = median(&m.encode_ms).unwrap_or(f64::NAN);
        let p90 = percentile(&m.encode_ms, 90.0).unwrap_or(f64::NAN);
        let size = median(&m.bytes).unwrap_or(f64::NAN);
        let ratio = m.bytes.iter().sum::<f64>() / jpeg_bytes;
        let _ = writeln!(
            out,
            "| {} | {ms:.1} | {p90:.1} | {size:.0} | {ratio:.2}× |",
            m.format.name()
        );
        let name = m.format.name();
        let _ = write!(
            result,
            " {name}_encode_ms={ms:.1} {name}_bytes_ratio={ratio:.2}"
        );
    }
    let _ = writeln!(out, "\n{result}");
    Ok(out)
}
