//! When the peer finished each job: it has no per-job API, so its `processed/` folder
//! is watched with inotify, and a job counts as finished when Sharp closes the output
//! file it wrote (`IN_CLOSE_WRITE` on `processed/<id>.jpg`).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::watch;

/// How often the watcher thread looks at its stop flag while no event arrives.
const STOP_CHECK_MS: u16 = 100;

/// One output file's close events.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    /// When the last close-after-write was read.
    pub last: Instant,
    /// How many there were (1 for a file written once).
    pub count: u32,
}

type Seen = Arc<Mutex<HashMap<String, Closed>>>;

/// Watches one directory for files closed after writing, on a thread of its own.
#[derive(Debug)]
pub struct OutputWatch {
    seen: Seen,
    changes: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OutputWatch {
    /// Starts watching `dir` (which must exist).
    pub fn start(dir: &Path) -> anyhow::Result<OutputWatch> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .context("could not create an inotify instance")?;
        inotify
            .add_watch(dir, AddWatchFlags::IN_CLOSE_WRITE)
            .with_context(|| format!("could not watch {}", dir.display()))?;
        let seen: Seen = Arc::default();
        let (tx, changes) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::Builder::new()
                .name("output-watch".into())
                .spawn(move || watch_loop(&inotify, &seen, &tx, &stop))
                .context("could not start the output watcher thread")?
        };
        Ok(OutputWatch {
            seen,
            changes,
            stop,
            thread: Some(thread),
        })
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<String, Closed>> {
        // A poisoned map is still a valid map: the thread only inserts.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The close events of `name`, if any.
    pub fn closed(&self, name: &str) -> Option<Closed> {
        self.seen().get(name).copied()
    }

    /// How many of `names` have been closed.
    pub fn count(&self, names: &[String]) -> usize {
        let seen = self.seen();
        names
            .iter()
            .filter(|n| seen.contains_key(n.as_str()))
            .count()
    }

    /// A receiver that changes whenever an event arrives.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Waits until `name` is closed or `deadline` passes.
    pub async fn wait_for(&self, name: &str, deadline: Instant) -> Option<Closed> {
        let mut changes = self.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(closed) = self.closed(name) {
                return Some(closed);
            }
            let woke = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
            match woke {
                Ok(Ok(())) => {}
                // The watcher is gone or time is up: one last look.
                _ => return self.closed(name),
            }
        }
    }
}

impl Drop for OutputWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch_loop(inotify: &Inotify, seen: &Seen, tx: &watch::Sender<u64>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(STOP_CHECK_MS)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(_) => return,
        };
        // Timestamped as soon as read: the kernel does not record when it happened.
        let now = Instant::now();
        {
            let mut map = seen.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                let Some(name) = event.name.and_then(|n| n.into_string().ok()) else {
                    continue;
                };
                map.entry(name)
                    .and_modify(|c| {
                        c.last = now;
                        c.count += 1;
                    })
                    .or_insert(Closed {
                        last: now,
                        count: 1,
                    });
            }
        }
        tx.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sees_a_file_closed_after_writing() {
        let dir = std::env::temp_dir().join(format!("pixpool-bench-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let watch = OutputWatch::start(&dir).expect("watch");
        std::fs::write(dir.join("a.jpg"), b"x").expect("write");
        let closed = watch
            .wait_for("a.jpg", Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(closed.map(|c| c.count), Some(1));
        assert_eq!(watch.count(&["a.jpg".into(), "b.jpg".into()]), 1);
        drop(watch);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
