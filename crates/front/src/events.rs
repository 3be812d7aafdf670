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
//!
//! Followers wait for minutes, so their streams (SSE and long-polls) have a
//! bound of their own per front, apart from the connection limit, and end as
//! soon as the front drains: they resume on another front.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pixpool_protocol::{EventKind, JobEvent};
use pixpool_store::backend::Records;
use pixpool_store::{JobId, JobRecord, JobState};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::body::Body;
use crate::problem::ApiError;

/// Interval of SSE keep-alive comments; also how often a follower re-reads
/// the record in case an event was lost with a worker connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The last words of an SSE stream ended by a drain or a rolling restart:
/// the client reconnects (to another front) and resumes with `Last-Event-ID`.
const DRAINING: &[u8] = b": this front is restarting; reconnect with Last-Event-ID\n\n";

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
#[derive(Debug)]
pub struct EventHub {
    /// Only jobs somebody follows have an entry; events for others are dropped.
    jobs: Mutex<HashMap<JobId, broadcast::Sender<HubMsg>>>,
    /// Event streams open at once. Their own bound, apart from the connection
    /// limit: followers, who wait for minutes, cannot take every connection
    /// that uploads need.
    streams: Arc<Semaphore>,
    /// Set when the front drains: streams end and long-polls answer at once,
    /// instead of holding the drain (or a rolling restart) for its whole grace.
    closing: watch::Sender<bool>,
}

impl Default for EventHub {
    fn default() -> EventHub {
        EventHub::new(crate::DEFAULT_MAX_EVENT_STREAMS)
    }
}

/// A place among a front's event streams; given back when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    _permit: OwnedSemaphorePermit,
}

/// A follower's end; unregisters itself when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<EventHub>,
    id: JobId,
    rx: broadcast::Receiver<HubMsg>,
}

impl EventHub {
    /// A hub that lets `max_streams` event streams be open at once.
    pub fn new(max_streams: usize) -> EventHub {
        EventHub {
            jobs: Mutex::default(),
            // Beyond MAX_PERMITS a semaphore panics; no front holds that many.
            streams: Arc::new(Semaphore::new(max_streams.min(Semaphore::MAX_PERMITS))),
            closing: watch::Sender::new(false),
        }
    }

    /// A place for one more event stream, or 503 (with `Retry-After`) when
    /// this front already holds as many as it may.
    pub fn admit(&self) -> Result<StreamPermit, ApiError> {
        match self.streams.clone().try_acquire_owned() {
            Ok(permit) => Ok(StreamPermit { _permit: permit }),
            Err(_) => {
                debug!("event stream refused: at the limit");
                Err(ApiError::Unavailable(
                    "this front follows as many jobs as it may; retry shortly".into(),
                ))
            }
        }
    }

    /// Ends every event stream, now and to come: the front is draining.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`EventHub::close`] has been called.
    async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        // The sender lives in `self`, which outlives this call: no error.
        let _ = rx.wait_for(|closing| *closing).await;
    }

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

/// Reads a record.
pub async fn read_record(records: &dyn Records, id: &JobId) -> Result<Option<JobRecord>, ApiError> {
    Ok(records.get(id).await?.map(|v| v.value))
}

