//! The pixpool image worker: one process, one job at a time (one worker ≈ one
//! core), fed by every front over its own Unix socket.
//!
//! # Layout
//! - [`server`]: the IPC accept loop and per-connection handshake/submit handling:
//!   the transport of the embedded queue and of job events.
//! - [`execute`]: running one job — begin, render, conclude — against the backend
//!   traits of `pixpool-store` alone ([`execute::Backend`]).
//!
//! With the embedded backend, a job is acknowledged only after its claim is durable
//! (`pixpool_store::embedded::ClaimQueue`), and the claim is dropped only once the
//! job's record is final. A worker that dies leaves its claims behind; the worker
//! that next starts in its slot takes them over, so no acknowledged job is lost.
#![deny(missing_docs)]

pub mod alloc;
pub mod execute;
pub mod server;

use std::future::Future;
use std::sync::Arc;

use pixpool_imaging::{Limits, Preset};
use pixpool_store::backend::Events;
use pixpool_store::embedded::{Bus, ClaimQueue, FileBlobs, FileRecords};
use pixpool_store::Store;
use tracing::{info, warn};

pub use execute::{ExecExit, MAX_ATTEMPTS, MAX_RETRIES};

/// Default depth of a worker's queue of accepted-but-not-started jobs. Past it
/// the worker rejects and the front tries the next worker.
pub const DEFAULT_QUEUE_DEPTH: usize = 64;

/// Job events buffered per front connection.
pub const EVENT_BUFFER: usize = 1024;

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's slot.
    pub slot: u32,
    /// How many worker slots the server has (to adopt claims of retired slots).
    pub workers: u32,
    /// The uploads directory.
    pub store: Store,
    /// Queue bound.
    pub queue_depth: usize,
    /// The presets this server knows, by name.
    pub presets: Vec<Preset>,
    /// Decoder limits.
    pub limits: Limits,
    /// Wall-clock limit of one job; past it the job fails and the process is replaced.
    pub job_timeout: std::time::Duration,
    /// Replace the process after this many jobs (0: never).
    pub recycle_after_jobs: u64,
    /// Replace the process when its RSS exceeds this after a job (0: never).
    pub recycle_rss_bytes: u64,
    /// When idle, take queued jobs from busy siblings (see [`pixpool_store::Store::steal`]).
    pub steal: bool,
    /// Kept up to date with the number of queued jobs (for heartbeats).
    pub queued: Arc<std::sync::atomic::AtomicUsize>,
    /// This process's metrics recorder.
    pub metrics: pixpool_metrics::Recorder,
    /// The distributed backend, connected (its consumer this worker's own); `None`:
    /// the embedded one, fed by the fronts over this worker's socket.
    pub shared: Option<execute::Backend>,
    /// Whether completion webhooks are configured (the embedded backend's outbox is
    /// then written), and the operator's endpoint.
    pub webhooks: Option<WebhookConfig>,
}

/// The webhooks a worker owes to the outbox.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// The operator's `--webhook-url`, if set.
    pub operator_url: Option<String>,
}

/// Default per-job time limit.
pub const DEFAULT_JOB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Drained on SIGTERM.
    Drained,
    /// Planned replacement (job count, memory, or a job that overran its time
    /// limit): the supervisor starts a fresh process in the slot at once, and
    /// it takes over the jobs still claimed.
    Replace,
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker's socket could not be bound.
    #[error("could not listen on {path}")]
    Listen {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The claims left by a previous run could not be read.
    #[error("could not recover claimed jobs")]
    Recover(#[source] pixpool_store::StoreError),
}

/// Runs the worker until `shutdown` resolves: then it stops taking jobs,
/// finishes the one in hand and returns. Jobs still queued stay claimed on disk
/// and are run by the next worker to start in this slot.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> Result<WorkerExit, WorkerError> {
    let config = Arc::new(config);
    let (backend, accept) = match config.shared.clone() {
        Some(backend) => (backend, None),
        None => {
            let (backend, accept) = embedded(&config)?;
            (backend, Some(accept))
        }
    };
    let queue = backend.queue.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut exec = tokio::spawn(execute::run_queue(config.clone(), backend, stop_rx));
    if accept.is_none() {
        info!("worker ready: pulling from the shared queue");
    }
    on_ready();
    // The queue depth, for the heartbeat the supervisor turns into STATUS=.
    let gauge = config.queued.clone();
    let depth_gauge = pixpool_metrics::Gauge::QueueDepth {
        worker: config.slot,
    };
    let metrics = config.metrics.clone();
    let watched = queue.clone();
    let gauge_task = tokio::spawn(async move {
        loop {
            let depth = watched.waiting();
            gauge.store(depth, std::sync::atomic::Ordering::Relaxed);
            metrics.set(depth_gauge.clone(), depth as f64);
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });

    let exit = tokio::select! {
        _ = shutdown => {
            info!(queued = queue.waiting(), "draining: finishing the job in hand");
            let _ = stop_tx.send(true);
            queue.close();
            if let Err(e) = exec.await {
                warn!(cause = %e, "job executor ended abnormally");
            }
            WorkerExit::Drained
        }
        ended = &mut exec => {
            let _ = stop_tx.send(true);
            queue.close();
            info!(reason = ?ended.ok(), queued = queue.waiting(), "worker will be replaced; queued jobs stay claimed for its successor");
            WorkerExit::Replace
        }
    };
    gauge_task.abort();
    if let Some(accept) = accept {
        accept.abort();
        let _ = std::fs::remove_file(config.store.worker_socket(config.slot));
    }
    info!("worker stopped");
    Ok(exit)
}

/// The embedded backend of worker `config.slot`: its claims (taken over from a
/// predecessor), the uploads directory, and the socket the fronts hand jobs and take
/// events through, served by the returned task.
fn embedded(
    config: &Arc<WorkerConfig>,
) -> Result<(execute::Backend, tokio::task::JoinHandle<()>), WorkerError> {
    let store = &config.store;
    let queue = ClaimQueue::open(
        store.clone(),
        config.slot,
        config.workers,
        config.queue_depth,
        config.steal,
    )
    .map_err(WorkerError::Recover)?;
    // Job events fan out to every connected front; a front that lags behind
    // by this many events skips some and re-reads the records.
    let bus = Arc::new(Bus::new(EVENT_BUFFER));
    let backend = execute::Backend {
        records: Arc::new(FileRecords::new(store.clone())),
        blobs: Arc::new(FileBlobs::new(store.clone())),
        events: bus.clone(),
        queue: queue.clone(),
        webhooks: config.webhooks.as_ref().map(|w| execute::Webhooks {
            outbox: Arc::new(pixpool_store::embedded::FileOutbox::new(store.clone())),
            operator_url: w.operator_url.clone(),
        }),
    };
    let socket = store.worker_socket(config.slot);
    let listener = server::bind(&socket)?;
    let events: Arc<dyn Events> = bus;
    let accept = tokio::spawn(server::serve(listener, config.clone(), queue, events));
    info!(socket = %socket.display(), "worker ready");
    Ok((backend, accept))
}
