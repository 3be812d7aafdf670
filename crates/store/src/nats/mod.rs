//! The distributed backend's records, queue and events, on NATS JetStream: several
//! servers (fronts and workers on different machines) share one job queue.
//!
//! What lives where on the NATS side (names other tools rely on):
//! - [`KvRecords`]: KV bucket `pixpool_jobs` (key = job id, value = the record's JSON,
//!   revision = the KV revision) and KV bucket `pixpool_dedup` (key = the dedup key,
//!   escaped by [`kv_key`]; value = the holder's job id).
//! - [`JobQueue`] / [`JobConsumer`]: work-queue stream `PIXPOOL_JOBS` on subjects
//!   `pixpool.jobs.<id>` (one subject per job, so that "is this job still queued" is
//!   one look-up), consumed through the one durable pull consumer `pixpool-workers`
//!   that every worker shares.
//! - [`KvOutbox`]: KV bucket `pixpool_outbox`, the webhook deliveries still owed.
//! - [`NatsEvents`]: core NATS subject `pixpool.events` (not persisted: the records
//!   are the truth).
//!
//! [`connect`] creates or binds all of them; it is idempotent, so any number of
//! processes may start at once.

mod events;
mod outbox;
mod queue;
mod records;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub use events::NatsEvents;
pub use outbox::KvOutbox;
pub use queue::{JobConsumer, JobQueue};
pub use records::KvRecords;

use crate::backend::EventItem;
use crate::StoreError;

/// The work-queue stream of jobs.
pub const JOB_STREAM: &str = "PIXPOOL_JOBS";
/// The subjects of [`JOB_STREAM`]: `pixpool.jobs.<job id>`.
pub const JOB_SUBJECTS: &str = "pixpool.jobs.*";
/// The durable pull consumer every worker shares.
pub const WORKER_CONSUMER: &str = "pixpool-workers";
/// The KV bucket of job records.
pub const JOBS_BUCKET: &str = "pixpool_jobs";
/// The KV bucket of the dedup index.
pub const DEDUP_BUCKET: &str = "pixpool_dedup";
/// The KV bucket of the webhook outbox.
pub const OUTBOX_BUCKET: &str = "pixpool_outbox";
/// The core NATS subject of job events.
pub const EVENTS_SUBJECT: &str = "pixpool.events";

/// The subject a job is published on.
fn job_subject(id: &pixpool_model::JobId) -> String {
    format!("pixpool.jobs.{id}")
}

/// How the backend is set up; [`NatsOptions::new`] gives the production values.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Copies of every stream and bucket: 3 in a cluster, 1 for a single server.
    pub replicas: usize,
    /// How long a delivered job stays a worker's without a sign of life before the
    /// server hands it to another worker. A started job's heartbeat renews it every
    /// third of this, so it bounds how long a dead worker's job waits, not how long a
    /// job may run.
    pub ack_wait: Duration,
    /// How long one pull request waits for a job before the worker asks again.
    pub fetch_wait: Duration,
    /// How long [`connect`] retries while JetStream is not ready (a cluster still
    /// electing its leader when every process starts at once).
    pub ready_timeout: Duration,
    /// Job events buffered per subscriber before it is told [`EventItem::Gap`].
    pub event_buffer: usize,
}

impl NatsOptions {
    /// The production settings for `replicas` copies.
    pub fn new(replicas: usize) -> NatsOptions {
        NatsOptions {
            replicas: replicas.max(1),
            // Long enough that a busy worker's heartbeat is never late, short enough
            // that a crashed worker's job runs again within the minute.
            ack_wait: Duration::from_secs(30),
            fetch_wait: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(30),
            event_buffer: 1024,
        }
    }
}

/// The NATS-backed parts of a distributed server, connected.
#[derive(Debug, Clone)]
pub struct NatsBackend {
    /// Job records and the dedup index.
    pub records: Arc<KvRecords>,
    /// The front's half of the queue.
    pub queue: Arc<JobQueue>,
    /// Job events, shared by every front and worker.
    pub events: Arc<NatsEvents>,
    /// Webhook deliveries still owed, shared by every host's courier.
    pub outbox: Arc<KvOutbox>,
    /// What the consumers are made with.
    jobs: jetstream::stream::Stream,
    options: NatsOptions,
}

impl NatsBackend {
    /// A worker's half of the queue: a handle on the shared durable consumer. Each
    /// worker process takes one; jobs go to whichever asks first.
    pub async fn consumer(&self) -> Result<Arc<JobConsumer>, StoreError> {
        JobConsumer::bind(&self.jobs, &self.options).await
    }
}

/// Connects to the servers at `urls` (comma-separated `nats://host:port`) and creates
/// or binds the job stream, its consumer and the KV buckets with `replicas` copies.
pub async fn connect(urls: &str, replicas: usize) -> Result<NatsBackend, StoreError> {
    connect_with(urls, NatsOptions::new(replicas)).await
}

