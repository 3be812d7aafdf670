//! What happened to each image, the summary table and the exit code.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;

use crate::files::{Image, Skipped};

/// Why an image failed or was refused: the server's problem+json (RFC 9457)
/// or, for what went wrong on this side, a local message without a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status; `None` for a local error (file unreadable, no connection).
    pub status: Option<u16>,
    /// Short summary (`title`).
    pub title: String,
    /// The specifics (`detail`), if any.
    pub detail: Option<String>,
}

impl Problem {
    /// An error on the client's side.
    pub fn local(message: String) -> Problem {
        Problem {
            status: None,
            title: message,
            detail: None,
        }
    }

    /// A problem+json object; `status` stands in when the object has none.
    pub fn from_json(value: &Value, status: Option<u16>) -> Problem {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let status = value
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .or(status);
        Problem {
            title: text("title")
                .or_else(|| status.and_then(reason).map(str::to_string))
                .unwrap_or_else(|| "error".to_string()),
            detail: text("detail"),
            status,
        }
    }

    /// An error answer: its problem+json, or its status and whatever text it had.
    pub fn from_response(status: StatusCode, body: &Value) -> Problem {
        match body {
            Value::Object(_) => Problem::from_json(body, Some(status.as_u16())),
            other => Problem {
                status: Some(status.as_u16()),
                title: reason(status.as_u16()).unwrap_or("error").to_string(),
                detail: other.as_str().map(str::to_string),
            },
        }
    }
}

fn reason(status: u16) -> Option<&'static str> {
    StatusCode::from_u16(status).ok()?.canonical_reason()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(status) = self.status {
            write!(f, "{status} ")?;
        }
        f.write_str(&self.title)?;
        if let Some(detail) = &self.detail {
            // One line per failure: a decoder's message may span several.
            f.write_str(":")?;
            for word in detail.split_whitespace() {
                write!(f, " {word}")?;
            }
        }
        Ok(())
    }
}

/// What became of one image.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Processed: every variant is on the server.
    Done {
        /// The job.
        id: String,
        /// The server already had it (an earlier job with these bytes and presets).
        deduplicated: bool,
    },
    /// Accepted, then the job failed (an undecodable image, say).
    Failed {
        /// The job.
        id: String,
        /// The failure is an earlier job's, with the same bytes and presets.
        deduplicated: bool,
        /// The job's `error`.
        problem: Problem,
    },
    /// Not accepted: the upload's answer was an error, or never came.
    Refused {
        /// Why.
        problem: Problem,
    },
}

/// The counts of the summary table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Images found (and attempted).
    pub images: usize,
    /// Jobs done, deduplicated or not.
    pub done: usize,
    /// Jobs failed, deduplicated or not.
    pub failed: usize,
    /// Of `done` and `failed`: the server already had them.
    pub deduplicated: usize,
    /// Refused at upload (4xx/5xx answer, or no answer).
    pub refused: usize,
    /// Files that are not images, passed over.
    pub skipped: usize,
    /// Paths that could not be read.
    pub unreadable: usize,
}

/// The result of a whole `pixpool upload` run.
#[derive(Debug)]
pub struct Report {
    /// The images found, in walk order.
    pub images: Vec<Image>,
    /// One outcome per image, in the same order.
    pub outcomes: Vec<Outcome>,
    /// Files passed over.
    pub skipped: Vec<Skipped>,
    /// Paths that could not be read, and why.
    pub unreadable: Vec<(PathBuf, io::Error)>,
    /// Uploads answered 503 (server busy) and sent again after `Retry-After`.
    pub busy_retries: usize,
    /// From the start of the walk to the last job's end.
    pub elapsed: Duration,
}

