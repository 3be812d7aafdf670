//! Running jobs, one at a time, in three steps:
//!
//! - [`begin`]: take the delivery, read the record, mark it `processing`, fetch the
//!   original;
//! - `render`: decode, resize and encode on a blocking thread; each variant is stored
//!   and announced as soon as it is encoded;
//! - [`conclude`]: flush the variants, write the final record (`done` or `failed`),
//!   ack the delivery, announce the end. It runs while the next job renders, so the
//!   fsyncs (a few milliseconds a job) do not leave the CPU idle.
//!
//! Every failure is a [`JobError`], which decides its problem document and whether
//! the job is retried. A failure on the server's side (a full disk) queues the job
//! again after a pause that doubles each time ([`retry_backoff`]), never at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pixpool_imaging::{ImagingError, Preset, Progress};
use pixpool_metrics::{Counter, Gauge, Histogram, JobOutcome, Recorder, Stage};
use pixpool_model::{EventKind, JobEvent, JobId};
use pixpool_store::backend::{
    Blobs, Consumer, Delivery, Durability, Events, Outbox, Records, VariantKey,
};
use pixpool_store::outbox::{Destination, OutboxEntry};
use pixpool_store::record::now_rfc3339;
use pixpool_store::{
    error_chain, JobRecord, JobState, OutputRecord, Problem, StageMillis, StoreError, WebhookState,
    WebhookStatus,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument};

use crate::WorkerConfig;

/// A job started this many times without finishing (its worker crashed or was
/// killed each time, or the server failed it) is marked failed instead of
/// being run again: a poison image must not take workers down forever.
pub const MAX_ATTEMPTS: u32 = 3;

/// Server-side failures of one job (an output or its record that could not be written:
/// a full disk) that this process retries; at the next, the job is failed. Its runs are
/// also bounded by [`MAX_ATTEMPTS`], counted in its record when the record can be written.
pub const MAX_RETRIES: u32 = 5;

/// The wait before the first retry of a job that failed on the server side; it doubles
/// with each retry (0.25, 0.5, 1, 2, 4 s: about 8 s for a full disk to be freed before
/// the job is failed), up to [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two retries: reached only while even the `failed` record
/// cannot be written, so a full disk costs a log line and a few syscalls per job this
/// often, not a spinning core.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait before retry `n` (from 1) of a job.
pub fn retry_backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    RETRY_BACKOFF
        .saturating_mul(1 << doublings)
        .min(RETRY_BACKOFF_MAX)
}

/// What the worker's jobs run against: the backend's parts.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Job records.
    pub records: Arc<dyn Records>,
    /// Originals and variants.
    pub blobs: Arc<dyn Blobs>,
    /// Progress events.
    pub events: Arc<dyn Events>,
    /// This worker's deliveries.
    pub queue: Arc<dyn Consumer>,
    /// Where completion webhooks are owed; `None`: no destination is configured.
    pub webhooks: Option<Webhooks>,
}

/// The webhook outbox a concluding job writes to, and the operator's destination.
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// The outbox (the courier delivers it).
    pub outbox: Arc<dyn Outbox>,
    /// The operator's `--webhook-url`, if set; an upload's `callback_url` is in its
    /// record.
    pub operator_url: Option<String>,
}

impl Webhooks {
    /// The deliveries owed for `rec` reaching its final state.
    fn owed(&self, rec: &JobRecord) -> Vec<OutboxEntry> {
        let timestamp = rec.finished_at.clone().unwrap_or_else(now_rfc3339);
        [
            (Destination::Operator, self.operator_url.as_ref()),
            (Destination::Callback, rec.callback_url.as_ref()),
        ]
        .into_iter()
        .filter_map(|(destination, url)| {
            Some(OutboxEntry::new(
                rec.id.clone(),
                rec.state,
                destination,
                url?.clone(),
                timestamp.clone(),
            ))
        })
        .collect()
    }
}

