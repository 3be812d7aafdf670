//! The rolling restart (SIGHUP): one slot at a time, in slot order, the child
//! is drained and replaced by one started from the new specification. The next
//! slot goes only once the newcomer has reported `READY`, so a configuration
//! that breaks children at start-up costs one slot, never all of them.
//!
//! A pure state machine over the slot table: forking and signalling go through
//! [`Effects`], so tests drive it with fake pids and a fake clock.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::child::{ChildSpec, SpawnError};
use crate::supervisor::Slot;

/// After a newcomer reports ready, the roll waits this long before it takes
/// down the next slot: fronts reconnect to a restarted worker with a backoff
/// capped at 500 ms, so by then every front reaches it again and never sees
/// two workers gone at once.
pub const ROLL_SETTLE: Duration = Duration::from_millis(500);

/// How long a newcomer has to report `READY` before the roll gives up on it.
/// A worker re-queues its slot's claims before it binds its socket; this is
/// far above that, and bounds how long one slot may stay out of service.
pub const ROLL_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the roll does to processes: the supervisor forks and signals; tests
/// record.
pub(crate) trait Effects {
    /// Starts the child of `slot` from its current spec (sets `slot.pid`).
    fn start(&mut self, slot: &mut Slot) -> Result<(), SpawnError>;
    /// Sends `sig` to `pid`.
    fn signal(&mut self, pid: Pid, sig: Signal);
}

/// How a roll ended, for the caller's bookkeeping (systemd, a queued SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every slot runs the new specification.
    Complete,
    /// A newcomer failed: its slot is back on its previous specification and
    /// the slots after it were never touched.
    Stopped,
}

/// Where the roll stands.
#[derive(Debug)]
enum Step {
    /// Nothing rolling.
    Idle,
    /// Slot `index` is next, at `at`.
    Next {
        /// Index into the slot table.
        index: usize,
        /// When to take it down.
        at: Instant,
    },
    /// Slot `index`'s child `old` was told to drain; its successor starts as
    /// soon as it has exited.
    Draining {
        /// Index into the slot table.
        index: usize,
        /// The child being replaced.
        old: Pid,
        /// When it was told (SIGKILL once the grace period has passed).
        since: Instant,
        /// The slot's spec before the roll, restored if the newcomer fails.
        previous: ChildSpec,
    },
    /// The newcomer `new` runs the new spec; waiting for its `READY`.
    Starting {
        /// Index into the slot table.
        index: usize,
        /// The newcomer.
        new: Pid,
        /// When it was started (its `READY` is due by [`ROLL_READY_TIMEOUT`]).
        since: Instant,
        /// The slot's spec before the roll, restored if the newcomer fails.
        previous: ChildSpec,
    },
    /// The newcomer is ready; the next slot goes at `until`, unless the
    /// newcomer dies first.
    Settling {
        /// Index into the slot table.
        index: usize,
        /// The newcomer.
        new: Pid,
        /// When the next slot goes.
        until: Instant,
        /// The slot's spec before the roll, restored if the newcomer dies now.
        previous: ChildSpec,
    },
}

/// A rolling restart, and whether another was asked for meanwhile.
#[derive(Debug)]
pub(crate) struct Roll {
    step: Step,
    /// The spec each slot gets when its turn comes (taken at that moment, so
    /// slots after a failure keep theirs).
    targets: Vec<Option<ChildSpec>>,
    /// A SIGHUP arrived during this roll: another roll follows it, with the
    /// configuration as it is then (never two slots draining at once).
    queued: bool,
    /// Whether children report `READY` (a control channel exists); without
    /// one a started child counts as ready.
    reports: bool,
    /// Drain grace of a replaced child before it is killed.
    grace: Duration,
}

impl Roll {
    /// An idle roll.
    pub(crate) fn new(grace: Duration, reports: bool) -> Roll {
        Roll {
            step: Step::Idle,
            targets: Vec::new(),
            queued: false,
            reports,
            grace,
        }
    }

