//! The job queue as a JetStream work-queue stream and one durable pull consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::StreamExt;
use pixpool_model::{JobId, JobSpec};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{error, warn};

use super::{job_subject, nats_err, NatsOptions, WORKER_CONSUMER};
use crate::backend::{Consumer, Delivery, EnqueueError, Enqueued, Queue};
use crate::StoreError;

/// The pause after a failed pull before the next (the servers are unreachable).
const PULL_RETRY: Duration = Duration::from_secs(1);

/// How long a publish the stream answered "not found" to is tried again (a stream
/// being placed, or electing a leader), pausing 100 ms, then twice as long each time:
/// well within the 10 s in which an upload gets its 202 or its 503.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(2);
const PUBLISH_RETRY_FIRST: Duration = Duration::from_millis(100);

/// [`Queue`] on stream `PIXPOOL_JOBS`: a job is a message on `pixpool.jobs.<id>` that
/// stays in the stream until a worker acks it.
#[derive(Debug, Clone)]
pub struct JobQueue {
    js: jetstream::Context,
    jobs: stream::Stream,
}

impl JobQueue {
    pub(super) fn new(js: jetstream::Context, jobs: stream::Stream) -> JobQueue {
        JobQueue { js, jobs }
    }
}

#[async_trait::async_trait]
impl Queue for JobQueue {
    /// `Ok` once the stream's replicas have stored the job. The message id is the job
    /// id: a publish repeated within the stream's duplicate window (two minutes) is
    /// recognised and queues nothing. `worker` and `queue_depth` are 0: the queue is
    /// shared, no worker is chosen until one pulls the job.
    async fn enqueue(&self, job: &JobSpec) -> Result<Enqueued, EnqueueError> {
        let payload = serde_json::to_vec(job).map_err(|e| EnqueueError::Failed(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            job.id.to_string().as_str(),
        );
        let payload = bytes::Bytes::from(payload);
        let started = tokio::time::Instant::now();
        let mut pause = PUBLISH_RETRY_FIRST;
        loop {
            let acked = match self
                .js
                .publish_with_headers(job_subject(&job.id), headers.clone(), payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(_) => {
                    return Ok(Enqueued {
                        worker: 0,
                        queue_depth: 0,
                    })
                }
                // A stream being placed or changing leaders answers at once that it
                // is not there: worth another try within the request, the job id
                // making a repeat no second job. Timeouts are not retried: they
                // already took their time.
                Err(e)
                    if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                        && started.elapsed() + pause <= PUBLISH_RETRY_FOR =>
                {
                    warn!(cause = %e, job_id = %job.id, "the job stream did not answer; publishing again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    return Err(EnqueueError::Failed(format!(
                        "job {} not acknowledged: {e}",
                        job.id
                    )))
                }
            }
        }
    }

    /// Whether the job's message is still in the stream: published, and not yet acked
    /// by a worker (waiting, running, or waiting for a retry). A work-queue stream
    /// removes a message when it is acked, so this is the queue's own answer, not the
    /// record's.
    async fn is_queued(&self, id: &JobId) -> Result<bool, StoreError> {
        match self
            .jobs
            .get_last_raw_message_by_subject(&job_subject(id))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(nats_err(format!("look up queued job {id}"), e)),
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        super::has_leader(&self.jobs, &format!("stream {}", super::JOB_STREAM)).await
    }
}

/// A delivered message this consumer has not yet acked or given back.
#[derive(Debug)]
struct Held {
    message: jetstream::Message,
    /// The task renewing the message's ack deadline while the job runs.
    heartbeat: Option<AbortHandle>,
}