/// Why a job failed, or could not go on for now.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Started [`MAX_ATTEMPTS`] times without finishing.
    #[error("processing was interrupted {0} times (the worker crashed or was killed)")]
    TooManyAttempts(u32),
    /// The job names a preset this server does not know (any more).
    #[error("no preset named {0:?}")]
    UnknownPreset(String),
    /// The image itself: undecodable, or over a limit.
    #[error(transparent)]
    Image(ImagingError),
    /// Processing failed on the server's side.
    #[error(transparent)]
    Processing(ImagingError),
    /// The job's thread panicked.
    #[error("the job's thread failed: {0}")]
    Crashed(String),
    /// Storage refused a record, the original or a variant.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The job overran the time limit of one job.
    #[error(
        "processing did not finish within the {} s time limit of one job; \
         the server may be busy: try again later",
        .0.as_secs_f64()
    )]
    Timeout(Duration),
    /// The job was deleted while it ran: nothing is recorded, what it stored goes.
    #[error("the job was deleted")]
    Cancelled,
}

impl JobError {
    /// The problem document recorded for a job that ends with this error: the one place
    /// a worker's failure gets its type and status.
    pub fn to_problem(&self) -> Problem {
        let detail = error_chain(self);
        let (kind, title, status) = match self {
            JobError::TooManyAttempts(_) => ("too-many-attempts", "The job was abandoned", 500),
            JobError::UnknownPreset(_) => ("unknown-preset", "Unknown preset", 400),
            // The same type as the front's refusal of an image over a limit.
            JobError::Image(e) if e.is_limit_exceeded() => {
                ("limit-exceeded", "Image exceeds a limit", 422)
            }
            // As the front refuses it when it sees the frame header before the 202.
            JobError::Image(e) if e.is_unsupported() => {
                ("unsupported-format", "Unsupported image format", 415)
            }
            JobError::Image(_) => (
                "unprocessable-image",
                "The image could not be processed",
                422,
            ),
            JobError::Processing(_) | JobError::Crashed(_) => (
                "processing-error",
                "The server could not process the image",
                500,
            ),
            // A full disk (or quota) has its own type, so an operator reading the
            // record knows what to fix.
            JobError::Storage(e) if disk_full(e) => (
                "storage-full",
                "The server has no room for the outputs",
                507,
            ),
            JobError::Storage(_) => ("storage-error", "The server could not store the job", 507),
            // The server's fault as much as the image's: a 5xx lets an identical upload
            // run again (dedup keeps a failure below 500 for good).
            JobError::Timeout(_) => (
                "processing-timeout",
                "The server ran out of time for this image",
                503,
            ),
            // Never recorded (the record is gone); named for the logs.
            JobError::Cancelled => ("cancelled", "The job was deleted", 410),
        };
        Problem::new(kind, title, status, detail)
    }

    /// Whether another run may succeed (the server's trouble, not the image's).
    fn is_transient(&self) -> bool {
        matches!(
            self,
            JobError::Processing(_) | JobError::Crashed(_) | JobError::Storage(_)
        )
    }
}

/// Whether `e` comes from a full disk or an exhausted quota.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// What became of one run of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All outputs written.
    Done,
    /// Final failure recorded.
    Failed,
    /// A server-side failure (disk): run it again after a pause ([`retry_backoff`]).
    Retry,
    /// Nothing to do (already final, taken by a sibling, or no record).
    Skipped,
}

/// Why the executor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecExit {
    /// `stop` turned true (drain); the job in hand finished.
    Stopped,
    /// Time for a fresh process (job count or memory high-water mark reached).
    Recycle,
    /// A job overran the per-job timeout; it is marked failed, and its thread
    /// cannot be stopped: the process must be replaced.
    JobTimedOut,
}

/// Job events of one job, numbered by its attempt.
#[derive(Debug, Clone)]
struct Emitter {
    events: Arc<dyn Events>,
    id: JobId,
}