impl Report {
    /// The counts of the summary table.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            images: self.images.len(),
            skipped: self.skipped.len(),
            unreadable: self.unreadable.len(),
            ..Counts::default()
        };
        for outcome in &self.outcomes {
            match outcome {
                Outcome::Done { deduplicated, .. } => {
                    c.done += 1;
                    c.deduplicated += usize::from(*deduplicated);
                }
                Outcome::Failed { deduplicated, .. } => {
                    c.failed += 1;
                    c.deduplicated += usize::from(*deduplicated);
                }
                Outcome::Refused { .. } => c.refused += 1,
            }
        }
        c
    }

    /// Finished jobs (done or failed) per second of the whole run.
    pub fn images_per_sec(&self) -> f64 {
        let c = self.counts();
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (c.done + c.failed) as f64 / secs
        } else {
            0.0
        }
    }

    /// Success only when nothing failed, was refused or was unreadable.
    pub fn exit_code(&self) -> ExitCode {
        let c = self.counts();
        if c.failed + c.refused + c.unreadable == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// The summary table, then one line per failure.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.counts();
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: String, note: &str| {
            let line = format!("  {label:<13}{value:>9}   {note}");
            writeln!(f, "{}", line.trim_end())
        };
        let plural = if c.images == 1 { "" } else { "s" };
        writeln!(f, "\npixpool upload: {} image{plural}", c.images)?;
        row(
            f,
            "done",
            c.done.to_string(),
            "processed, every variant ready",
        )?;
        row(
            f,
            "failed",
            c.failed.to_string(),
            "accepted, then the job failed",
        )?;
        row(
            f,
            "deduplicated",
            c.deduplicated.to_string(),
            "already on the server (counted in done/failed)",
        )?;
        row(f, "refused", c.refused.to_string(), "at upload")?;
        row(f, "skipped", c.skipped.to_string(), "not an image")?;
        if c.unreadable > 0 {
            row(
                f,
                "unreadable",
                c.unreadable.to_string(),
                "could not be read",
            )?;
        }
        if self.busy_retries > 0 {
            row(
                f,
                "503 retries",
                self.busy_retries.to_string(),
                "server busy: sent again after its Retry-After",
            )?;
        }
        row(
            f,
            "total time",
            format!("{:.2} s", self.elapsed.as_secs_f64()),
            "",
        )?;
        row(f, "images/s", format!("{:.2}", self.images_per_sec()), "")?;

        let mut failures = self
            .images
            .iter()
            .zip(&self.outcomes)
            .filter_map(|(image, outcome)| match outcome {
                Outcome::Done { .. } => None,
                Outcome::Failed { id, problem, .. } => Some(format!(
                    "  {}: failed (job {id}): {problem}",
                    image.path.display()
                )),
                Outcome::Refused { problem } => {
                    Some(format!("  {}: refused: {problem}", image.path.display()))
                }
            })
            .chain(
                self.unreadable
                    .iter()
                    .map(|(path, e)| format!("  {}: unreadable: {e}", path.display())),
            )
            .peekable();
        if failures.peek().is_some() {
            writeln!(f, "\nfailures:")?;
            for line in failures {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixpool_model::Format;

    fn image(name: &str) -> Image {
        Image {
            path: PathBuf::from(name),
            bytes: 1,
            format: Format::Jpeg,
        }
    }

    #[test]
    fn counts_and_exit_code() {
        let report = Report {
            images: vec![image("a.jpg"), image("b.jpg"), image("c.jpg")],
            outcomes: vec![
                Outcome::Done {
                    id: "1".into(),
                    deduplicated: true,
                },
                Outcome::Failed {
                    id: "2".into(),
                    deduplicated: false,
                    problem: Problem::from_json(
                        &serde_json::json!({"title": "Undecodable image", "status": 422, "detail": "truncated"}),
                        None,
                    ),
                },
                Outcome::Refused {
                    problem: Problem::from_response(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &Value::Null,
                    ),
                },
            ],
            skipped: vec![],
            unreadable: vec![],
            busy_retries: 0,
            elapsed: Duration::from_secs(2),
        };
        let c = report.counts();
        assert_eq!((c.done, c.failed, c.deduplicated, c.refused), (1, 1, 1, 1));
        assert_eq!(report.exit_code(), ExitCode::FAILURE);
        assert!((report.images_per_sec() - 1.0).abs() < 1e-9);
        let text = report.to_string();
        assert!(
            text.contains("b.jpg: failed (job 2): 422 Undecodable image: truncated"),
            "{text}"
        );
        assert!(
            text.contains("c.jpg: refused: 415 Unsupported Media Type"),
            "{text}"
        );
    }
}
