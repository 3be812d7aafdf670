//! The supervisor's own metrics (restarts by role), sent to the admin
//! process once a second like every other process's.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pixpool_protocol::metrics::global;

/// Counts one respawn of a child of `role`.
pub fn record_restart(role: &str) {
    global().add(&format!("pixpool_restarts_total{{role=\"{role}\"}}"), 1);
}

/// Sends snapshots to the admin socket, at most once a second.
#[derive(Debug)]
pub(crate) struct Sender {
    target: Option<(UnixDatagram, PathBuf)>,
    last: std::cell::Cell<Option<Instant>>,
}

impl Sender {
    pub(crate) fn new(path: Option<PathBuf>) -> Sender {
        global().identify("supervisor", 0);
        let target = path.and_then(|p| {
            let sock = UnixDatagram::unbound().ok()?;
            sock.set_nonblocking(true).ok()?;
            Some((sock, p))
        });
        Sender {
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
        if let Ok(bytes) = pixpool_protocol::frame::encode(&global().snapshot()) {
            // The admin process may be restarting: a lost snapshot is harmless.
            let _ = sock.send_to(&bytes, path);
        }
    }
}