impl Emitter {
    fn emit(&self, kind: EventKind) {
        self.events.publish(JobEvent {
            id: self.id.clone(),
            kind,
        });
    }
}

/// A job in this worker's hands, its record marked `processing`.
#[derive(Debug)]
struct Running {
    delivery: Delivery,
    rec: JobRecord,
    /// The revision of `rec` as stored: the final update is a compare-and-swap on it.
    revision: u64,
    emitter: Emitter,
}

/// What rendering produced.
#[derive(Debug, Default)]
struct Rendered {
    /// Every variant stored so far, removed again if the job fails.
    stored: Vec<VariantKey>,
    /// The records of the outputs, by preset index, each preset's formats in order.
    outputs: Vec<Vec<OutputRecord>>,
    stage_ms: StageMillis,
    placeholder: Option<pixpool_store::Placeholder>,
    /// The job was concluded without waiting for the render (it overran its time):
    /// nothing more may be stored, or it would outlive the failed job.
    abandoned: bool,
}

/// A job to conclude: its result, and what was stored on the way.
#[derive(Debug)]
struct Concluding {
    job: Running,
    result: Result<(), JobError>,
    rendered: Rendered,
    started: Instant,
}

/// Runs delivered jobs until `stop` turns true; the job in hand always finishes, and
/// so does the conclusion of the one before it.
pub async fn run_queue(
    config: Arc<WorkerConfig>,
    backend: Backend,
    mut stop: watch::Receiver<bool>,
) -> ExecExit {
    let mut pending: Option<tokio::task::JoinHandle<()>> = None;
    let exit = run_jobs(&config, &backend, &mut stop, &mut pending).await;
    if let Some(p) = pending.take() {
        let _ = p.await;
    }
    exit
}

async fn run_jobs(
    config: &Arc<WorkerConfig>,
    backend: &Backend,
    stop: &mut watch::Receiver<bool>,
    pending: &mut Option<tokio::task::JoinHandle<()>>,
) -> ExecExit {
    let mut jobs_run: u64 = 0;
    loop {
        if *stop.borrow() {
            return ExecExit::Stopped;
        }
        let delivery = tokio::select! {
            d = backend.queue.next() => match d {
                Some(d) => d,
                None => return ExecExit::Stopped,
            },
            _ = stop.changed() => continue,
            // Nothing to render yet: let the pending conclusion finish meanwhile.
            _ = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                *pending = None;
                continue;
            }
        };
        if delivery.stolen {
            config.metrics.inc(Counter::JobsStolen {
                worker: config.slot,
            });
        }
        let started = Instant::now();
        let span = tracing::info_span!("job", job_id = %delivery.id, slot = config.slot);
        let job = match begin(config, backend, delivery)
            .instrument(span.clone())
            .await
        {
            Ok(job) => job,
            Err(outcome) => {
                account(&config.metrics, outcome, started);
                continue;
            }
        };
        let busy = Gauge::WorkerBusy {
            worker: config.slot,
        };
        config.metrics.set(busy.clone(), 1.0);
        let rendered = Arc::new(Mutex::new(Rendered::default()));
        let render = {
            let (cfg, blobs, records, emitter, out) = (
                config.clone(),
                backend.blobs.clone(),
                backend.records.clone(),
                job.emitter.clone(),
                rendered.clone(),
            );
            let (rec, presets) = (job.rec.clone(), job.delivery.presets.clone());
            let span = span.clone();
            tokio::task::spawn_blocking(move || {
                let store = Storage {
                    blobs: &*blobs,
                    records: &*records,
                };
                span.in_scope(|| render(&cfg, store, &emitter, &rec, presets, &out))
            })
        };
        let ran = tokio::time::timeout(config.job_timeout, render).await;
        config.metrics.set(busy, 0.0);
        let timed_out = ran.is_err();
        let result = match ran {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(JobError::Crashed(e.to_string())),
            Err(_) => {
                error!(
                    job_id = %job.delivery.id,
                    timeout_s = config.job_timeout.as_secs_f64(),
                    "job overran its time limit; failing it and replacing this worker"
                );
                Err(JobError::Timeout(config.job_timeout))
            }
        };
        // What the render thread stored so far (after a timeout it runs on, but
        // stores nothing more).
        let rendered = {
            let mut g = rendered.lock().unwrap_or_else(|p| p.into_inner());
            let taken = std::mem::take(&mut *g);
            g.abandoned = true;
            taken
        };
        let work = Concluding {
            job,
            result,
            rendered,
            started,
        };
        if let Some(p) = pending.take() {
            let _ = p.await;
        }
        let (cfg, be) = (config.clone(), backend.clone());
        let handle = tokio::spawn(
            async move {
                let outcome = conclude(&be, work).await;
                account(&cfg.metrics, outcome, started);
            }
            .instrument(span),
        );
        if timed_out {
            let _ = handle.await;
            // Let the `failed` event reach the fronts before the process goes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            config.metrics.inc(Counter::Jobs {
                outcome: JobOutcome::Timeout,
            });
            return ExecExit::JobTimedOut;
        }
        *pending = Some(handle);
        jobs_run += 1;
        if config.recycle_after_jobs > 0 && jobs_run >= config.recycle_after_jobs {
            info!(jobs_run, "recycling after the configured number of jobs");
            return ExecExit::Recycle;
        }
        if config.recycle_rss_bytes > 0 {
            if let Some(rss) = current_rss_bytes() {
                if rss > config.recycle_rss_bytes {
                    info!(
                        rss,
                        limit = config.recycle_rss_bytes,
                        "recycling: memory high-water mark reached"
                    );
                    return ExecExit::Recycle;
                }
            }
        }
    }
}

