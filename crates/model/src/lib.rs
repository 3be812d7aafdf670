//! pixpool's shared vocabulary: the types both the job store and the wire
//! protocol speak — ids, states, outputs and problem documents — with no I/O,
//! so that neither has to depend on the other.
//!
//! # Layout
//! - [`id`]: [`JobId`], the server-generated job id, and its parsing.
//! - [`job`]: [`JobState`] and [`OutputRecord`].
//! - [`problem`]: [`Problem`], the RFC 9457 problem document.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod id;
pub mod job;
pub mod problem;

pub use id::{InvalidJobId, JobId};
pub use job::{JobState, OutputRecord};
pub use problem::Problem;