impl Held {
    fn stop(&self) {
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

/// [`Consumer`] on the durable pull consumer `pixpool-workers`, shared by every worker.
///
/// One job is pulled at a time and only when the worker asks for it ([`Consumer::next`]):
/// a job waiting in one worker's buffer would be a job another idle worker cannot take.
/// A started job's ack deadline is renewed every third of `ack_wait` until it is acked
/// or retried, so a long job is never handed to a second worker; a worker that dies
/// stops renewing, and the server delivers the job again after `ack_wait`.
///
/// The server redelivers without limit; [`Delivery::retries`] is the number of earlier
/// deliveries, so the worker fails a job that keeps failing (or keeps killing workers).
#[derive(Debug)]
pub struct JobConsumer {
    consumer: consumer::PullConsumer,
    fetch_wait: Duration,
    ack_wait: Duration,
    /// Delivered messages by [`Delivery::token`].
    held: Mutex<HashMap<u64, Held>>,
    next_token: AtomicU64,
    /// Jobs not yet delivered to any worker, as of the last delivery.
    pending: AtomicUsize,
    closed: watch::Sender<bool>,
}

impl JobConsumer {
    fn config(options: &NatsOptions) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(WORKER_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            // Unlimited: a message past a server-side limit would stay in the
            // work-queue stream, undelivered, its job queued forever.
            max_deliver: -1,
            ..Default::default()
        }
    }

    /// Creates the shared consumer if it does not exist (an existing one is kept as it
    /// is: several processes start at once with the same settings).
    pub(super) async fn ensure(
        jobs: &stream::Stream,
        options: &NatsOptions,
    ) -> Result<consumer::PullConsumer, StoreError> {
        jobs.get_or_create_consumer(WORKER_CONSUMER, JobConsumer::config(options))
            .await
            .map_err(|e| nats_err("create consumer pixpool-workers", e))
    }

    pub(super) async fn bind(
        jobs: &stream::Stream,
        options: &NatsOptions,
    ) -> Result<Arc<JobConsumer>, StoreError> {
        let consumer = JobConsumer::ensure(jobs, options).await?;
        // The deadline the server applies, which is the first creator's: the
        // heartbeat must beat within it, whatever this process was configured with.
        let ack_wait = consumer.cached_info().config.ack_wait;
        Ok(Arc::new(JobConsumer {
            consumer,
            fetch_wait: options.fetch_wait,
            ack_wait,
            held: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            pending: AtomicUsize::new(0),
            closed: watch::channel(false).0,
        }))
    }

    fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        // Each critical section is one insert, lookup or removal: a panic cannot
        // leave the table inconsistent, so poisoning is ignored.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One job, waiting at most `fetch_wait`; `None` when none came.
    async fn pull(&self) -> Result<Option<jetstream::Message>, StoreError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(self.fetch_wait)
            .messages()
            .await
            .map_err(|e| nats_err("pull a job", e))?;
        match batch.next().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(e)) => Err(nats_err("pull a job", e)),
            None => Ok(None),
        }
    }

    /// The delivery of `message`, now held by this consumer; `None` for a message
    /// that is no job (terminated: redelivering it cannot help).
    async fn deliver(&self, message: jetstream::Message) -> Option<Delivery> {
        let (delivered, pending) = match message.info() {
            Ok(info) => (info.delivered, info.pending),
            Err(_) => (1, 0),
        };
        self.pending.store(
            usize::try_from(pending).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        let spec = match serde_json::from_slice::<JobSpec>(&message.payload) {
            Ok(spec) => spec,
            Err(e) => {
                error!(cause = %e, subject = %message.subject, "dropping a queued message that is no job");
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    warn!(cause = %e, "could not drop the message");
                }
                return None;
            }
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.held().insert(
            token,
            Held {
                message,
                heartbeat: None,
            },
        );
        Some(Delivery {
            id: spec.id,
            presets: Some(spec.presets),
            owner: 0,
            retries: u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX),
            stolen: false,
            token,
        })
    }

    /// Stops holding `delivery`'s message; `None` if this consumer does not hold it.
    fn release(&self, delivery: &Delivery) -> Option<jetstream::Message> {
        let held = self.held().remove(&delivery.token)?;
        held.stop();
        Some(held.message)
    }
}

impl Drop for JobConsumer {
    fn drop(&mut self) {
        // The jobs in hand are given up: without heartbeats the server hands them to
        // another worker after `ack_wait`, as after a crash.
        for held in self.held().values() {
            held.stop();
        }
    }
}

#[async_trait::async_trait]
impl Consumer for JobConsumer {
    async fn next(&self) -> Option<Delivery> {
        let mut closed = self.closed.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return None;
            }
            // A pull abandoned by `close` may still be answered: that job is then
            // delivered again after `ack_wait`, never lost.
            let pulled = tokio::select! {
                _ = closed.changed() => continue,
                pulled = self.pull() => pulled,
            };
            match pulled {
                Ok(Some(message)) => {
                    if let Some(d) = self.deliver(message).await {
                        return Some(d);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(cause = %e, "could not pull a job; retrying");
                    tokio::select! {
                        _ = closed.changed() => {}
                        _ = tokio::time::sleep(PULL_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Always `true` for a delivery this consumer holds: the server hands a message to
    /// one consumer at a time. (A worker stalled past `ack_wait` before starting may
    /// share the job with the next; the records' compare-and-swap settles who wins.)
    async fn start(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let Some(message) = self.held().get(&delivery.token).map(|h| h.message.clone()) else {
            return Ok(false);
        };
        message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| nats_err(format!("mark job {} in progress", delivery.id), e))?;
        // Three beats per deadline: one lost beat is not a lost job. Never a busy loop.
        let every = (self.ack_wait / 3).max(Duration::from_millis(100));
        let (id, beat) = (delivery.id.clone(), message);
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = beat.ack_with(AckKind::Progress).await {
                    // The next beat may get through; if none does before `ack_wait`,
                    // the job runs again elsewhere, which variant keys make harmless.
                    warn!(cause = %e, job_id = %id, "could not renew the job's ack deadline");
                }
            }
        });
        match self.held().get_mut(&delivery.token) {
            Some(held) => {
                held.stop();
                held.heartbeat = Some(heartbeat.abort_handle());
            }
            // Acked or retried meanwhile.
            None => heartbeat.abort(),
        }
        Ok(true)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let Some(message) = self.release(delivery) else {
            return Ok(());
        };
        // Waits for the server's confirmation: only then is the job out of the stream.
        message
            .double_ack()
            .await
            .map_err(|e| nats_err(format!("ack job {}", delivery.id), e))
    }

    async fn retry(&self, delivery: Delivery, wait: Duration) {
        let Some(message) = self.release(&delivery) else {
            return;
        };
        if let Err(e) = message.ack_with(AckKind::Nak(Some(wait))).await {
            // Unrenewed, the job is delivered again after `ack_wait` anyway.
            warn!(cause = %e, job_id = %delivery.id, "could not hand the job back for a retry");
        }
    }

    /// Stops the heartbeat and forgets the message: an ack of this old delivery could
    /// remove the job while its new owner still works on it.
    fn abandon(&self, delivery: &Delivery) {
        self.release(delivery);
    }

    fn waiting(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.closed.send_replace(true);
    }
}