/// Counts a job's outcome in the metrics.
fn account(metrics: &Recorder, outcome: Outcome, started: Instant) {
    let label = match outcome {
        Outcome::Done => JobOutcome::Done,
        Outcome::Failed => JobOutcome::Failed,
        Outcome::Retry => JobOutcome::Retry,
        Outcome::Skipped => JobOutcome::Skipped,
    };
    metrics.inc(Counter::Jobs { outcome: label });
    if matches!(outcome, Outcome::Done | Outcome::Failed) {
        metrics.observe(Histogram::JobDuration, started.elapsed());
    }
}

/// Queues `delivery` again once the backoff its retries so far call for has passed.
fn retry_later(queue: &Arc<dyn Consumer>, mut delivery: Delivery) {
    delivery.retries = delivery.retries.saturating_add(1);
    let wait = retry_backoff(delivery.retries);
    warn!(
        job_id = %delivery.id,
        retry = delivery.retries,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "job failed on the server side; retrying after a pause"
    );
    let queue = queue.clone();
    tokio::spawn(async move { queue.retry(delivery, wait).await });
}

/// This process's resident set size, from /proc.
pub fn current_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Takes the delivery into this worker's hands and marks its record `processing`.
/// `Err`: nothing to render (skipped, retried later, or already concluded).
async fn begin(
    config: &Arc<WorkerConfig>,
    backend: &Backend,
    delivery: Delivery,
) -> Result<Running, Outcome> {
    // A sibling may have taken it meanwhile.
    match backend.queue.start(&delivery).await {
        Ok(true) => {}
        Ok(false) => {
            debug!("a sibling took this job; skipping it");
            return Err(Outcome::Skipped);
        }
        Err(e) => {
            error!(cause = %e, "could not take the job; will retry");
            retry_later(&backend.queue, delivery);
            return Err(Outcome::Retry);
        }
    }
    let read = match backend.records.get(&delivery.id).await {
        Ok(Some(read)) => read,
        Ok(None) => {
            warn!("delivered job has no record; dropping it");
            drop_job(backend, &delivery, "no record").await;
            return Err(Outcome::Skipped);
        }
        // The records' service not answering (a leader election): the job is fine,
        // only out of reach for now.
        Err(e) if e.is_unavailable() => {
            error!(cause = %e, "could not read the job's record; will retry");
            retry_later(&backend.queue, delivery);
            return Err(Outcome::Retry);
        }
        Err(e) => {
            error!(cause = %e, "delivered job's record is unreadable; dropping it");
            drop_job(backend, &delivery, "unreadable record").await;
            return Err(Outcome::Skipped);
        }
    };
    let (mut rec, revision) = (read.value, read.revision);
    if rec.state.is_final() {
        drop_job(backend, &delivery, "already final").await;
        return Err(Outcome::Skipped);
    }
    let emitter = Emitter {
        events: backend.events.clone(),
        id: rec.id.clone(),
    };
    let mut job = Running {
        delivery,
        rec,
        revision,
        emitter,
    };
    if job.rec.attempts >= MAX_ATTEMPTS {
        warn!(
            attempts = job.rec.attempts,
            "job keeps failing its worker; marking it failed"
        );
        let err = JobError::TooManyAttempts(job.rec.attempts);
        return Err(conclude_now(backend, job, Err(err)).await);
    }
    rec = job.rec.clone();
    rec.state = JobState::Processing;
    rec.attempts += 1;
    rec.worker = Some(config.slot);
    rec.started_at = Some(now_rfc3339());
    // Provisional: lost in a power cut, the job is back to its queued record and runs
    // again (its attempt uncounted), which the queue guarantees anyway. A crash of this
    // process keeps it (page cache), so a poison job's attempts add up.
    match backend
        .records
        .update(&rec, job.revision, Durability::Provisional)
        .await
    {
        Ok(revision) => {
            job.rec = rec;
            job.revision = revision;
        }
        Err(StoreError::Conflict { .. }) => {
            warn!("the record changed under this worker; leaving the job to its new owner");
            backend.queue.abandon(&job.delivery);
            return Err(Outcome::Skipped);
        }
        Err(e) if job.delivery.retries < MAX_RETRIES => {
            error!(cause = %e, retry = job.delivery.retries, "could not mark the job processing");
            retry_later(&backend.queue, job.delivery);
            return Err(Outcome::Retry);
        }
        // Most likely the `failed` record cannot be written either; then the job is
        // retried, at the longest backoff, until it can.
        Err(e) => return Err(conclude_now(backend, job, Err(e.into())).await),
    }
    info!(attempt = job.rec.attempts, "processing");
    job.emitter.emit(EventKind::Processing {
        attempt: job.rec.attempts,
    });
    Ok(job)
}

