//! The messages. Each connection opens with a [`Hello`] from each side; a peer
//! whose `version` differs is refused, so a rolling upgrade never feeds one
//! version's bytes to another's decoder.

pub use pixpool_model::event::{EventKind, JobEvent, JobSpec, SEQ_PER_ATTEMPT};
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
