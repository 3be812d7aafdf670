//! Following a job: the per-front event hub, Server-Sent Events
//! (`GET /jobs/<id>/events`) and long-polling (`GET /jobs/<id>?wait=N`).
//!
//! Workers push every job event to every front over IPC; each front hands
//! them to the clients following that job here. A client that subscribes
//! first and reads the record second cannot miss a transition: the worker
//! writes the record before it sends the event, so anything not yet in the
//! record will still arrive as an event. Events carry strictly increasing
//! sequence numbers (see [`EventKind::seq`]), so history rebuilt from the
//! record and live events merge without duplicates, and `Last-Event-ID`
//! resumes exactly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pixpool_protocol::{EventKind, JobEvent};
use pixpool_store::{JobId, JobRecord, JobState, Store};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use crate::body::Body;
use crate::problem::ApiError;

/// Interval of SSE keep-alive comments; also how often a follower re-reads
/// the record in case an event was lost with a worker connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Events buffered per followed job before a slow follower lags (and resyncs
/// from the record).
const PER_JOB_BUFFER: usize = 64;

/// What a follower receives.
#[derive(Debug, Clone)]
pub enum HubMsg {
    /// A job event.
    Event(JobEvent),
    /// Events may have been lost (a worker link dropped): re-read the record.
    Resync,
}

/// Fan-out of job events to the clients of this front following them.
#[derive(Debug, Default)]
pub struct EventHub {
    /// Only jobs somebody follows have an entry; events for others are dropped.
    jobs: Mutex<HashMap<JobId, broadcast::Sender<HubMsg>>>,
}

/// A follower's end; unregisters itself when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<EventHub>,
    id: JobId,
    rx: broadcast::Receiver<HubMsg>,
}

impl EventHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, broadcast::Sender<HubMsg>>> {
        // Each critical section is a single map operation: poisoning cannot
        // leave the map inconsistent.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following job `id`.
    pub fn subscribe(self: &Arc<Self>, id: &JobId) -> Subscription {
        let rx = self
            .lock()
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(PER_JOB_BUFFER).0)
            .subscribe();
        Subscription {
            hub: self.clone(),
            id: id.clone(),
            rx,
        }
    }

    /// Delivers an event to the followers of its job, if any.
    pub fn publish(&self, event: JobEvent) {
        if let Some(tx) = self.lock().get(&event.id) {
            let _ = tx.send(HubMsg::Event(event));
        }
    }

    /// Tells every follower to re-read its record.
    pub fn resync_all(&self) {
        for tx in self.lock().values() {
            let _ = tx.send(HubMsg::Resync);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut jobs = self.hub.lock();
        // Our own receiver is still alive here: 1 means we were the last.
        if jobs
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            jobs.remove(&self.id);
        }
    }
}