/// Acks a delivery there is nothing to do for.
async fn drop_job(backend: &Backend, delivery: &Delivery, why: &str) {
    if let Err(e) = backend.queue.ack(delivery).await {
        warn!(cause = %e, "could not drop the job ({why})");
    }
}

/// Concludes a job that never rendered.
async fn conclude_now(backend: &Backend, job: Running, result: Result<(), JobError>) -> Outcome {
    let work = Concluding {
        job,
        result,
        rendered: Rendered::default(),
        started: Instant::now(),
    };
    conclude(backend, work).await
}

/// Where a render reads and writes.
#[derive(Clone, Copy)]
struct Storage<'a> {
    blobs: &'a dyn Blobs,
    records: &'a dyn Records,
}

impl Storage<'_> {
    /// Whether the job's record is gone (deleted): the render stops at its next stage.
    /// An unreadable record is no proof of it.
    fn deleted(&self, runtime: &tokio::runtime::Handle, id: &JobId) -> bool {
        matches!(runtime.block_on(self.records.get(id)), Ok(None))
    }
}

/// Decodes, resizes and encodes; stores and announces each variant as it is made.
/// Blocking: runs on its own thread.
fn render(
    config: &WorkerConfig,
    store: Storage<'_>,
    emitter: &Emitter,
    rec: &JobRecord,
    presets: Option<Vec<String>>,
    out: &Mutex<Rendered>,
) -> Result<(), JobError> {
    let blobs = store.blobs;
    let runtime = tokio::runtime::Handle::current();
    let names = presets.unwrap_or_else(|| rec.presets.clone());
    let presets = resolve(&config.presets, &names).map_err(JobError::UnknownPreset)?;
    let started = Instant::now();
    let data = runtime.block_on(blobs.get_original(&rec.source.path))?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let attempt = rec.attempts;
    let lock = || out.lock().unwrap_or_else(|p| p.into_inner());
    lock().outputs = vec![Vec::new(); presets.len()];
    // Outputs are made largest first; events are numbered in that order.
    let mut made: u32 = 0;
    let mut store_error: Option<StoreError> = None;
    let mut cancelled = false;
    let mut on_progress = |p: Progress<'_>| -> Result<(), pixpool_imaging::OutputSinkError> {
        // Once decoded (the long stage), one look at whether the job still exists: a
        // deleted one stops here. One read a job, not one an output; a deletion later
        // than this is found by the conclusion, which removes what was stored.
        if matches!(p, Progress::Decoded { .. }) && store.deleted(&runtime, &rec.id) {
            cancelled = true;
            return Err("the job was deleted".into());
        }
        match p {
            Progress::Decoded { .. } => emitter.emit(EventKind::Resizing { attempt }),
            Progress::Output { index, output } => {
                let key = VariantKey::new(&rec.id, &output.preset, output.format.extension());
                // Hashed from the bytes in hand: never read back from storage.
                let etag = pixpool_store::output_etag(&output.data);
                // Held while storing: a conclusion that abandons the render waits for
                // this variant, and so removes it with the others.
                let mut g = lock();
                if g.abandoned {
                    return Err("the job was abandoned".into());
                }
                let stored =
                    runtime.block_on(blobs.put_variant(&key, Bytes::copy_from_slice(&output.data)));
                let path = match stored {
                    Ok(path) => path,
                    Err(e) => {
                        let msg = e.to_string();
                        store_error = Some(e);
                        return Err(msg.into());
                    }
                };
                let record = OutputRecord {
                    preset: output.preset.clone(),
                    width: output.width,
                    height: output.height,
                    bytes: output.bytes,
                    content_type: output.content_type.clone(),
                    path,
                    // The negotiated URL serves the fallback to anyone; an alternative
                    // is named, for a client that wants it whatever it sends.
                    url: if output.fallback {
                        format!("/images/{}/{}", rec.id, output.preset)
                    } else {
                        format!(
                            "/images/{}/{}?format={}",
                            rec.id,
                            output.preset,
                            output.format.name()
                        )
                    },
                    etag,
                };
                g.stored.push(key);
                if let Some(slot) = g.outputs.get_mut(index) {
                    slot.push(record.clone());
                }
                drop(g);
                // After the variant is stored: a client told of it can fetch it.
                emitter.emit(EventKind::Output {
                    attempt,
                    index: made,
                    output: record,
                });
                made += 1;
            }
        }
        Ok(())
    };
    let result =
        pixpool_imaging::process_with_progress(&data, &presets, &config.limits, &mut on_progress);
    drop(data);
    match result {
        Ok(processed) => {
            let t = processed.timings;
            for (stage, ms) in [
                (Stage::Decode, read_ms + t.decode_ms),
                (Stage::Resize, t.resize_ms),
                (Stage::Encode, t.encode_ms),
            ] {
                // `try_`: a timing that is not a valid duration must not panic the worker.
                let took = Duration::try_from_secs_f64(ms / 1e3).unwrap_or_default();
                config.metrics.observe(Histogram::JobStage { stage }, took);
            }
            let mut g = lock();
            g.stage_ms = StageMillis {
                decode: read_ms + t.decode_ms,
                resize: t.resize_ms,
                encode: t.encode_ms,
            };
            g.placeholder = Some(processed.placeholder);
            Ok(())
        }
        Err(_) if cancelled => Err(JobError::Cancelled),
        Err(_) if store_error.is_some() => Err(store_error.take().expect("checked").into()),
        Err(e) if e.is_input_error() => {
            warn!(cause = %error_chain(&e), "image rejected");
            Err(JobError::Image(e))
        }
        Err(e) => Err(JobError::Processing(e)),
    }
}

