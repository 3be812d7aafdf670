//! pixpool's inter-process protocol: what a front and a worker say to each other
//! over a Unix stream socket, and the one codec that frames it.
//!
//! # Layout
//! - [`message`]: the typed messages, one enum per direction, and the handshake.
//! - [`frame`]: THE codec — a 4-byte big-endian length prefix and a bincode 2
//!   payload, the length checked against [`frame::MAX_FRAME_LEN`] before any
//!   allocation. Change the wire format here and nowhere else.
//! - `channel` (feature `channel`): typed, buffered reader and writer halves
//!   over any async stream. Behind a feature because it needs tokio, and the
//!   supervisor, which frames its metrics snapshots with [`frame`] alone, must
//!   not link an async runtime.
//!
//! The ids, states and outputs the messages carry are `pixpool-model`'s; the
//! metrics snapshot framed to the admin process is `pixpool-metrics`'.
//!
//! Paths and ids cross this boundary, never pixels: the original is already on
//! disk under the uploads directory when a job is submitted.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "channel")]
pub mod channel;
pub mod frame;
pub mod message;

#[cfg(feature = "channel")]
pub use channel::{FrameReader, FrameWriter};
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use message::{
    EventKind, Hello, JobEvent, JobSpec, Reject, Role, ToFront, ToWorker, PROTOCOL_VERSION,
    SEQ_PER_ATTEMPT,
};
