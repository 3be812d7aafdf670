//! pixpool's shared vocabulary: the types both the job store and the wire
//! protocol speak — ids, states, outputs and problem documents — and the image
//! formats that client, front and imaging all sniff the same way; with no I/O,
//! so that none has to depend on another.
//!
//! # Layout
//! - [`format`](mod@format): [`Format`], the accepted image formats, and
//!   [`Format::sniff`], the one magic-byte test.
//! - [`id`]: [`JobId`], the server-generated job id, and its parsing.
//! - [`job`]: [`JobState`] and [`OutputRecord`].
//! - [`event`]: [`JobEvent`] (progress a worker reports) and [`JobSpec`] (a job as
//!   handed to a worker).
//! - [`problem`]: [`Problem`], the RFC 9457 problem document.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod event;
pub mod format;
pub mod id;
pub mod job;
pub mod problem;

pub use event::{EventKind, JobEvent, JobSpec};
pub use format::{Format, SNIFF_LEN};
pub use id::{InvalidJobId, JobId};
pub use job::{JobState, OutputRecord, Placeholder};
pub use problem::Problem;
