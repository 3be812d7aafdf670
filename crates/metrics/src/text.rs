//! The Prometheus text exposition (format 0.0.4) of typed series: the only
//! place a series becomes `name{label="value",…}`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::series::{Counter, Family, Gauge, Histogram, Series};
use crate::snapshot::{Buckets, DURATION_BUCKETS};

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `name{k="v",…}`; just `name` without labels.
fn sample<'a>(name: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = name.to_string();
    for (i, (k, v)) in labels.into_iter().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    if out.len() > name.len() {
        out.push('}');
    }
    out
}

/// The sample name of a counter or gauge series, as scraped.
pub fn series_name(series: &impl Series) -> String {
    let labels = series.labels();
    sample(
        series.family().name(),
        labels.iter().map(|(k, v)| (*k, v.as_ref())),
    )
}

/// A scrape being written: samples are added in any order and come out grouped
/// by family, each family under its `# HELP` and `# TYPE` lines.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Sample lines per family; a family without samples is left out.
    lines: BTreeMap<Family, Vec<String>>,
}

impl Exposition {
    /// An empty scrape.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn push(&mut self, family: Family, line: String) {
        self.lines.entry(family).or_default().push(line);
    }

    /// Adds a counter's value.
    pub fn counter(&mut self, series: &Counter, value: u64) {
        self.push(series.family(), format!("{} {value}", series_name(series)));
    }

    /// Adds a gauge's value.
    pub fn gauge(&mut self, series: &Gauge, value: f64) {
        self.push(series.family(), format!("{} {value}", series_name(series)));
    }

    /// Adds a histogram: its cumulative `_bucket` lines (`le` last among the
    /// labels), `_sum` and `_count`.
    pub fn histogram(&mut self, series: &Histogram, h: &Buckets) {
        let family = series.family();
        let base = family.name();
        let labels = series.labels();
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        let bucket = format!("{base}_bucket");
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            let le = le.to_string();
            let name = sample(&bucket, labels.iter().copied().chain([("le", le.as_str())]));
            self.push(family, format!("{name} {cumulative}"));
        }
        let name = sample(&bucket, labels.iter().copied().chain([("le", "+Inf")]));
        self.push(family, format!("{name} {}", h.count));
        let sum = sample(&format!("{base}_sum"), labels.iter().copied());
        self.push(family, format!("{sum} {}", h.sum));
        let count = sample(&format!("{base}_count"), labels.iter().copied());
        self.push(family, format!("{count} {}", h.count));
    }

    /// The text.
    pub fn finish(self) -> String {
        let mut text = String::new();
        for (family, lines) in self.lines {
            let name = family.name();
            let _ = writeln!(text, "# HELP {name} {}", family.help());
            let _ = writeln!(text, "# TYPE {name} {}", family.kind().as_str());
            for line in lines {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::series::{JobOutcome, Kind, Label, Stage};

    /// One series of every variant, built by exhaustive matches: a new variant
    /// does not compile until it is listed here.
    fn one_of_each() -> (Vec<Counter>, Vec<Gauge>, Vec<Histogram>) {
        let counters = [
            Counter::HttpRequests {
                route: Label::from("upload"),
                code: 202,
            },
            Counter::UploadBytes,
            Counter::Rejections {
                reason: Label::from("too-large"),
            },
            Counter::Jobs {
                outcome: JobOutcome::Done,
            },
            Counter::JobsStolen { worker: 1 },
            Counter::Restarts {
                role: Label::from("worker"),
            },
            Counter::QueueRedeliveries,
            Counter::WebhookDeliveries {
                outcome: Label::from("delivered"),
            },
            Counter::SweepRemoved {
                kind: Label::from("expired"),
            },
            Counter::SweepReclaimedBytes,
        ];
        for c in &counters {
            match c {
                Counter::HttpRequests { .. }
                | Counter::UploadBytes
                | Counter::Rejections { .. }
                | Counter::Jobs { .. }
                | Counter::JobsStolen { .. }
                | Counter::Restarts { .. }
                | Counter::QueueRedeliveries
                | Counter::WebhookDeliveries { .. }
                | Counter::SweepRemoved { .. }
                | Counter::SweepReclaimedBytes => {}
            }
        }
        let gauges = [
            Gauge::QueueDepth { worker: 0 },
            Gauge::WorkerBusy { worker: 0 },
            Gauge::ProcessRss {
                role: Label::from("front"),
                slot: 1,
                pid: 42,
            },
        ];
        for g in &gauges {
            match g {
                Gauge::QueueDepth { .. } | Gauge::WorkerBusy { .. } | Gauge::ProcessRss { .. } => {}
            }
        }
        let histograms = [
            Histogram::UploadDuration,
            Histogram::JobDuration,
            Histogram::JobStage {
                stage: Stage::Decode,
            },
            Histogram::QueueAck {
                op: Label::from("publish"),
            },
            Histogram::BlobDuration {
                op: Label::from("put_original"),
            },
            Histogram::WebhookDuration,
        ];
        for h in &histograms {
            match h {
                Histogram::UploadDuration
                | Histogram::JobDuration
                | Histogram::JobStage { .. }
                | Histogram::QueueAck { .. }
                | Histogram::BlobDuration { .. }
                | Histogram::WebhookDuration => {}
            }
        }
        (counters.into(), gauges.into(), histograms.into())
    }

    /// One sample line, parsed as a scraper would: name, labels, value.
    fn parse_line(line: &str) -> (String, BTreeMap<String, String>, f64) {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let value: f64 = value.parse().expect("a number");
        let Some((name, rest)) = series.split_once('{') else {
            return (series.to_string(), BTreeMap::new(), value);
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest.strip_suffix('}').expect("closing brace");
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("key=\"");
            let mut val = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next().expect("closing quote");
                match c {
                    '"' => break i,
                    '\\' => match chars.next().expect("escaped char").1 {
                        'n' => val.push('\n'),
                        other => val.push(other),
                    },
                    c => val.push(c),
                }
            };
            labels.insert(key.to_string(), val);
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        (name.to_string(), labels, value)
    }

    fn expected(series: &impl Series) -> BTreeMap<String, String> {
        series
            .labels()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect()
    }

    #[test]
    fn every_series_renders_and_parses_back_to_its_family_and_labels() {
        let (counters, gauges, histograms) = one_of_each();
        let mut covered: Vec<Family> = counters.iter().map(Series::family).collect();
        covered.extend(gauges.iter().map(Series::family));
        covered.extend(histograms.iter().map(Series::family));
        covered.sort();
        assert_eq!(covered, Family::ALL, "one sample per family, in order");

        let mut scrape = Exposition::new();
        for (i, c) in counters.iter().enumerate() {
            scrape.counter(c, i as u64 + 1);
        }
        for (i, g) in gauges.iter().enumerate() {
            scrape.gauge(g, i as f64 + 0.5);
        }
        let mut h = Buckets::default();
        h.observe(0.02);
        h.observe(100.0);
        for s in &histograms {
            scrape.histogram(s, &h);
        }
        let text = scrape.finish();
        let samples: Vec<_> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(parse_line)
            .collect();

        for family in Family::ALL {
            let name = family.name();
            assert_eq!(
                text.matches(&format!("# TYPE {name} {}\n", family.kind().as_str()))
                    .count(),
                1,
                "{text}"
            );
        }
        for (i, c) in counters.iter().enumerate() {
            let want = (c.family().name().to_string(), expected(c), i as f64 + 1.0);
            assert!(samples.contains(&want), "{want:?} in {text}");
        }
        for (i, g) in gauges.iter().enumerate() {
            let want = (g.family().name().to_string(), expected(g), i as f64 + 0.5);
            assert!(samples.contains(&want), "{want:?} in {text}");
        }
        for s in &histograms {
            let base = s.family().name();
            let mut inf = expected(s);
            inf.insert("le".into(), "+Inf".into());
            assert!(
                samples.contains(&(format!("{base}_bucket"), inf, 2.0)),
                "{text}"
            );
            let mut le = expected(s);
            le.insert("le".into(), "0.025".into());
            assert!(
                samples.contains(&(format!("{base}_bucket"), le, 1.0)),
                "{text}"
            );
            assert!(samples.contains(&(format!("{base}_count"), expected(s), 2.0)));
            assert_eq!(s.family().kind(), Kind::Histogram);
        }
        // Every sample line belongs to a family the scrape declared.
        for (name, labels, _) in &samples {
            let family = Family::ALL
                .into_iter()
                .find(|f| {
                    [f.name().to_string()]
                        .into_iter()
                        .chain(["_bucket", "_sum", "_count"].map(|s| format!("{}{s}", f.name())))
                        .any(|n| &n == name)
                })
                .unwrap_or_else(|| panic!("{name} belongs to no family"));
            let mut keys: Vec<&str> = labels.keys().map(String::as_str).collect();
            keys.retain(|k| *k != "le");
            let mut want = family.label_names().to_vec();
            want.sort_unstable();
            assert_eq!(keys, want, "{name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = {
            let mut s = Exposition::new();
            s.gauge(
                &Gauge::ProcessRss {
                    role: serde_json::from_str::<Label>(r#""a\"b\\c\nd""#).expect("label"),
                    slot: 0,
                    pid: 1,
                },
                1.0,
            );
            s.finish()
        };
        let line = text.lines().find(|l| !l.starts_with('#')).expect("sample");
        assert_eq!(
            line,
            r#"pixpool_process_rss_bytes{role="a\"b\\c\nd",slot="0",pid="1"} 1"#
        );
        let (_, labels, _) = parse_line(line);
        assert_eq!(labels["role"], "a\"b\\c\nd");
    }

    #[test]
    fn the_exposition_keeps_its_names_and_label_order() {
        let mut s = Exposition::new();
        s.counter(
            &Counter::HttpRequests {
                route: Label::from("upload"),
                code: 202,
            },
            3,
        );
        s.counter(&Counter::UploadBytes, 10);
        s.gauge(&Gauge::QueueDepth { worker: 1 }, 4.0);
        let mut h = Buckets::default();
        h.observe(0.2);
        s.histogram(
            &Histogram::JobStage {
                stage: Stage::Decode,
            },
            &h,
        );
        s.histogram(&Histogram::UploadDuration, &h);
        let text = s.finish();
        for line in [
            "pixpool_http_requests_total{route=\"upload\",code=\"202\"} 3",
            "pixpool_upload_bytes_total 10",
            "pixpool_queue_depth{worker=\"1\"} 4",
            "pixpool_job_stage_seconds_bucket{stage=\"decode\",le=\"0.25\"} 1",
            "pixpool_job_stage_seconds_bucket{stage=\"decode\",le=\"+Inf\"} 1",
            "pixpool_job_stage_seconds_sum{stage=\"decode\"} 0.2",
            "pixpool_job_stage_seconds_count{stage=\"decode\"} 1",
            "pixpool_http_request_duration_seconds_bucket{route=\"upload\",le=\"1\"} 1",
            "# TYPE pixpool_http_requests_total counter",
            "# HELP pixpool_queue_depth Jobs queued per worker.",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