/// [`connect`] with explicit settings.
pub async fn connect_with(urls: &str, options: NatsOptions) -> Result<NatsBackend, StoreError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| nats_err(format!("parse server address {u:?}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(nats_err(
            "connect",
            std::io::Error::other("no server address given"),
        ));
    }
    // Subscribers learn of a reconnection as a gap: events published meanwhile
    // are lost to them, so they re-read the records they follow. A server that is
    // down at start is waited for, as a starting cluster is.
    let (tx, _) = broadcast::channel::<events::Item>(options.event_buffer.max(1));
    let deadline = Instant::now() + options.ready_timeout;
    // The first `Connected` is the initial connection; each later one a reconnection.
    let reconnected = Arc::new(AtomicBool::new(false));
    let client = until_ready(deadline, &format!("connect to {urls}"), || {
        let (gap_tx, reconnected) = (tx.clone(), reconnected.clone());
        async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let (gap_tx, reconnected) = (gap_tx.clone(), reconnected.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            if reconnected.swap(true, Ordering::SeqCst) {
                                info!("reconnected to NATS");
                                let _ = gap_tx.send(events::Item::from(EventItem::Gap));
                            }
                        }
                        async_nats::Event::Disconnected => warn!("disconnected from NATS"),
                        other => warn!(event = %other, "NATS connection event"),
                    }
                }
            })
            .connect(addrs.clone())
    })
    .await?;
    let js = jetstream::new(client.clone());
    let jobs = until_ready(deadline, "create stream PIXPOOL_JOBS", || {
        js.get_or_create_stream(jetstream::stream::Config {
            name: JOB_STREAM.into(),
            subjects: vec![JOB_SUBJECTS.into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas,
            // A publish retried within this window (the front lost the first ack)
            // is recognised by its `Nats-Msg-Id` and not queued twice.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
    })
    .await?;
    let jobs_kv = bucket(&js, deadline, JOBS_BUCKET, &options).await?;
    let dedup_kv = bucket(&js, deadline, DEDUP_BUCKET, &options).await?;
    let outbox_kv = bucket(&js, deadline, OUTBOX_BUCKET, &options).await?;
    // Created here, not only by the workers: a front may enqueue before any worker
    // starts, and a work-queue stream keeps only what a consumer will take.
    JobConsumer::ensure(&jobs, &options).await?;
    let events = NatsEvents::start(client.clone(), tx).await?;
    Ok(NatsBackend {
        records: Arc::new(KvRecords::new(jobs_kv, dedup_kv)),
        queue: Arc::new(JobQueue::new(js, jobs.clone())),
        events: Arc::new(events),
        outbox: Arc::new(KvOutbox::new(outbox_kv)),
        jobs,
        options,
    })
}

/// Creates (or binds) KV bucket `name`.
async fn bucket(
    js: &jetstream::Context,
    deadline: Instant,
    name: &str,
    options: &NatsOptions,
) -> Result<jetstream::kv::Store, StoreError> {
    until_ready(
        deadline,
        &format!("create KV bucket {name}"),
        move || async move {
            match js.get_key_value(name).await {
                Ok(kv) => Ok(kv),
                Err(_) => {
                    js.create_key_value(jetstream::kv::Config {
                        bucket: name.into(),
                        // The latest value is all a compare-and-swap needs.
                        history: 1,
                        num_replicas: options.replicas,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                }
            }
        },
    )
    .await
}

/// Runs `attempt` until it succeeds or `deadline` passes: a JetStream cluster that is
/// starting answers "no leader" or times out for a few seconds, and two processes
/// creating one stream at once may see each other's half-made stream.
async fn until_ready<T, E, F, Fut>(
    deadline: Instant,
    step: &str,
    attempt: F,
) -> Result<T, StoreError>
where
    E: std::error::Error + Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                warn!(cause = %e, step, "JetStream not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(nats_err(step, e)),
        }
    }
}

/// A [`StoreError::Nats`] for `step`.
/// How long a request nobody answered is tried again (see [`unanswered_retried`]).
const UNANSWERED_RETRY_FOR: Duration = Duration::from_secs(2);

/// Runs `attempt` again while JetStream answers it with "no responders", for up to
/// [`UNANSWERED_RETRY_FOR`]: a bucket on a cluster that has just formed, or whose
/// leader just changed, has nobody serving its API subjects for a moment. Nothing was
/// done by an unanswered request, so trying again is safe (a create stays a create).
async fn unanswered_retried<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match attempt().await {
            Err(e) if unanswered(&e) && started.elapsed() + pause <= UNANSWERED_RETRY_FOR => {
                warn!(cause = %e, "JetStream did not answer; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            result => return result,
        }
    }
}

/// Whether `e` says no server answered the request: core NATS "no responders", as
/// the client reports it at whichever depth of its error chain.
fn unanswered(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("no responders") {
            return true;
        }
        cause = c.source();
    }
    false
}

fn nats_err(
    step: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Nats {
        step: step.into(),
        source: source.into(),
    }
}

/// Answered only when a server is reachable, and naming a leader only while the
/// stream's replicas have a quorum: whether `stream` takes writes now.
async fn has_leader(stream: &jetstream::stream::Stream, what: &str) -> Result<(), StoreError> {
    let step = || format!("read the status of {what}");
    let info = stream.get_info().await.map_err(|e| nats_err(step(), e))?;
    match info.cluster {
        Some(c) if c.leader.is_none() => Err(nats_err(
            step(),
            std::io::Error::other("no leader (no quorum of its replicas)"),
        )),
        _ => Ok(()),
    }
}

/// `key` as a KV key: KV keys allow only `[-/_=.A-Za-z0-9]` and give `.` and `/` a
/// meaning, so every byte other than `[-_A-Za-z0-9]` is written `=XX` (hex). `=` is
/// escaped too, so two keys never share an escape. Dedup keys (hex and `-`) pass
/// unchanged.
pub fn kv_key(key: &str) -> Result<String, StoreError> {
    if key.is_empty() {
        return Err(StoreError::BadKey { key: key.into() });
    }
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::kv_key;

    #[test]
    fn kv_keys_escape_what_kv_does_not_allow() {
        assert_eq!(kv_key("ab12-cd_EF").expect("key"), "ab12-cd_EF");
        assert_eq!(kv_key("a.b/c=d é").expect("key"), "a=2Eb=2Fc=3Dd=20=C3=A9");
        assert!(kv_key("").is_err());
    }
}
