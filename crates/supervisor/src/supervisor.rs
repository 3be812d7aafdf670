//! The supervisor loop: one thread, one `poll` on a `signalfd`, and a table of
//! slots reconciled against what should be running.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::child::{ChildSpec, SpawnError, FATAL_EXIT_CODE};
use crate::roll::{Effects, Ended, Roll};
pub use crate::roll::{ROLL_READY_TIMEOUT, ROLL_SETTLE};
use crate::signals::{self, Signal};

/// Default drain grace period: how long children get, after SIGTERM, to finish
/// in-flight requests and the job in hand before they are SIGKILLed. A job is
/// on disk before its 202, so a SIGKILL costs time (a re-run), not the job.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A child that lived at least this long is considered healthy again: its next
/// death restarts it at once instead of after a growing delay.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// First respawn delay after a quick death; doubles each time up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Upper bound of the respawn delay, so a crash-looping child costs little CPU
/// and comes back promptly once its cause is fixed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the supervisor runs.
pub struct Config {
    /// One spec per slot; all are started at boot and kept running.
    pub children: Vec<ChildSpec>,
    /// Drain grace period (see [`DEFAULT_GRACE`]).
    pub grace: Duration,
    /// Called on SIGHUP: re-reads the configuration and returns the specs to
    /// roll onto (same slots, same order), or why the new configuration is
    /// refused — then the running children are left alone.
    pub reload: Box<dyn FnMut() -> Result<Vec<ChildSpec>, String>>,
    /// The supervisor's end of the control channel ([`crate::child::control_channel`]):
    /// children report `READY` and `ALIVE` on it.
    pub control: Option<std::os::fd::OwnedFd>,
    /// The admin process's metrics socket, if it runs: the supervisor sends
    /// its own counters (restarts) there each second.
    pub metrics_socket: Option<std::path::PathBuf>,
    /// The supervisor's metrics recorder (restarts), created once by the caller;
    /// its snapshot goes to `metrics_socket` each second.
    pub metrics: pixpool_metrics::Recorder,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("children", &self.children)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// A child that dies this many times within [`CRASH_LOOP_WINDOW`] is in a
/// crash loop: it is held back for [`MAX_BACKOFF`] between attempts.
pub const CRASH_LOOP_DEATHS: usize = 5;

/// See [`CRASH_LOOP_DEATHS`].
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(10);

/// How the supervisor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Drained on request (SIGTERM/SIGINT): exit 0.
    Drained,
    /// Stopped fast on request (SIGQUIT, second SIGINT): exit 0.
    StoppedFast,
    /// A child exited with [`FATAL_EXIT_CODE`]: respawning cannot help, so the
    /// supervisor stopped everything and should exit non-zero.
    ChildFatal {
        /// Role of the child.
        role: &'static str,
        /// Its slot.
        slot: u32,
    },
}

/// Failures of the supervisor itself.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The signalfd could not be set up.
    #[error("could not set up signal handling")]
    Signals(#[source] nix::Error),
    /// `poll(2)` on the signalfd failed.
    #[error("could not wait for signals")]
    Poll(#[source] nix::Error),
    /// A child could not be started at boot.
    #[error("could not start a child")]
    Spawn(#[from] SpawnError),
}

/// Lifecycle phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Keeping every slot filled.
    Running,
    /// Stopping groups in `stop_order`; `deadline` ends the grace period.
    Draining {
        /// When stragglers get SIGKILL.
        deadline: Instant,
    },
    /// Every child has been sent SIGKILL; waiting to reap them.
    Killing,
}

/// One slot: a spec and the process currently filling it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// What to run in this slot.
    pub(crate) spec: ChildSpec,
    /// The live child, if any.
    pub(crate) pid: Option<Pid>,
    /// When the live child was started (to tell a crash loop from a stable run).
    pub(crate) started: Instant,
    /// Consecutive quick deaths, for the backoff.
    pub(crate) quick_deaths: u32,
    /// Do not respawn before this instant.
    pub(crate) respawn_at: Option<Instant>,
    /// SIGTERM was already sent to this child during a drain.
    pub(crate) told_to_stop: bool,
    /// Recent deaths, for the crash-loop budget.
    pub(crate) deaths: std::collections::VecDeque<Instant>,
    /// The current process said it is ready.
    pub(crate) ready: bool,
    /// When the current process last checked in.
    pub(crate) last_seen: Instant,
    /// Jobs it reported queued (workers).
    pub(crate) queued: u32,
}