/// Writes the job's final state and acks it; or, for a transient failure with tries
/// left, queues it again. In that order: a crash in between re-runs a finished job,
/// which is harmless, and never loses one.
async fn conclude(backend: &Backend, work: Concluding) -> Outcome {
    let Concluding {
        mut job,
        mut result,
        rendered,
        started,
    } = work;
    if matches!(result, Err(JobError::Cancelled)) {
        return cancelled(backend, &job, &rendered).await;
    }
    if result.is_ok() {
        if let Err(e) = backend.blobs.sync_variants(&rendered.stored).await {
            result = Err(e.into());
        }
    }
    if let Err(e) = &result {
        let retry = e.is_transient()
            && job.rec.attempts < MAX_ATTEMPTS
            && job.delivery.retries < MAX_RETRIES;
        if retry {
            error!(
                cause = %error_chain(e),
                attempt = job.rec.attempts,
                retry = job.delivery.retries,
                "processing failed on the server side"
            );
            // A worker stalled long enough for its storage calls to time out may have
            // been presumed dead: handing back a job it no longer owns would disturb
            // the worker that does.
            if superseded(backend, &job).await {
                warn!("the record changed under this worker; leaving the job to its new owner");
                backend.queue.abandon(&job.delivery);
                return Outcome::Skipped;
            }
            retry_later(&backend.queue, job.delivery);
            return Outcome::Retry;
        }
    }
    let rec = &mut job.rec;
    let outcome = match &result {
        Ok(()) => {
            rec.state = JobState::Done;
            rec.error = None;
            rec.outputs = rendered.outputs.iter().flatten().cloned().collect();
            rec.stage_ms = Some(rendered.stage_ms);
            rec.placeholder = rendered.placeholder.clone();
            Outcome::Done
        }
        Err(e) => {
            rec.state = JobState::Failed;
            rec.outputs.clear();
            rec.placeholder = None;
            rec.error = Some(e.to_problem());
            Outcome::Failed
        }
    };
    rec.finished_at = Some(now_rfc3339());
    // The webhooks are owed before the state is visible: a crash after this re-runs
    // the job, which writes the same entries again; one before it leaves no trace.
    if let Some(webhooks) = &backend.webhooks {
        let owed = webhooks.owed(rec);
        if !owed.is_empty() {
            rec.webhook = Some(WebhookStatus {
                state: WebhookState::Pending,
                attempts: 0,
                last_status: None,
            });
        }
        for entry in &owed {
            if let Err(e) = webhooks.outbox.put(entry).await {
                error!(cause = %e, "could not write the job's webhook to the outbox; will retry");
                retry_later(&backend.queue, job.delivery);
                return Outcome::Retry;
            }
        }
    }
    match backend
        .records
        .update(rec, job.revision, Durability::Durable)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            if matches!(backend.records.get(&job.rec.id).await, Ok(None)) {
                return cancelled(backend, &job, &rendered).await;
            }
            warn!("the record changed under this worker; its result is dropped");
            backend.queue.abandon(&job.delivery);
            return Outcome::Skipped;
        }
        Err(e) => {
            error!(cause = %e, "could not write the final record; will retry");
            retry_later(&backend.queue, job.delivery);
            return Outcome::Retry;
        }
    }
    // A failed job leaves no variant behind; removed only once the record says so, since
    // before, a worker that took the job over may have stored the same keys.
    if outcome == Outcome::Failed {
        if let Err(e) = backend.blobs.delete_variants(&rendered.stored).await {
            warn!(cause = %e, "could not remove the variants of a failed job");
        }
    }
    if let Err(e) = backend.queue.ack(&job.delivery).await {
        warn!(cause = %e, "could not drop the claim");
    }
    // After the record is durable: a client told "done" can read the outputs.
    job.emitter.emit(EventKind::Finished {
        attempt: rec.attempts,
        state: rec.state,
    });
    match outcome {
        Outcome::Done => info!(
            ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            outputs = rec.outputs.len(),
            "job done"
        ),
        _ => warn!(problem = ?rec.error.as_ref().map(|p| &p.kind), "job failed"),
    }
    outcome
}

