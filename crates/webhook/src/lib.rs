//! pixpool's completion webhooks: when a job reaches `done` or `failed`, its worker
//! writes an outbox entry per destination (before the record says so), and the
//! courier process delivers each, signed by the Standard Webhooks scheme, at least
//! once, however the tree crashes meanwhile.
//!
//! - [`signature`]: the `whsec_` secret and the `webhook-signature` value.
//! - [`target`]: which callback URLs an upload may name, and which addresses a
//!   callback may reach (checked at the upload and at every delivery).
//! - [`courier`]: the delivery loop over the outbox, its retries and the record's
//!   `webhook` field.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod courier;
pub mod signature;
pub mod target;

pub use courier::{Courier, CourierConfig};
pub use signature::{Secret, SecretError};
pub use target::{CallbackError, CallbackPolicy};
