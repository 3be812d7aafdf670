//! Talking to systemd (`sd_notify`) and hearing from the children.
//!
//! Children report on the control channel (a datagram socket pair, fd 4 in
//! each child): `READY <role> <slot> <pid>` once they serve, then
//! `ALIVE <role> <slot> <pid> <queued>` every second from their event loop.
//! The supervisor turns that into systemd's protocol: `READY=1` once every
//! slot is ready, `STATUS=` lines, `STOPPING=1` on drain, `RELOADING=1` then
//! `READY=1` around a SIGHUP roll, and `WATCHDOG=1` at half `WatchdogSec`
//! only while every child has checked in recently — so the watchdog covers
//! the whole tree, not just this loop. Without `NOTIFY_SOCKET` all of it is
//! a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::poll::PollTimeout;
use sd_notify::NotifyState;
use tracing::{debug, info, warn};

use crate::supervisor::Slot;

/// How often children say they are alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A child's report line.
pub fn ready_line(role: &str, slot: u32) -> String {
    format!("READY {role} {slot} {}", std::process::id())
}

/// A child's heartbeat line.
pub fn alive_line(role: &str, slot: u32, queued: usize) -> String {
    format!("ALIVE {role} {slot} {} {queued}", std::process::id())
}

/// Reads every pending report and applies it to the slot of its pid.
pub(crate) fn read_reports(sock: &UnixDatagram, slots: &mut [Slot]) {
    let mut buf = [0u8; 256];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!(cause = %e, "control channel read failed");
                return;
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let mut words = text.split_whitespace();
        let (kind, pid) = (
            words.next(),
            words.nth(2).and_then(|p| p.parse::<i32>().ok()),
        );
        let queued = words.next().and_then(|q| q.parse::<u32>().ok());
        let Some(slot) = pid.and_then(|pid| {
            slots
                .iter_mut()
                .find(|s| s.pid.map(|p| p.as_raw()) == Some(pid))
        }) else {
            debug!(report = %text, "report from a process that is no longer a child");
            continue;
        };
        slot.last_seen = Instant::now();
        match kind {
            Some("READY") => {
                if !slot.ready {
                    info!(role = slot.spec.role, slot = slot.spec.slot, "child ready");
                }
                slot.ready = true;
            }
            Some("ALIVE") => slot.queued = queued.unwrap_or(0),
            _ => warn!(report = %text, "unknown report on the control channel"),
        }
    }
}

/// What has been told to systemd.
#[derive(Debug)]
pub(crate) struct Systemd {
    ready_sent: bool,
    stopping_sent: bool,
    reloading: bool,
    last_status: String,
    /// `WatchdogSec`, if systemd set one.
    watchdog: Option<Duration>,
    next_watchdog: Instant,
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(cause = %e, "could not notify systemd");
    }
}

impl Systemd {
    pub(crate) fn new() -> Systemd {
        let watchdog = sd_notify::watchdog_enabled();
        if let Some(w) = watchdog {
            info!(
                watchdog_ms = w.as_millis() as u64,
                "systemd watchdog enabled"
            );
        }
        Systemd {
            ready_sent: false,
            stopping_sent: false,
            reloading: false,
            last_status: String::new(),
            watchdog,
            next_watchdog: Instant::now(),
        }
    }

    /// Shortens the poll timeout so the watchdog is fed on time.
    pub(crate) fn cap_timeout(&self, t: PollTimeout) -> PollTimeout {
        if self.watchdog.is_none() {
            return t;
        }
        let ms = self
            .next_watchdog
            .saturating_duration_since(Instant::now())
            .as_millis()
            + 1;
        let wd = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        if t == PollTimeout::NONE || i32::from(wd) < i32::from(t) {
            wd
        } else {
            t
        }
    }

    pub(crate) fn reloading(&mut self) {
        self.reloading = true;
        send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading: rolling restart"),
        ]);
    }

    /// A roll stopped on a failed newcomer: the reload is over (the service
    /// serves on), so systemd hears READY now rather than once the failed
    /// slot recovers, which may be never.
    pub(crate) fn reload_stopped(&mut self) {
        if self.reloading {
            self.reloading = false;
            send(&[
                NotifyState::Ready,
                NotifyState::Status("reload failed: rolling restart stopped (see the log)"),
            ]);
        }
    }

    pub(crate) fn stopping(&mut self) {
        if !self.stopping_sent {
            self.stopping_sent = true;
            send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
        }
    }

    /// Called on every pass of the loop.
    pub(crate) fn update(&mut self, slots: &[Slot], roll_idle: bool) {
        if self.stopping_sent {
            return;
        }
        let up = |role: &str| {
            slots
                .iter()
                .filter(|s| s.spec.role == role && s.pid.is_some() && s.ready)
                .count()
        };
        let queued: u32 = slots.iter().map(|s| s.queued).sum();
        let status = format!(
            "{} fronts, {} workers up, {queued} jobs queued",
            up("front"),
            up("worker")
        );
        if status != self.last_status {
            send(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
        let all_ready = slots.iter().all(|s| s.pid.is_some() && s.ready);
        if all_ready && !self.ready_sent {
            self.ready_sent = true;
            info!("every child is ready");
            send(&[NotifyState::Ready]);
        }
        if self.reloading && roll_idle && all_ready {
            self.reloading = false;
            send(&[NotifyState::Ready]);
        }
        if let Some(w) = self.watchdog {
            let now = Instant::now();
            // Fed only once the whole tree has come up.
            if self.ready_sent && now >= self.next_watchdog {
                self.next_watchdog = now + w / 2;
                let fresh = slots
                    .iter()
                    .all(|s| s.pid.is_some() && now.duration_since(s.last_seen) < w);
                if fresh {
                    send(&[NotifyState::Watchdog]);
                } else {
                    warn!("a child has not checked in: withholding the watchdog ping");
                }
            }
        }
    }
}