impl Subscription {
    /// The next message; `Resync` when this follower fell behind.
    pub async fn recv(&mut self) -> HubMsg {
        match self.rx.recv().await {
            Ok(msg) => msg,
            Err(broadcast::error::RecvError::Lagged(_)) => HubMsg::Resync,
            // The hub keeps the sender while we are subscribed: cannot close.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Reads a record on the blocking pool.
pub async fn read_record(store: &Store, id: &JobId) -> Result<Option<JobRecord>, ApiError> {
    let (store, id) = (store.clone(), id.clone());
    tokio::task::spawn_blocking(move || store.read_record(&id))
        .await
        .map_err(|e| ApiError::Storage {
            context: "record reader failed".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(ApiError::from)
}

/// `GET /jobs/<id>?wait=N`: the record once it is final, or after `wait`.
pub async fn long_poll(
    hub: &Arc<EventHub>,
    store: &Store,
    id: &JobId,
    wait: Duration,
) -> Result<Option<JobRecord>, ApiError> {
    let mut sub = hub.subscribe(id);
    let Some(record) = read_record(store, id).await? else {
        return Ok(None);
    };
    if record.state.is_final() || wait.is_zero() {
        return Ok(Some(record));
    }
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    loop {
        tokio::select! {
            msg = sub.recv() => match msg {
                HubMsg::Event(ev) if !ev.kind.is_final() => continue,
                _ => {
                    let record = read_record(store, id).await?;
                    if record.as_ref().is_none_or(|r| r.state.is_final()) {
                        return Ok(record);
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => return read_record(store, id).await,
        }
    }
}

/// One SSE event, rendered.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    seq: u64,
    name: &'static str,
    data: serde_json::Value,
}

impl Sse {
    fn render(&self) -> Bytes {
        Bytes::from(format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.seq, self.name, self.data
        ))
    }
}

/// The events a record implies, in order: what a client that was not
/// listening would have seen.
fn history(record: &JobRecord) -> Vec<Sse> {
    let id = record.id.as_str();
    let mut out = vec![Sse {
        seq: 0,
        name: "queued",
        data: serde_json::json!({"id": id, "state": "queued"}),
    }];
    let attempt = record.attempts.max(1);
    if record.attempts > 0 || record.state.is_final() {
        out.push(from_kind(id, &EventKind::Processing { attempt }, None));
    }
    if record.state == JobState::Done {
        // The order the worker made them in (and numbered their events by):
        // largest area first, ties in preset order.
        let mut made: Vec<_> = record.outputs.iter().collect();
        made.sort_by_key(|o| std::cmp::Reverse(u64::from(o.width) * u64::from(o.height)));
        for (index, output) in made.into_iter().enumerate() {
            let kind = EventKind::Output {
                attempt,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                output: output.clone(),
            };
            out.push(from_kind(id, &kind, None));
        }
    }
    if record.state.is_final() {
        let kind = EventKind::Finished {
            attempt,
            state: record.state,
        };
        out.push(from_kind(id, &kind, Some(record)));
    }
    out
}

fn from_kind(id: &str, kind: &EventKind, record: Option<&JobRecord>) -> Sse {
    let seq = kind.seq();
    let (name, data) = match kind {
        EventKind::Processing { attempt } => (
            "processing",
            serde_json::json!({"id": id, "state": "processing", "attempt": attempt, "stage": "decode"}),
        ),
        EventKind::Resizing { attempt } => (
            "resizing",
            serde_json::json!({"id": id, "state": "processing", "attempt": attempt, "stage": "resize"}),
        ),
        EventKind::Output { output, .. } => {
            let mut data = serde_json::to_value(output).unwrap_or_default();
            if let Some(obj) = data.as_object_mut() {
                obj.insert("id".into(), id.into());
            }
            ("output", data)
        }
        EventKind::Finished { state, .. } => (
            if *state == JobState::Done {
                "done"
            } else {
                "failed"
            },
            record
                .and_then(|r| serde_json::to_value(r).ok())
                .unwrap_or_else(|| serde_json::json!({"id": id})),
        ),
    };
    Sse { seq, name, data }
}

/// `GET /jobs/<id>/events`: a Server-Sent Events stream of the job's life.
pub async fn stream(
    hub: &Arc<EventHub>,
    store: &Store,
    id: &JobId,
    last_event_id: Option<u64>,
) -> Result<Response<Body>, ApiError> {
    let sub = hub.subscribe(id);
    let record = read_record(store, id)
        .await?
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(follow(sub, store.clone(), record, last_event_id, tx));

    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Feeds one SSE client until its job is final or it goes away.
async fn follow(
    mut sub: Subscription,
    store: Store,
    record: JobRecord,
    last_event_id: Option<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    let id = record.id.clone();
    // Everything above `last` is still owed to the client.
    let mut last: Option<u64> = last_event_id;
    let owed = |events: Vec<Sse>, last: &mut Option<u64>| -> Vec<Sse> {
        let mut out = Vec::new();
        for e in events {
            if last.is_none_or(|l| e.seq > l) {
                *last = Some(e.seq);
                out.push(e);
            }
        }
        out
    };
    let send_all = |batch: Vec<Sse>| {
        let tx = tx.clone();
        async move {
            for e in batch {
                if tx.send(e.render()).await.is_err() {
                    return false;
                }
            }
            true
        }
    };
    let initial = owed(history(&record), &mut last);
    if !send_all(initial).await || record.state.is_final() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        let batch = tokio::select! {
            msg = sub.recv() => match msg {
                HubMsg::Event(ev) => {
                    let record = if ev.kind.is_final() {
                        read_record(&store, &id).await.ok().flatten()
                    } else {
                        None
                    };
                    owed(vec![from_kind(id.as_str(), &ev.kind, record.as_ref())], &mut last)
                }
                HubMsg::Resync => match read_record(&store, &id).await {
                    Ok(Some(r)) => owed(history(&r), &mut last),
                    _ => Vec::new(),
                },
            },
            _ = tick.tick() => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                // Belt and braces: a final state whose event was lost with a
                // worker connection still reaches the client.
                match read_record(&store, &id).await {
                    Ok(Some(r)) if r.state.is_final() => owed(history(&r), &mut last),
                    _ => Vec::new(),
                }
            }
        };
        let done = batch.iter().any(|e| e.name == "done" || e.name == "failed");
        if !send_all(batch).await || done {
            debug!(job_id = %id, "event stream ended");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixpool_store::{OutputRecord, SourceRecord};

    fn record(state: JobState, attempts: u32, outputs: usize) -> JobRecord {
        let mut r = JobRecord::queued(
            JobId::generate(),
            SourceRecord {
                path: "raw/x.jpg".into(),
                format: "jpeg".into(),
                bytes: 1,
            },
            vec!["a".into(), "b".into()],
        );
        r.state = state;
        r.attempts = attempts;
        r.outputs = (0..outputs)
            .map(|i| OutputRecord {
                preset: format!("p{i}"),
                width: 1,
                height: 1,
                bytes: 1,
                content_type: "image/jpeg".into(),
                path: String::new(),
                url: String::new(),
                etag: String::new(),
            })
            .collect();
        r
    }

    #[test]
    fn history_follows_the_record_with_increasing_ids() {
        let names = |r: &JobRecord| history(r).into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(&record(JobState::Queued, 0, 0)), ["queued"]);
        assert_eq!(
            names(&record(JobState::Processing, 1, 0)),
            ["queued", "processing"]
        );
        assert_eq!(
            names(&record(JobState::Done, 2, 2)),
            ["queued", "processing", "output", "output", "done"]
        );
        assert_eq!(
            names(&record(JobState::Failed, 1, 0)),
            ["queued", "processing", "failed"]
        );
        let seqs: Vec<u64> = history(&record(JobState::Done, 2, 2))
            .iter()
            .map(|e| e.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // A retry's events come after every event of the previous attempt.
        assert!(
            EventKind::Processing { attempt: 2 }.seq()
                > EventKind::Finished {
                    attempt: 1,
                    state: JobState::Failed
                }
                .seq()
        );
    }

    #[tokio::test]
    async fn subscriptions_receive_their_job_only_and_unregister_on_drop() {
        let hub = Arc::new(EventHub::default());
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut sub = hub.subscribe(&a);
        hub.publish(JobEvent {
            id: b.clone(),
            kind: EventKind::Processing { attempt: 1 },
        });
        hub.publish(JobEvent {
            id: a.clone(),
            kind: EventKind::Resizing { attempt: 1 },
        });
        match sub.recv().await {
            HubMsg::Event(ev) => assert_eq!(ev.id, a),
            other => panic!("unexpected {other:?}"),
        }
        drop(sub);
        assert!(hub.lock().is_empty());
    }
}
