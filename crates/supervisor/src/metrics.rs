//! The supervisor's own metrics (restarts by role), sent to the admin
//! process once a second like every other process's.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pixpool_metrics::{Counter, Label, Recorder};

/// Counts one respawn of a child of `role`.
pub fn record_restart(metrics: &Recorder, role: &'static str) {
    metrics.inc(Counter::Restarts {
        role: Label::from(role),
    });
}

/// Sends snapshots to the admin socket, at most once a second.
#[derive(Debug)]
pub(crate) struct Sender {
    /// What is sent: the recorder the supervisor's loop counts into.
    metrics: Recorder,
    /// An unbound socket and the admin's path; none when no admin runs.
    target: Option<(UnixDatagram, PathBuf)>,
    /// When the last snapshot went out.
    last: std::cell::Cell<Option<Instant>>,
}

impl Sender {
    pub(crate) fn new(path: Option<PathBuf>, metrics: Recorder) -> Sender {
        let target = path.and_then(|p| {
            let sock = UnixDatagram::unbound().ok()?;
            sock.set_nonblocking(true).ok()?;
            Some((sock, p))
        });
        Sender {
            metrics,
            target,
            last: std::cell::Cell::new(None),
        }
    }

    /// Called on every pass of the loop (children's heartbeats wake it each second).
    pub(crate) fn tick(&self) {
        let Some((sock, path)) = &self.target else {
            return;
        };
        if self
            .last
            .get()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last.set(Some(Instant::now()));
        if let Ok(bytes) = pixpool_protocol::frame::encode(&self.metrics.snapshot()) {
            // The admin process may be restarting: a lost snapshot is harmless.
            let _ = sock.send_to(&bytes, path);
        }
    }
}
