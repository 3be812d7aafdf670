//! One child process: what to run, and the fork+exec that starts it.

use std::ffi::CString;
use std::os::fd::RawFd;

use nix::unistd::{fork, ForkResult, Pid};

/// The fd number a child finds the inherited listener at (the `LISTEN_FDS`
/// convention of systemd: the first passed fd is 3).
pub const INHERITED_FD: RawFd = 3;

/// The fd number a child finds the control channel at.
pub const CONTROL_FD: RawFd = 4;

/// Everything needed to (re)start the child of one slot.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Role name for logs (`front`, `worker`).
    pub role: &'static str,
    /// Index among children of the same role; a respawn reuses it.
    pub slot: u32,
    /// Absolute path of the program to exec.
    pub program: CString,
    /// Full argv, `argv[0]` included.
    pub argv: Vec<CString>,
    /// An fd to hand over as [`INHERITED_FD`] (the listener, for fronts).
    pub pass_fd: Option<RawFd>,
    /// The children's end of the control channel, handed over as
    /// [`CONTROL_FD`]: readiness and heartbeats go back to the supervisor.
    pub control_fd: Option<RawFd>,
    /// Drain order: children with a lower value are stopped, and must have
    /// exited, before the next group is told to stop. Fronts stop before
    /// workers so that every upload a front is finishing can still be handed off.
    pub stop_order: u8,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `fork(2)` failed (process limit, memory).
    #[error("could not fork {role} {slot}")]
    Fork {
        /// Role of the child.
        role: &'static str,
        /// Slot of the child.
        slot: u32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// Exit code a child uses for an error that a restart cannot fix (bad
/// configuration): the supervisor does not respawn it and exits non-zero
/// (sysexits' `EX_CONFIG`).
pub const FATAL_EXIT_CODE: i32 = 78;

/// Creates the control channel: a datagram socket pair, both ends moved to
/// fd numbers at or above 10 (clear of the fixed numbers children receive)
/// and close-on-exec. Returns (supervisor's end, children's end).
pub fn control_channel() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (a, b) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
    )
    .map_err(std::io::Error::from)?;
    let high = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new fd we then own alone.
        let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if new < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `new` is a fresh, valid fd owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    };
    Ok((high(a)?, high(b)?))
}

/// Exit code of a child whose exec failed.
const EXEC_FAILED: i32 = 127;

impl ChildSpec {
    /// Forks and execs the child. Returns its pid in the parent.
    pub fn spawn(&self) -> Result<Pid, SpawnError> {
        // Everything the child needs is prepared here, before fork: between fork
        // and exec only async-signal-safe calls are allowed (no allocation).
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let parent = nix::unistd::getpid().as_raw();
        let fds = [(self.pass_fd, INHERITED_FD), (self.control_fd, CONTROL_FD)];
        // SAFETY: the supervisor is single-threaded (no runtime, no threads), so
        // the child is a faithful copy with no lock held by another thread; the
        // child only makes raw syscalls before exec or _exit.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => Ok(child),
            Ok(ForkResult::Child) => {
                // SAFETY: async-signal-safe syscalls only; all pointers were built
                // before fork and stay valid until exec replaces the image.
                unsafe { exec_child(parent, fds, self.program.as_ptr(), argv.as_ptr()) }
            }
            Err(source) => Err(SpawnError::Fork {
                role: self.role,
                slot: self.slot,
                source,
            }),
        }
    }
}

/// The child side of fork: never returns.
///
/// # Safety
/// Must be called only in a freshly forked child of a single-threaded parent;
/// `program` and `argv` must be valid, NUL-terminated, and `argv` null-terminated.
unsafe fn exec_child(
    parent: libc::pid_t,
    fds: [(Option<RawFd>, RawFd); 2],
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> ! {
    // SAFETY: the caller's contract; each call below is async-signal-safe.
    unsafe {
        // Die with the supervisor, even if it is SIGKILLed: no orphan ever
        // outlives it (accepted jobs are on disk and are recovered on restart).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The supervisor may have died between fork and prctl: then nothing
        // would deliver the death signal, so check by hand.
        if libc::getppid() != parent {
            libc::_exit(EXEC_FAILED);
        }
        // The signal mask and ignored dispositions survive exec: undo the
        // supervisor's blocking, and ignore SIGINT/SIGHUP, which the supervisor
        // alone acts on (a terminal's Ctrl-C reaches the whole process group;
        // the supervisor then drains children in order with SIGTERM).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        // The sources are close-on-exec fds the supervisor keeps at numbers
        // above the targets (see `control_channel`), so placing one never
        // overwrites the other.
        for (from, to) in fds {
            let Some(fd) = from else { continue };
            if fd == to {
                // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, to) < 0 {
                libc::_exit(EXEC_FAILED);
            }
        }
        libc::execv(program, argv);
        libc::_exit(EXEC_FAILED)
    }
}
