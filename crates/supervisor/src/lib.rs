//! The pixpool supervisor: a small single-threaded loop that owns the listening
//! socket and every child process. It never starts an async runtime, so forking
//! is safe; each child execs the pixpool binary at once and builds its own.
//!
//! # Layout
//! - [`listener`]: binds the shared TCP listener (`SO_REUSEPORT`) that every
//!   front inherits as fd 3.
//! - [`child`]: [`ChildSpec`] and the fork+exec of one child.
//! - [`signals`]: the signal table — signals become one [`Signal`] enum read
//!   from a `signalfd`; no work happens in a handler.
//! - [`notify`]: children's readiness and heartbeats in, systemd's
//!   `sd_notify` protocol out (READY, STATUS, STOPPING, RELOADING, WATCHDOG).
//! - [`supervisor`]: the loop — reap, respawn by reconciling slots with
//!   backoff, drain in stop order under a grace period.
//! - [`roll`]: the rolling restart on SIGHUP — one slot at a time, the next
//!   only once the newcomer reported ready; a failed newcomer stops it.
//!
//! `LIFECYCLE.md` beside this crate walks boot, the loop and shutdown.
#![deny(missing_docs)]

pub mod child;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod roll;
pub mod signals;
pub mod supervisor;

pub use child::ChildSpec;
pub use signals::Signal;
pub use supervisor::{run, Config, Exit, SupervisorError};