/// A job deleted while this worker had it: what it stored goes (the deletion could
/// not see it), its webhooks are not owed, and the delivery is done with.
async fn cancelled(backend: &Backend, job: &Running, rendered: &Rendered) -> Outcome {
    info!("the job was deleted while it ran; dropping it and what it stored");
    if let Err(e) = backend.blobs.delete_variants(&rendered.stored).await {
        warn!(cause = %e, "could not remove the variants of a deleted job");
    }
    // The record is gone; this removes the rest again (idempotent), the webhooks this
    // worker owed just before it found out included.
    let parts = pixpool_store::remove::JobParts {
        records: &*backend.records,
        blobs: &*backend.blobs,
        outbox: backend.webhooks.as_ref().map(|w| &*w.outbox),
    };
    let _ = pixpool_store::remove::remove_job(parts, &job.rec).await;
    if let Err(e) = backend.queue.ack(&job.delivery).await {
        warn!(cause = %e, "could not drop the claim of a deleted job");
    }
    Outcome::Skipped
}

/// Whether the job's record moved past the revision this worker wrote (another worker
/// took the job over). An unreadable record is not proof of it.
async fn superseded(backend: &Backend, job: &Running) -> bool {
    matches!(
        backend.records.get(&job.rec.id).await,
        Ok(Some(read)) if read.revision != job.revision
    )
}