impl Slot {
    /// A slot to be filled at once.
    pub(crate) fn new(spec: ChildSpec, now: Instant) -> Slot {
        Slot {
            spec,
            pid: None,
            started: now,
            quick_deaths: 0,
            respawn_at: Some(now),
            told_to_stop: false,
            deaths: std::collections::VecDeque::new(),
            ready: false,
            last_seen: now,
            queued: 0,
        }
    }
}

/// Runs the supervisor until it has drained or stopped. `on_ready` is called
/// once, after every child has been started.
pub fn run(mut config: Config, on_ready: impl FnOnce()) -> Result<Exit, SupervisorError> {
    let sfd = signals::open().map_err(SupervisorError::Signals)?;
    let now = Instant::now();
    let mut slots: Vec<Slot> = config
        .children
        .drain(..)
        .map(|spec| Slot::new(spec, now))
        .collect();
    for slot in &mut slots {
        start(slot)?;
    }
    on_ready();
    let control = config
        .control
        .take()
        .map(std::os::unix::net::UnixDatagram::from);
    let mut systemd = crate::notify::Systemd::new();
    let metrics = crate::metrics::Sender::new(config.metrics_socket.take(), config.metrics.clone());

    let mut phase = Phase::Running;
    let mut roll = Roll::new(config.grace, control.is_some());
    let mut interrupts = 0u32;
    let mut fatal: Option<(&'static str, u32)> = None;
    let mut fast = false;
    loop {
        // Sleep until a signal arrives or the next timed event is due.
        let timeout = next_timeout(&slots, phase, roll.due());
        let timeout = systemd.cap_timeout(timeout);
        let polled = match &control {
            Some(c) => poll(
                &mut [
                    PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(c.as_fd(), PollFlags::POLLIN),
                ],
                timeout,
            ),
            None => poll(&mut [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)], timeout),
        };
        match polled {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(SupervisorError::Poll(e)),
        }
        if let Some(c) = &control {
            crate::notify::read_reports(c, &mut slots);
        }

        for sig in signals::drain(&sfd).map_err(SupervisorError::Signals)? {
            match sig {
                Signal::Child => {
                    if let Some(f) = reap(&mut slots, phase, roll.newcomer(), &config.metrics) {
                        if fatal.is_none() {
                            error!(
                                role = f.0,
                                slot = f.1,
                                "child exited with the fatal code {FATAL_EXIT_CODE}; stopping"
                            );
                            fatal = Some(f);
                            phase = begin_drain(config.grace);
                        }
                    }
                }
                Signal::Terminate => {
                    if phase == Phase::Running {
                        info!(grace_s = config.grace.as_secs(), "SIGTERM: draining");
                        phase = begin_drain(config.grace);
                    }
                }
                Signal::Interrupt => {
                    interrupts += 1;
                    if interrupts == 1 && phase == Phase::Running {
                        info!(
                            grace_s = config.grace.as_secs(),
                            "SIGINT: draining (again to stop now)"
                        );
                        phase = begin_drain(config.grace);
                    } else if phase != Phase::Killing {
                        warn!("second SIGINT: stopping now");
                        fast = true;
                        phase = kill_all(&slots);
                    }
                }
                Signal::Quit => {
                    if phase != Phase::Killing {
                        warn!("SIGQUIT: stopping now");
                        fast = true;
                        phase = kill_all(&slots);
                    }
                }
                Signal::Hangup if phase == Phase::Running => {
                    if roll.is_idle() {
                        reload(&mut config, slots.len(), &mut roll, &mut systemd);
                    } else {
                        // Restarting the roll now would drain a second slot
                        // while one is still out of service.
                        info!("SIGHUP during a rolling restart: another one follows it, with the configuration as it is then");
                        roll.queue();
                    }
                }
                Signal::Hangup => {}
            }
        }

        if phase != Phase::Running {
            systemd.stopping();
        }
        systemd.update(&slots, roll.is_idle());
        metrics.tick();
        match phase {
            Phase::Running => {
                // The roll first: a newcomer that failed gets its slot's previous
                // spec back before the slot is refilled.
                if let Some(ended) = roll.advance(&mut slots, Instant::now(), &mut Os) {
                    if ended == Ended::Stopped {
                        systemd.reload_stopped();
                    }
                    if roll.take_queued() {
                        info!("running the rolling restart asked for during the last one");
                        reload(&mut config, slots.len(), &mut roll, &mut systemd);
                    }
                }
                respawn_due(&mut slots);
            }
            Phase::Draining { deadline } => {
                if Instant::now() >= deadline {
                    let left: Vec<_> = alive(&slots).map(|s| (s.spec.role, s.spec.slot)).collect();
                    warn!(
                        ?left,
                        "grace period over: killing the children still running"
                    );
                    phase = kill_all(&slots);
                } else {
                    stop_next_group(&mut slots);
                }
            }
            Phase::Killing => {}
        }

        if phase != Phase::Running && alive(&slots).next().is_none() {
            let exit = match (fatal, fast) {
                (Some((role, slot)), _) => Exit::ChildFatal { role, slot },
                (None, true) => Exit::StoppedFast,
                (None, false) => Exit::Drained,
            };
            info!(?exit, "every child has exited");
            return Ok(exit);
        }
    }
}

