//! Job events and the job handed to a worker: what a worker says of a job to
//! every front, whichever transport carries it (the embedded Unix sockets, or
//! a message bus between hosts).

use serde::{Deserialize, Serialize};

use crate::{JobId, JobState, OutputRecord};

/// A job as handed to a worker: the record on disk holds the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job; its record names its original.
    pub id: JobId,
    /// Preset names to produce.
    pub presets: Vec<String>,
}

/// What happened to a job; pushed by the worker that runs it to every front,
/// which fans it out to the clients following that job (SSE, long-poll).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub id: JobId,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of job event. Each has a sequence number ([`EventKind::seq`])
/// that increases strictly over a job's life, across retries, so that a
/// client's `Last-Event-ID` says exactly what it has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A worker started attempt `attempt` (decoding).
    Processing {
        /// 1 for the first run.
        attempt: u32,
    },
    /// Decoding is done; resizing and encoding the outputs.
    Resizing {
        /// The attempt.
        attempt: u32,
    },
    /// One output is written.
    Output {
        /// The attempt.
        attempt: u32,
        /// Position of this output in the order outputs are made: largest
        /// (by pixel area) first, ties in preset order — an order the record
        /// alone also determines, so replayed events get the same ids.
        index: u32,
        /// The output.
        output: OutputRecord,
    },
    /// The job reached a final state; its record on disk is final.
    Finished {
        /// The attempt.
        attempt: u32,
        /// `Done` or `Failed`.
        state: JobState,
    },
}

/// Sequence numbers: `attempt * SEQ_PER_ATTEMPT + offset`; `queued` is 0.
pub const SEQ_PER_ATTEMPT: u64 = 1000;

impl EventKind {
    /// This event's sequence number.
    pub fn seq(&self) -> u64 {
        let (attempt, offset) = match self {
            EventKind::Processing { attempt } => (*attempt, 1),
            EventKind::Resizing { attempt } => (*attempt, 2),
            EventKind::Output { attempt, index, .. } => (*attempt, 10 + u64::from(*index).min(980)),
            EventKind::Finished { attempt, .. } => (*attempt, SEQ_PER_ATTEMPT - 1),
        };
        u64::from(attempt) * SEQ_PER_ATTEMPT + offset
    }

    /// Whether this is the last event of the job.
    pub fn is_final(&self) -> bool {
        matches!(self, EventKind::Finished { .. })
    }
}
