//! The signal table. The supervisor blocks these signals and reads them from a
//! `signalfd` in its loop, so no code runs in a signal handler and no flag is
//! ever missed between two checks.
//!
//! | signal            | meaning                                                     |
//! |-------------------|-------------------------------------------------------------|
//! | SIGTERM           | graceful drain: fronts stop accepting and finish, then workers finish the job in hand; SIGKILL past the grace period |
//! | SIGINT (1st)      | same as SIGTERM (Ctrl-C)                                     |
//! | SIGINT (2nd), SIGQUIT | fast stop: SIGKILL every child now (accepted jobs stay on disk) |
//! | SIGHUP            | reload, then a rolling restart (one slot at a time, the next once the newcomer is ready); during a roll, queued for one more roll after it |
//! | SIGCHLD           | reap, then respawn into the same slot                        |

use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a signal asks of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A child changed state: reap.
    Child,
    /// SIGTERM: drain gracefully.
    Terminate,
    /// SIGINT: drain gracefully the first time, stop fast the second.
    Interrupt,
    /// SIGQUIT: stop fast.
    Quit,
    /// SIGHUP: reload.
    Hangup,
}

impl Signal {
    fn from_raw(signo: i32) -> Option<Signal> {
        match NixSignal::try_from(signo).ok()? {
            NixSignal::SIGCHLD => Some(Signal::Child),
            NixSignal::SIGTERM => Some(Signal::Terminate),
            NixSignal::SIGINT => Some(Signal::Interrupt),
            NixSignal::SIGQUIT => Some(Signal::Quit),
            NixSignal::SIGHUP => Some(Signal::Hangup),
            _ => None,
        }
    }
}

/// The signals the supervisor handles.
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        NixSignal::SIGCHLD,
        NixSignal::SIGTERM,
        NixSignal::SIGINT,
        NixSignal::SIGQUIT,
        NixSignal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals and opens a non-blocking `signalfd` for them.
/// Children get the mask reset between fork and exec.
pub fn open() -> nix::Result<SignalFd> {
    let set = handled();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Every signal pending on `fd`, in arrival order.
pub fn drain(fd: &SignalFd) -> nix::Result<Vec<Signal>> {
    let mut out = Vec::new();
    while let Some(info) = fd.read_signal()? {
        if let Some(sig) = Signal::from_raw(info.ssi_signo as i32) {
            out.push(sig);
        }
    }
    Ok(out)
}
