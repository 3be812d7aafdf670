//! The messages. Each connection opens with a [`Hello`] from each side; a peer
//! whose `version` differs is refused, so a rolling upgrade never feeds one
//! version's bytes to another's decoder.

use pixpool_model::{JobId, JobState, OutputRecord};
use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u16 = 2;

/// Which kind of process is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// An HTTP front.
    Front,
    /// An image worker.
    Worker,
}

/// The first frame in each direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The sender's role.
    pub role: Role,
    /// The sender's slot (its index among processes of its role).
    pub slot: u32,
    /// The sender's pid, for logs.
    pub pid: u32,
}

impl Hello {
    /// This process's hello.
    pub fn new(role: Role, slot: u32) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            slot,
            pid: std::process::id(),
        }
    }
}

/// A job as handed to a worker: the record on disk holds the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job; its record is `jobs/<id>.json` and its original is named there.
    pub id: JobId,
    /// Preset names to produce.
    pub presets: Vec<String>,
}

/// Front → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Handshake.
    Hello(Hello),
    /// Take this job. Answered by [`ToFront::Accepted`] or [`ToFront::Rejected`]
    /// carrying the same `req`.
    Submit {
        /// Correlates the answer; unique per connection.
        req: u64,
        /// The job.
        job: JobSpec,
    },
}

/// Why a worker did not take a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reject {
    /// Its bounded queue is full: try another worker.
    QueueFull,
    /// It is draining and takes nothing new.
    ShuttingDown,
    /// It could not durably claim the job (disk trouble).
    Claim(String),
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

/// Worker → front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToFront {
    /// Handshake.
    Hello(Hello),
    /// The job is claimed on disk and queued: the front may answer 202.
    Accepted {
        /// The `req` of the submit.
        req: u64,
        /// Jobs queued on this worker after taking this one (including it).
        queue_depth: u32,
    },
    /// The job was not taken.
    Rejected {
        /// The `req` of the submit.
        req: u64,
        /// Why.
        reason: Reject,
    },
    /// Progress of a job (sent to every connected front).
    Event(JobEvent),
}
