//! The webhook outbox: one entry per (final event of a job, destination), written by
//! the worker before the job's final state is visible, removed by the courier once
//! the destination took it or it gave up. An entry is the durable promise "this
//! event is still owed to this URL": it survives any crash, and whatever reads the
//! outbox after a restart delivers it.

use pixpool_model::{JobId, JobState};
use serde::{Deserialize, Serialize};

/// Who asked for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// The operator's `--webhook-url`, trusted as configured (it may be on loopback).
    Operator,
    /// The upload's `callback_url`: its host's addresses are checked at every attempt.
    Callback,
}

impl Destination {
    /// Its name in entry keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Operator => "operator",
            Destination::Callback => "callback",
        }
    }
}

/// One event owed to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The job.
    pub job: JobId,
    /// The final state the event announces (`done` or `failed`).
    pub state: JobState,
    /// Who asked for it.
    pub destination: Destination,
    /// Where it goes.
    pub url: String,
    /// When the job reached that state (RFC 3339): the body's `timestamp`.
    pub timestamp: String,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Unix milliseconds before which no attempt is made (backoff).
    #[serde(default)]
    pub not_before_ms: u64,
    /// Unix milliseconds until which a courier holds the entry (an attempt in flight);
    /// another courier leaves it alone meanwhile.
    #[serde(default)]
    pub leased_until_ms: u64,
    /// The status of the last answer, if any.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// The body, fixed at the first attempt, so that every retry sends the same bytes.
    #[serde(default)]
    pub body: Option<String>,
}

impl OutboxEntry {
    /// A fresh entry for `job` reaching `state` at `timestamp`, owed to `url`.
    pub fn new(
        job: JobId,
        state: JobState,
        destination: Destination,
        url: String,
        timestamp: String,
    ) -> OutboxEntry {
        OutboxEntry {
            job,
            state,
            destination,
            url,
            timestamp,
            attempts: 0,
            not_before_ms: 0,
            leased_until_ms: 0,
            last_status: None,
            body: None,
        }
    }

    /// The event's type: `job.done` or `job.failed`.
    pub fn event_type(&self) -> &'static str {
        match self.state {
            JobState::Done => "job.done",
            _ => "job.failed",
        }
    }

    /// The entry's key in the outbox: `<job>.<state>.<destination>` (job ids are
    /// ASCII letters and digits, so a key is a file name and a NATS KV key as it is).
    pub fn key(&self) -> String {
        entry_key(&self.job, self.state, self.destination)
    }

    /// The Standard Webhooks `webhook-id`: one per event, the same at every
    /// destination and every retry (`msg_<job>_<state>`).
    pub fn message_id(&self) -> String {
        format!("msg_{}_{}", self.job, state_name(self.state))
    }
}

/// See [`OutboxEntry::key`].
pub fn entry_key(job: &JobId, state: JobState, destination: Destination) -> String {
    format!("{job}.{}.{}", state_name(state), destination.as_str())
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Done => "done",
        _ => "failed",
    }
}

/// Whether `key` could be an entry key: what the embedded outbox accepts as a file
/// name (never a path).
pub fn is_entry_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !key.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_message_ids_are_stable_and_plain() {
        let job = JobId::generate();
        let entry = OutboxEntry::new(
            job.clone(),
            JobState::Done,
            Destination::Callback,
            "https://example.com/hook".into(),
            "2026-12-04T00:00:00.000Z".into(),
        );
        assert_eq!(entry.key(), format!("{job}.done.callback"));
        assert!(is_entry_key(&entry.key()));
        assert_eq!(entry.message_id(), format!("msg_{job}_done"));
        assert_eq!(entry.event_type(), "job.done");
        let json = serde_json::to_string(&entry).expect("encode");
        let back: OutboxEntry = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, entry);
        assert!(!is_entry_key("../jobs/x"));
        assert!(!is_entry_key(".hidden"));
    }
}