fn resolve(known: &[Preset], names: &[String]) -> Result<Vec<Preset>, String> {
    names
        .iter()
        .map(|n| {
            known
                .iter()
                .find(|p| &p.name == n)
                .cloned()
                .ok_or_else(|| n.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deleted job's variants are found by the store without asking imaging.
    #[test]
    fn the_store_knows_every_output_extension() {
        let mut ours: Vec<&str> = pixpool_imaging::OutputFormat::ALL
            .iter()
            .map(|f| f.extension())
            .collect();
        let mut store = pixpool_store::remove::VARIANT_EXTENSIONS.to_vec();
        ours.sort_unstable();
        store.sort_unstable();
        assert_eq!(ours, store);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_bound() {
        let waits: Vec<u128> = (1..=9).map(|n| retry_backoff(n).as_millis()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
        );
        assert_eq!(retry_backoff(u32::MAX), RETRY_BACKOFF_MAX);
        // The retries a job gets before it is failed fit in a few seconds.
        let spent: Duration = (1..=MAX_RETRIES).map(retry_backoff).sum();
        assert!(spent < Duration::from_secs(10), "{spent:?}");
    }

    #[test]
    fn every_job_error_has_one_problem_and_a_full_disk_says_so() {
        let full = StoreError::Blob {
            key: "processed/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let other = StoreError::Task("boom".into());
        for (err, kind, status) in [
            (JobError::TooManyAttempts(3), "too-many-attempts", 500),
            (JobError::UnknownPreset("x".into()), "unknown-preset", 400),
            (JobError::Storage(full), "storage-full", 507),
            (JobError::Storage(other), "storage-error", 507),
            (
                JobError::Timeout(Duration::from_secs(2)),
                "processing-timeout",
                503,
            ),
        ] {
            let p = err.to_problem();
            assert_eq!(
                (p.kind.as_str(), p.status),
                (format!("urn:pixpool:problem:{kind}").as_str(), status),
                "{err}"
            );
            assert!(!p.detail.is_empty());
        }
    }
}