    /// Whether no roll is in progress.
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.step, Step::Idle)
    }

    /// Starts rolling onto `specs` (one per slot, in slot order).
    pub(crate) fn begin(&mut self, specs: Vec<ChildSpec>, now: Instant) {
        self.targets = specs.into_iter().map(Some).collect();
        self.step = Step::Next { index: 0, at: now };
    }

    /// A SIGHUP during a roll: remembered, acted on when this roll ends.
    pub(crate) fn queue(&mut self) {
        self.queued = true;
    }

    /// Whether a SIGHUP is waiting for this roll to end; clears it.
    pub(crate) fn take_queued(&mut self) -> bool {
        std::mem::take(&mut self.queued)
    }

    /// The newcomer whose start-up the roll is watching, if any: its exit is
    /// the roll's failure, not the whole service's (even with `EX_CONFIG`).
    pub(crate) fn newcomer(&self) -> Option<Pid> {
        match self.step {
            Step::Starting { new, .. } | Step::Settling { new, .. } => Some(new),
            _ => None,
        }
    }

    /// When the roll next needs a look without any event (a signal or a
    /// report wakes the loop anyway).
    pub(crate) fn due(&self) -> Option<Instant> {
        match &self.step {
            Step::Idle => None,
            Step::Next { at, .. } => Some(*at),
            Step::Draining { since, .. } => Some(*since + self.grace),
            Step::Starting { since, .. } => Some(*since + ROLL_READY_TIMEOUT),
            Step::Settling { until, .. } => Some(*until),
        }
    }

    /// Moves the roll along as far as it can go at `now`. Called on every
    /// pass of the loop while running, before empty slots are refilled (so a
    /// failed newcomer's slot is refilled from its restored spec). Returns how
    /// the roll ended, on the pass it ends.
    pub(crate) fn advance(
        &mut self,
        slots: &mut [Slot],
        now: Instant,
        fx: &mut dyn Effects,
    ) -> Option<Ended> {
        loop {
            let step = std::mem::replace(&mut self.step, Step::Idle);
            self.step = match step {
                Step::Idle => return None,
                Step::Next { at, .. } if now < at => {
                    self.step = step;
                    return None;
                }
                Step::Next { index, .. } => {
                    let Some(slot) = slots.get_mut(index) else {
                        info!("rolling restart complete");
                        self.targets.clear();
                        return Some(Ended::Complete);
                    };
                    let Some(spec) = self.targets.get_mut(index).and_then(Option::take) else {
                        // Fewer specs than slots is refused before a roll begins.
                        error!(index, "rolling restart: no specification for this slot");
                        return Some(self.stop());
                    };
                    let previous = std::mem::replace(&mut slot.spec, spec);
                    match slot.pid {
                        Some(old) => {
                            info!(
                                role = slot.spec.role,
                                slot = slot.spec.slot,
                                pid = old.as_raw(),
                                "rolling restart: replacing"
                            );
                            fx.signal(old, Signal::SIGTERM);
                            Step::Draining {
                                index,
                                old,
                                since: now,
                                previous,
                            }
                        }
                        // Empty (waiting out a respawn backoff): its newcomer
                        // starts now and is watched like any other, so the
                        // next slot still waits for it.
                        None => match self.start_newcomer(slots, index, previous, now, fx) {
                            Ok(step) => step,
                            Err(ended) => return Some(ended),
                        },
                    }
                }
                Step::Draining {
                    index,
                    old,
                    since,
                    previous,
                } => match slots[index].pid {
                    Some(pid) if pid == old => {
                        let since = if now.duration_since(since) > self.grace {
                            warn!(
                                pid = old.as_raw(),
                                "child did not drain in time; killing it"
                            );
                            fx.signal(old, Signal::SIGKILL);
                            now
                        } else {
                            since
                        };
                        self.step = Step::Draining {
                            index,
                            old,
                            since,
                            previous,
                        };
                        return None;
                    }
                    // Exited: its successor starts now, whatever backoff the
                    // exit earned, since it runs a different spec.
                    None => match self.start_newcomer(slots, index, previous, now, fx) {
                        Ok(step) => step,
                        Err(ended) => return Some(ended),
                    },
                    // Already refilled by someone else: watch that one.
                    Some(new) => Step::Starting {
                        index,
                        new,
                        since: now,
                        previous,
                    },
                },
                Step::Starting {
                    index,
                    new,
                    since,
                    previous,
                } => {
                    let slot = &slots[index];
                    if slot.pid != Some(new) {
                        return Some(self.fail(
                            slots,
                            index,
                            previous,
                            "exited before it was ready",
                        ));
                    }
                    if slot.ready || !self.reports {
                        info!(
                            role = slot.spec.role,
                            slot = slot.spec.slot,
                            pid = new.as_raw(),
                            "rolling restart: replacement ready"
                        );
                        Step::Settling {
                            index,
                            new,
                            until: now + ROLL_SETTLE,
                            previous,
                        }
                    } else if now.duration_since(since) > ROLL_READY_TIMEOUT {
                        // Its slot goes back to the previous spec: the stuck
                        // newcomer has served nothing, so it is not drained.
                        fx.signal(new, Signal::SIGKILL);
                        return Some(self.fail(
                            slots,
                            index,
                            previous,
                            "did not report ready in time; killed",
                        ));
                    } else {
                        self.step = Step::Starting {
                            index,
                            new,
                            since,
                            previous,
                        };
                        return None;
                    }
                }
                Step::Settling {
                    index,
                    new,
                    until,
                    previous,
                } => {
                    if slots[index].pid != Some(new) {
                        return Some(self.fail(
                            slots,
                            index,
                            previous,
                            "exited just after it was ready",
                        ));
                    }
                    if now < until {
                        self.step = Step::Settling {
                            index,
                            new,
                            until,
                            previous,
                        };
                        return None;
                    }
                    Step::Next {
                        index: index + 1,
                        at: now,
                    }
                }
            };
        }
    }

    /// Starts slot `index`'s child on its new spec and watches it.
    fn start_newcomer(
        &mut self,
        slots: &mut [Slot],
        index: usize,
        previous: ChildSpec,
        now: Instant,
        fx: &mut dyn Effects,
    ) -> Result<Step, Ended> {
        let slot = &mut slots[index];
        if let Err(err) = fx.start(slot) {
            error!(cause = %err, "rolling restart: could not start the new child");
            slot.respawn_at = Some(now + crate::supervisor::MAX_BACKOFF);
            return Err(self.fail(slots, index, previous, "could not be started"));
        }
        match slot.pid {
            Some(new) => Ok(Step::Starting {
                index,
                new,
                since: now,
                previous,
            }),
            None => Err(self.fail(slots, index, previous, "did not start")),
        }
    }

    /// The newcomer of slot `index` failed: the slot gets its previous spec
    /// back (its respawn runs what ran before), and the slots after it, not
    /// yet touched, keep theirs. Slots already replaced keep the new spec:
    /// they reported ready with it.
    fn fail(&mut self, slots: &mut [Slot], index: usize, previous: ChildSpec, why: &str) -> Ended {
        let slot = &mut slots[index];
        slot.spec = previous;
        let untouched = self.targets.iter().filter(|t| t.is_some()).count();
        error!(
            role = slot.spec.role,
            slot = slot.spec.slot,
            replaced_before = index,
            untouched,
            "rolling restart stopped: the new child {why}; its slot is back on the previous configuration and the slots after it were not touched (fix the cause, then SIGHUP again)"
        );
        self.stop()
    }

    fn stop(&mut self) -> Ended {
        self.targets.clear();
        self.step = Step::Idle;
        Ended::Stopped
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    fn spec(role: &'static str, slot: u32, generation: &str) -> ChildSpec {
        ChildSpec {
            role,
            slot,
            program: CString::new("/nonexistent/pixpool").expect("no NUL"),
            argv: vec![CString::new(generation).expect("no NUL")],
            pass_fd: None,
            control_fd: None,
            stop_order: 0,
        }
    }

    fn generation(slot: &Slot) -> String {
        slot.spec.argv[0].to_string_lossy().into_owned()
    }

    /// Fake processes: starting hands out pids from 1000 on; signals are
    /// recorded, never sent.
    #[derive(Default)]
    struct Fake {
        next_pid: i32,
        signals: Vec<(i32, Signal)>,
    }

    impl Effects for Fake {
        fn start(&mut self, slot: &mut Slot) -> Result<(), SpawnError> {
            self.next_pid += 1;
            slot.pid = Some(Pid::from_raw(1000 + self.next_pid));
            slot.ready = false;
            Ok(())
        }
        fn signal(&mut self, pid: Pid, sig: Signal) {
            self.signals.push((pid.as_raw(), sig));
        }
    }

    /// Three running slots on generation "old" (pids 1, 2, 3).
    fn table(now: Instant) -> Vec<Slot> {
        (0..3)
            .map(|i| {
                let mut s = Slot::new(spec("worker", i, "old"), now);
                s.pid = Some(Pid::from_raw(i as i32 + 1));
                s.ready = true;
                s
            })
            .collect()
    }

    fn new_specs() -> Vec<ChildSpec> {
        (0..3).map(|i| spec("worker", i, "new")).collect()
    }

    fn terms(fx: &Fake) -> Vec<i32> {
        fx.signals
            .iter()
            .filter(|(_, s)| *s == Signal::SIGTERM)
            .map(|(p, _)| *p)
            .collect()
    }

    #[test]
    fn the_next_slot_goes_only_after_the_newcomer_is_ready() {
        let t0 = Instant::now();
        let (mut slots, mut fx) = (table(t0), Fake::default());
        let mut roll = Roll::new(Duration::from_secs(30), true);
        roll.begin(new_specs(), t0);
        assert_eq!(roll.advance(&mut slots, t0, &mut fx), None);
        assert_eq!(terms(&fx), [1], "slot 0 told to drain");
        // It exits: its successor starts at once, on the new spec.
        slots[0].pid = None;
        roll.advance(&mut slots, t0, &mut fx);
        let newcomer = slots[0].pid.expect("newcomer started");
        assert_eq!(generation(&slots[0]), "new");
        assert_eq!(roll.newcomer(), Some(newcomer));
        // Long after any settle delay, still not ready: nothing else moves.
        let later = t0 + ROLL_SETTLE * 10;
        assert_eq!(roll.advance(&mut slots, later, &mut fx), None);
        assert_eq!(terms(&fx), [1]);
        // Ready: the next slot goes after the settle delay, not before.
        slots[0].ready = true;
        roll.advance(&mut slots, later, &mut fx);
        assert_eq!(terms(&fx), [1]);
        roll.advance(&mut slots, later + ROLL_SETTLE, &mut fx);
        assert_eq!(terms(&fx), [1, 2]);
    }

    #[test]
    fn a_newcomer_that_dies_stops_the_roll_and_its_slot_goes_back() {
        let t0 = Instant::now();
        let (mut slots, mut fx) = (table(t0), Fake::default());
        let mut roll = Roll::new(Duration::from_secs(30), true);
        roll.begin(new_specs(), t0);
        roll.advance(&mut slots, t0, &mut fx);
        slots[0].pid = None;
        roll.advance(&mut slots, t0, &mut fx);
        // The newcomer crashes at start-up (reaped: the slot is empty).
        slots[0].pid = None;
        assert_eq!(roll.advance(&mut slots, t0, &mut fx), Some(Ended::Stopped));
        assert!(roll.is_idle());
        assert_eq!(generation(&slots[0]), "old", "rolled back");
        assert_eq!(generation(&slots[1]), "old", "never touched");
        assert_eq!(generation(&slots[2]), "old", "never touched");
        assert_eq!(terms(&fx), [1], "no other slot was drained");
        assert_eq!(
            roll.advance(&mut slots, t0 + ROLL_READY_TIMEOUT * 2, &mut fx),
            None
        );
        assert_eq!(terms(&fx), [1]);
    }

    #[test]
    fn a_newcomer_that_never_gets_ready_is_killed_and_the_roll_stops() {
        let t0 = Instant::now();
        let (mut slots, mut fx) = (table(t0), Fake::default());
        let mut roll = Roll::new(Duration::from_secs(30), true);
        roll.begin(new_specs(), t0);
        roll.advance(&mut slots, t0, &mut fx);
        slots[0].pid = None;
        roll.advance(&mut slots, t0, &mut fx);
        let newcomer = slots[0].pid.expect("started").as_raw();
        assert_eq!(
            roll.advance(&mut slots, t0 + ROLL_READY_TIMEOUT, &mut fx),
            None
        );
        let late = t0 + ROLL_READY_TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            roll.advance(&mut slots, late, &mut fx),
            Some(Ended::Stopped)
        );
        assert!(fx.signals.contains(&(newcomer, Signal::SIGKILL)));
        assert_eq!(generation(&slots[0]), "old");
        assert_eq!(terms(&fx), [1]);
    }

    #[test]
    fn an_empty_slot_gets_its_newcomer_at_once_and_the_next_slot_waits_for_it() {
        let t0 = Instant::now();
        let (mut slots, mut fx) = (table(t0), Fake::default());
        // Slot 0 is waiting out a respawn backoff when the roll reaches it.
        slots[0].pid = None;
        let mut roll = Roll::new(Duration::from_secs(30), true);
        roll.begin(new_specs(), t0);
        roll.advance(&mut slots, t0, &mut fx);
        assert!(slots[0].pid.is_some_and(|p| p.as_raw() > 1000));
        assert_eq!(generation(&slots[0]), "new");
        roll.advance(&mut slots, t0 + ROLL_SETTLE * 4, &mut fx);
        assert!(terms(&fx).is_empty(), "slot 1 waits for slot 0's READY");
    }

    #[test]
    fn a_child_that_does_not_drain_is_killed_after_the_grace() {
        let t0 = Instant::now();
        let (mut slots, mut fx) = (table(t0), Fake::default());
        let grace = Duration::from_secs(5);
        let mut roll = Roll::new(grace, true);
        roll.begin(new_specs(), t0);
        roll.advance(&mut slots, t0, &mut fx);
        roll.advance(&mut slots, t0 + grace, &mut fx);
        assert!(!fx.signals.contains(&(1, Signal::SIGKILL)));
        roll.advance(&mut slots, t0 + grace + Duration::from_millis(1), &mut fx);
        assert!(fx.signals.contains(&(1, Signal::SIGKILL)));
    }

    #[test]
    fn a_whole_roll_replaces_each_slot_once_in_order_and_remembers_a_second_sighup() {
        let t0 = Instant::now();
        let (mut slots, mut fx) = (table(t0), Fake::default());
        let mut roll = Roll::new(Duration::from_secs(30), true);
        roll.begin(new_specs(), t0);
        let mut now = t0;
        let mut ended = None;
        for _ in 0..50 {
            ended = roll.advance(&mut slots, now, &mut fx);
            if ended.is_some() {
                break;
            }
            // Whoever was told to drain exits; a newcomer becomes ready.
            for s in slots.iter_mut() {
                if s.pid.is_some_and(|p| terms(&fx).contains(&p.as_raw())) {
                    s.pid = None;
                }
                if s.pid.is_some_and(|p| p.as_raw() > 1000) {
                    s.ready = true;
                }
            }
            if now == t0 + Duration::from_millis(100) {
                roll.queue();
            }
            now += Duration::from_millis(100);
            // At most one slot is ever between its drain and its newcomer's READY.
            let in_flight = slots
                .iter()
                .filter(|s| {
                    s.pid
                        .is_none_or(|p| terms(&fx).contains(&p.as_raw()) || !s.ready)
                })
                .count();
            assert!(in_flight <= 1, "two slots out of service at once");
        }
        assert_eq!(ended, Some(Ended::Complete));
        assert_eq!(terms(&fx), [1, 2, 3]);
        assert!(slots.iter().all(|s| generation(s) == "new"));
        assert!(roll.take_queued(), "the second SIGHUP waits for the roll");
        assert!(!roll.take_queued());
    }
}
