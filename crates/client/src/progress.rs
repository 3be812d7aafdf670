//! Two progress bars on stderr — uploaded, processed — drawn only when stderr
//! is a terminal; a log file or a pipe gets the notes as plain lines and
//! no bar.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::{Outcome, Problem};

/// How often the bars redraw on their own (elapsed time, spinner).
const TICK: Duration = Duration::from_millis(120);

/// Progress display shared by every task; cloning shares it.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `None` when stderr is not a terminal.
    bars: Option<Arc<Bars>>,
    /// Refused uploads so far, for the uploaded bar's message.
    refused: Arc<AtomicUsize>,
    /// Failed jobs so far, for the processed bar's message.
    failed: Arc<AtomicUsize>,
    /// 503s waited out so far, for the uploaded bar's message.
    busy: Arc<AtomicUsize>,
}

fn uploaded_message(refused: usize, busy: usize) -> String {
    match (refused, busy) {
        (0, 0) => String::new(),
        (r, 0) => format!("{r} refused"),
        (0, b) => format!("{b} × 503, retried"),
        (r, b) => format!("{r} refused · {b} × 503, retried"),
    }
}

#[derive(Debug)]
struct Bars {
    /// Keeps both bars together and prints notes above them.
    multi: MultiProgress,
    /// Uploads answered (accepted or refused).
    uploaded: ProgressBar,
    /// Jobs finished (done or failed); its length drops with each refusal.
    processed: ProgressBar,
}

impl Progress {
    /// Bars for `total` images, on stderr if it is a terminal.
    pub fn new(total: u64) -> Progress {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>9} [{bar:40.cyan/blue}] {pos:>5}/{len:<5} {elapsed:>4} {msg}",
            )
            .expect("the bar template is valid")
            .progress_chars("=> ");
            let bar = |name: &'static str| {
                let bar = multi.add(ProgressBar::new(total).with_style(style.clone()));
                bar.set_prefix(name);
                bar.enable_steady_tick(TICK);
                bar
            };
            Arc::new(Bars {
                uploaded: bar("uploaded"),
                processed: bar("processed"),
                multi,
            })
        });
        Progress {
            bars,
            refused: Arc::default(),
            failed: Arc::default(),
            busy: Arc::default(),
        }
    }

    /// No bars, notes as plain lines (what [`Progress::new`] gives off a terminal).
    pub fn hidden() -> Progress {
        Progress {
            bars: None,
            refused: Arc::default(),
            failed: Arc::default(),
            busy: Arc::default(),
        }
    }

    /// An upload was accepted.
    pub fn uploaded(&self) {
        if let Some(bars) = &self.bars {
            bars.uploaded.inc(1);
        }
    }

    /// An upload was refused: it will not be processed.
    pub fn refused(&self, path: &Path, problem: &Problem) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bars) = &self.bars {
            // Off a terminal the summary's list of failures says the same.
            self.note(&format!("refused {}: {problem}", path.display()));
            bars.uploaded.inc(1);
            let busy = self.busy.load(Ordering::Relaxed);
            bars.uploaded.set_message(uploaded_message(n, busy));
            bars.processed.dec_length(1);
        }
    }

    /// An upload was answered 503 and waits `delay` before it is sent again;
    /// `total` such waits so far. Said once in words, then counted on the bar.
    pub fn busy(&self, total: usize, delay: Duration) {
        if total == 1 {
            self.note(&format!(
                "the server is busy (503): each upload waits as long as it asks \
                 ({:.1} s now) and is sent again, up to {} times",
                delay.as_secs_f64(),
                crate::MAX_BUSY_RETRIES
            ));
        }
        if let Some(bars) = &self.bars {
            let refused = self.refused.load(Ordering::Relaxed);
            bars.uploaded.set_message(uploaded_message(refused, total));
        }
        self.busy.store(total, Ordering::Relaxed);
    }

    /// A job ended.
    pub fn processed(&self, outcome: &Outcome) {
        let failed = match outcome {
            Outcome::Failed { .. } => self.failed.fetch_add(1, Ordering::Relaxed) + 1,
            _ => self.failed.load(Ordering::Relaxed),
        };
        if let Some(bars) = &self.bars {
            bars.processed.inc(1);
            if failed > 0 {
                bars.processed.set_message(format!("{failed} failed"));
            }
        }
    }

    /// A line for the user: above the bars, or on stderr as it is.
    pub fn note(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                if bars.multi.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    /// Stops the bars, leaving their last state on screen.
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.uploaded.finish();
            bars.processed.finish();
        }
    }
}