/// SIGHUP: asks the reload hook for the new specs and starts rolling onto
/// them; a refusal is logged and changes nothing.
fn reload(
    config: &mut Config,
    slots: usize,
    roll: &mut Roll,
    systemd: &mut crate::notify::Systemd,
) {
    match (config.reload)() {
        Ok(specs) if specs.len() == slots => {
            info!("SIGHUP: configuration re-read; replacing children one by one");
            roll.begin(specs, Instant::now());
            systemd.reloading();
        }
        Ok(specs) => error!(
            have = slots,
            asked = specs.len(),
            "SIGHUP: changing the number of children needs a restart; keeping the running configuration"
        ),
        Err(why) => error!(%why, "SIGHUP: new configuration refused; keeping the running one"),
    }
}

/// The roll's hands: real forks and signals.
struct Os;

impl Effects for Os {
    fn start(&mut self, slot: &mut Slot) -> Result<(), SpawnError> {
        start(slot)
    }
    fn signal(&mut self, pid: Pid, sig: NixSignal) {
        signal(pid, sig)
    }
}

fn begin_drain(grace: Duration) -> Phase {
    Phase::Draining {
        deadline: Instant::now() + grace,
    }
}

fn alive(slots: &[Slot]) -> impl Iterator<Item = &Slot> {
    slots.iter().filter(|s| s.pid.is_some())
}

fn start(slot: &mut Slot) -> Result<(), SpawnError> {
    let pid = slot.spec.spawn()?;
    info!(
        role = slot.spec.role,
        slot = slot.spec.slot,
        pid = pid.as_raw(),
        "started child"
    );
    slot.pid = Some(pid);
    slot.started = Instant::now();
    slot.respawn_at = None;
    slot.ready = false;
    slot.last_seen = slot.started;
    Ok(())
}

/// Reconciliation: every empty slot whose backoff has passed is refilled.
fn respawn_due(slots: &mut [Slot]) {
    let now = Instant::now();
    for slot in slots.iter_mut() {
        if slot.pid.is_none() && slot.respawn_at.is_some_and(|t| t <= now) {
            if let Err(err) = start(slot) {
                error!(cause = %err, "respawn failed; retrying later");
                slot.respawn_at = Some(now + MAX_BACKOFF);
            }
        }
    }
}

/// Sends SIGTERM to the lowest stop group that still has live children, once
/// every lower group has exited.
fn stop_next_group(slots: &mut [Slot]) {
    let Some(group) = alive(slots).map(|s| s.spec.stop_order).min() else {
        return;
    };
    for slot in slots.iter_mut().filter(|s| s.spec.stop_order == group) {
        if let (Some(pid), false) = (slot.pid, slot.told_to_stop) {
            info!(
                role = slot.spec.role,
                slot = slot.spec.slot,
                pid = pid.as_raw(),
                "asking child to drain"
            );
            signal(pid, NixSignal::SIGTERM);
            slot.told_to_stop = true;
        }
    }
}

fn kill_all(slots: &[Slot]) -> Phase {
    for pid in alive(slots).filter_map(|s| s.pid) {
        signal(pid, NixSignal::SIGKILL);
    }
    Phase::Killing
}

fn signal(pid: Pid, sig: NixSignal) {
    // ESRCH only means it died meanwhile; SIGCHLD will tell us.
    if let Err(e) = kill(pid, sig) {
        if e != Errno::ESRCH {
            warn!(pid = pid.as_raw(), cause = %e, "could not signal child");
        }
    }
}