/// `GET /jobs/<id>?wait=N`: the record once it is final, or after `wait`.
pub async fn long_poll(
    hub: &Arc<EventHub>,
    records: &dyn Records,
    id: &JobId,
    wait: Duration,
) -> Result<Option<JobRecord>, ApiError> {
    let mut sub = hub.subscribe(id);
    let Some(record) = read_record(records, id).await? else {
        return Ok(None);
    };
    if record.state.is_final() || wait.is_zero() {
        return Ok(Some(record));
    }
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    let closing = hub.closed();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            msg = sub.recv() => match msg {
                HubMsg::Event(ev) if !ev.kind.is_final() => continue,
                _ => {
                    let record = read_record(records, id).await?;
                    if record.as_ref().is_none_or(|r| r.state.is_final()) {
                        return Ok(record);
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => return read_record(records, id).await,
            // Draining: the current state now, rather than a drain held for the wait.
            _ = &mut closing => return read_record(records, id).await,
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
            let mut data =
                serde_json::to_value(crate::view::OutputView::of(output)).unwrap_or_default();
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
                .and_then(|r| serde_json::to_value(crate::view::JobView::of(r)).ok())
                .unwrap_or_else(|| serde_json::json!({"id": id})),
        ),
    };
    Sse { seq, name, data }
}

/// `GET /jobs/<id>/events`: a Server-Sent Events stream of the job's life.
/// `permit` (from [`EventHub::admit`]) is held until the stream ends, and
/// `at_end` runs just before it is given back: the front takes the
/// connection's place under its connection limit again there.
pub async fn stream(
    hub: &Arc<EventHub>,
    records: &Arc<dyn Records>,
    id: &JobId,
    last_event_id: Option<u64>,
    permit: StreamPermit,
    at_end: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<Response<Body>, ApiError> {
    let sub = hub.subscribe(id);
    let record = read_record(&**records, id)
        .await?
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(follow(sub, records.clone(), record, last_event_id, tx));

    // The permit lives with the body: given back once the stream has ended
    // (after `at_end`), or when the client goes away (hyper drops the body).
    let state = (rx, permit, Box::pin(at_end));
    let frames = futures_util::stream::unfold(state, |(mut rx, permit, at_end)| async move {
        match rx.recv().await {
            Some(b) => Some((
                Ok::<_, std::io::Error>(Frame::data(b)),
                (rx, permit, at_end),
            )),
            None => {
                at_end.await;
                drop(permit);
                None
            }
        }
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
    records: Arc<dyn Records>,
    record: JobRecord,
    last_event_id: Option<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    let id = record.id.clone();
    // Everything above `last` is still owed to the client. An id this job
    // cannot have issued yet is not ours (the record, written before each
    // event is sent, knows every attempt so far): replay everything rather
    // than skip events that have not happened.
    let newest = EventKind::Finished {
        attempt: record.attempts.max(1),
        state: JobState::Done,
    }
    .seq();
    let mut last: Option<u64> = last_event_id.filter(|l| *l <= newest);
    if last != last_event_id {
        debug!(job_id = %id, ?last_event_id, "Last-Event-ID beyond this job's events; replaying");
    }
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
    let hub = sub.hub.clone();
    let closing = hub.closed();
    tokio::pin!(closing);
    loop {
        // The stream ends once the job is final, whether or not its last
        // event is still owed (a client may already have it).
        let (batch, done) = tokio::select! {
            msg = sub.recv() => match msg {
                HubMsg::Event(ev) if ev.kind.is_final() => {
                    let record = read_record(&*records, &id).await.ok().flatten();
                    let event = from_kind(id.as_str(), &ev.kind, record.as_ref());
                    (owed(vec![event], &mut last), true)
                }
                HubMsg::Event(ev) => {
                    let event = from_kind(id.as_str(), &ev.kind, None);
                    (owed(vec![event], &mut last), false)
                }
                HubMsg::Resync => match read_record(&*records, &id).await {
                    Ok(Some(r)) => (owed(history(&r), &mut last), r.state.is_final()),
                    _ => (Vec::new(), false),
                },
            },
            _ = tick.tick() => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                // Belt and braces: a final state whose event was lost with a
                // worker connection still reaches the client.
                match read_record(&*records, &id).await {
                    Ok(Some(r)) if r.state.is_final() => (owed(history(&r), &mut last), true),
                    _ => (Vec::new(), false),
                }
            }
            () = &mut closing => {
                // Everything owed is sent already; say why the stream ends.
                let _ = tx.send(Bytes::from_static(DRAINING)).await;
                debug!(job_id = %id, "event stream ended by a drain");
                return;
            }
            // The client went away (hyper dropped the body): stop following
            // now, not at the next keep-alive.
            () = tx.closed() => return,
        };
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

    /// Writes `rec` as the job's current record, whatever was there.
    async fn put(records: &Arc<dyn Records>, rec: &JobRecord) {
        match records.get(&rec.id).await.expect("read") {
            None => records.create(rec).await.map(drop),
            Some(old) => records
                .update(
                    rec,
                    old.revision,
                    pixpool_store::backend::Durability::Durable,
                )
                .await
                .map(drop),
        }
        .expect("record");
    }

    /// A store in a fresh temp directory, removed on drop.
    struct TempStore(Arc<dyn Records>, std::path::PathBuf);

    impl TempStore {
        fn new(tag: &str) -> TempStore {
            let dir = std::env::temp_dir().join(format!(
                "pixpool-events-{tag}-{}-{}",
                std::process::id(),
                JobId::generate()
            ));
            let store = pixpool_store::Store::open(&dir, None).expect("store");
            TempStore(
                Arc::new(pixpool_store::embedded::FileRecords::new(store)),
                dir,
            )
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    /// Every SSE event id and name of a response, until its body ends.
    async fn sse(resp: Response<Body>) -> (Vec<(u64, String)>, String) {
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let events = text
            .split("\n\n")
            .filter_map(|block| {
                let field = |f: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(f).map(str::to_string))
                };
                Some((field("id: ")?.parse().ok()?, field("event: ")?))
            })
            .collect();
        (events, text)
    }

    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_last_event_id_beyond_the_job_replays_it_and_ends() {
        let store = TempStore::new("beyond");
        let hub = Arc::new(EventHub::new(4));
        let done = record(JobState::Done, 1, 1);
        put(&store.0, &done).await;
        let resp = stream(
            &hub,
            &store.0,
            &done.id,
            Some(u64::MAX),
            hub.admit().expect("room"),
            async {},
        )
        .await
        .expect("stream");
        let (events, _) = tokio::time::timeout(WITHIN, sse(resp)).await.expect("ends");
        let names: Vec<&str> = events.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["queued", "processing", "output", "done"]);

        // Live: the job finishes while the client follows from a bogus id.
        let live = record(JobState::Processing, 1, 0);
        put(&store.0, &live).await;
        let resp = stream(
            &hub,
            &store.0,
            &live.id,
            Some(u64::MAX),
            hub.admit().expect("room"),
            async {},
        )
        .await
        .expect("stream");
        let mut finished = live.clone();
        finished.state = JobState::Done;
        put(&store.0, &finished).await;
        hub.publish(JobEvent {
            id: live.id.clone(),
            kind: EventKind::Finished {
                attempt: 1,
                state: JobState::Done,
            },
        });
        let (events, _) = tokio::time::timeout(WITHIN, sse(resp)).await.expect("ends");
        assert_eq!(events.last().map(|(_, n)| n.as_str()), Some("done"));
    }

    #[tokio::test]
    async fn a_stream_ends_on_the_final_event_even_when_the_client_has_it() {
        let store = TempStore::new("has-it");
        let hub = Arc::new(EventHub::new(4));
        let live = record(JobState::Processing, 1, 0);
        put(&store.0, &live).await;
        // The client claims the final event of attempt 1: plausible, owed nothing.
        let final_seq = EventKind::Finished {
            attempt: 1,
            state: JobState::Done,
        }
        .seq();
        let resp = stream(
            &hub,
            &store.0,
            &live.id,
            Some(final_seq),
            hub.admit().expect("room"),
            async {},
        )
        .await
        .expect("stream");
        hub.publish(JobEvent {
            id: live.id.clone(),
            kind: EventKind::Finished {
                attempt: 1,
                state: JobState::Done,
            },
        });
        let (events, _) = tokio::time::timeout(WITHIN, sse(resp)).await.expect("ends");
        assert!(events.is_empty(), "{events:?}");
    }

    #[tokio::test]
    async fn streams_are_bounded_and_their_places_come_back() {
        let store = TempStore::new("bound");
        let hub = Arc::new(EventHub::new(2));
        let live = record(JobState::Queued, 0, 0);
        put(&store.0, &live).await;
        let a = stream(
            &hub,
            &store.0,
            &live.id,
            None,
            hub.admit().expect("1st"),
            async {},
        )
        .await
        .expect("stream");
        let _b = hub.admit().expect("2nd");
        let refused = hub.admit().expect_err("3rd is over the bound");
        assert_eq!(
            refused.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The client of `a` goes away: its place comes back.
        drop(a);
        let back = async {
            loop {
                if let Ok(p) = hub.admit() {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(WITHIN, back)
            .await
            .expect("the place is given back");
    }

    #[tokio::test]
    async fn a_finished_stream_keeps_its_place_until_its_end_hook_has_run() {
        let store = TempStore::new("hook");
        let hub = Arc::new(EventHub::new(1));
        let done = record(JobState::Done, 1, 0);
        put(&store.0, &done).await;
        let gate = Arc::new(tokio::sync::Notify::new());
        let hook = {
            let gate = gate.clone();
            async move { gate.notified().await }
        };
        let resp = stream(
            &hub,
            &store.0,
            &done.id,
            None,
            hub.admit().expect("room"),
            hook,
        )
        .await
        .expect("stream");
        let body = tokio::spawn(sse(resp));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!body.is_finished(), "the body ends only after the hook");
        assert!(hub.admit().is_err(), "the place is still held");
        gate.notify_one();
        let (events, _) = tokio::time::timeout(WITHIN, body)
            .await
            .expect("ends")
            .expect("task");
        assert_eq!(events.last().map(|(_, n)| n.as_str()), Some("done"));
        hub.admit().expect("the place is back");
    }

    #[tokio::test]
    async fn closing_the_hub_ends_streams_and_answers_long_polls_at_once() {
        let store = TempStore::new("close");
        let hub = Arc::new(EventHub::new(4));
        let live = record(JobState::Processing, 1, 0);
        put(&store.0, &live).await;
        let resp = stream(
            &hub,
            &store.0,
            &live.id,
            None,
            hub.admit().expect("room"),
            async {},
        )
        .await
        .expect("stream");
        let poll = {
            let (hub, records, id) = (hub.clone(), store.0.clone(), live.id.clone());
            tokio::spawn(async move { long_poll(&hub, &*records, &id, MAX_WAIT).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!poll.is_finished(), "a long-poll waits while the job runs");
        hub.close();
        let (events, text) = tokio::time::timeout(WITHIN, sse(resp)).await.expect("ends");
        let names: Vec<&str> = events.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["queued", "processing"]);
        assert!(
            text.ends_with(std::str::from_utf8(DRAINING).expect("ascii")),
            "{text:?}"
        );
        let answer = tokio::time::timeout(WITHIN, poll)
            .await
            .expect("answered at once")
            .expect("task")
            .expect("long poll")
            .expect("record");
        assert_eq!(answer.state, JobState::Processing);
    }
}