/// Reaps every exited child, schedules respawns, and returns the slot of a
/// child that exited with the fatal code, if one did. The rolling restart's
/// `newcomer` is the exception: its `EX_CONFIG` rejects the new configuration,
/// which the roll undoes, so it is reaped like any crash (and stops the roll).
/// Each respawn is counted in `metrics`.
fn reap(
    slots: &mut [Slot],
    phase: Phase,
    newcomer: Option<Pid>,
    metrics: &pixpool_metrics::Recorder,
) -> Option<(&'static str, u32)> {
    let mut fatal = None;
    loop {
        let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return fatal,
            Ok(s) => s,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                error!(cause = %e, "waitpid failed");
                return fatal;
            }
        };
        let (pid, how, code) = match status {
            WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}"), Some(code)),
            WaitStatus::Signaled(pid, sig, _) => (pid, format!("signal {sig}"), None),
            _ => continue,
        };
        let Some(slot) = slots.iter_mut().find(|s| s.pid == Some(pid)) else {
            continue;
        };
        slot.pid = None;
        let lived = slot.started.elapsed();
        if phase != Phase::Running {
            info!(role = slot.spec.role, slot = slot.spec.slot, pid = pid.as_raw(), %how, "child exited");
            continue;
        }
        if code == Some(FATAL_EXIT_CODE) {
            if newcomer != Some(pid) {
                fatal = Some((slot.spec.role, slot.spec.slot));
                continue;
            }
            warn!(
                role = slot.spec.role,
                slot = slot.spec.slot,
                pid = pid.as_raw(),
                "the new child rejects the new configuration (exit code {FATAL_EXIT_CODE})"
            );
        }
        if code == Some(0) {
            // A planned exit (a worker recycling itself): replace it at once,
            // and it does not count towards the crash backoff.
            info!(
                role = slot.spec.role,
                slot = slot.spec.slot,
                pid = pid.as_raw(),
                "child asked to be replaced"
            );
            slot.respawn_at = Some(Instant::now());
            crate::metrics::record_restart(metrics, slot.spec.role);
            continue;
        }
        if lived >= STABLE_AFTER {
            slot.quick_deaths = 0;
        }
        let now = Instant::now();
        slot.deaths.push_back(now);
        while slot
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_LOOP_WINDOW)
        {
            slot.deaths.pop_front();
        }
        let crash_loop = slot.deaths.len() >= CRASH_LOOP_DEATHS;
        crate::metrics::record_restart(metrics, slot.spec.role);
        let delay = if crash_loop {
            MAX_BACKOFF
        } else {
            backoff(slot.quick_deaths)
        };
        if crash_loop {
            error!(
                role = slot.spec.role,
                slot = slot.spec.slot,
                deaths = slot.deaths.len(),
                window_s = CRASH_LOOP_WINDOW.as_secs(),
                "crash loop: holding the slot back between restarts"
            );
        }
        slot.quick_deaths = slot.quick_deaths.saturating_add(1);
        slot.respawn_at = Some(Instant::now() + delay);
        warn!(
            role = slot.spec.role,
            slot = slot.spec.slot,
            pid = pid.as_raw(),
            %how,
            lived_ms = lived.as_millis() as u64,
            respawn_in_ms = delay.as_millis() as u64,
            "child died; respawning into its slot"
        );
    }
}

/// Delay before the next respawn after `quick_deaths` consecutive quick deaths:
/// none for the first, then [`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`].
fn backoff(quick_deaths: u32) -> Duration {
    if quick_deaths == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (quick_deaths - 1).min(16);
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

fn next_timeout(slots: &[Slot], phase: Phase, rolling: Option<Instant>) -> PollTimeout {
    let now = Instant::now();
    let due = match phase {
        Phase::Running => slots
            .iter()
            .filter(|s| s.pid.is_none())
            .filter_map(|s| s.respawn_at)
            .chain(rolling)
            .min(),
        Phase::Draining { deadline } => Some(deadline),
        Phase::Killing => None,
    };
    match due {
        None => PollTimeout::NONE,
        Some(t) => {
            // Round up so we never wake a hair early and spin.
            let ms = t.saturating_duration_since(now).as_millis() + 1;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), MIN_BACKOFF);
        assert_eq!(backoff(2), MIN_BACKOFF * 2);
        assert_eq!(backoff(3), MIN_BACKOFF * 4);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
