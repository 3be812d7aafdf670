//! Routing jobs to workers: one persistent IPC link per worker, round-robin
//! over the links that are up, skipping a worker that is down or full.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pixpool_protocol::{
    FrameReader, FrameWriter, Hello, JobSpec, Reject, Role, ToFront, ToWorker, PROTOCOL_VERSION,
};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use pixpool_store::backend::{EnqueueError, Enqueued, Events, Queue};
use pixpool_store::embedded::Bus;
use pixpool_store::{JobId, Store, StoreError};

/// How long a front waits for a worker's ack (the claim's fsync) before it
/// gives up on that worker and tries the next.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a submit waits for some worker link to come up before it answers 503.
pub const WAIT_FOR_WORKER: Duration = Duration::from_secs(3);

/// Reconnect delays after a link drops: start fast (a respawned worker is
/// back within milliseconds), back off to a cap so a dead slot costs nothing.
const RECONNECT_MIN: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// A worker took the job.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// The worker's slot.
    pub worker: u32,
    /// Its queue depth after taking the job.
    pub queue_depth: u32,
}

/// Why no worker took the job.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No link is up.
    #[error("no image worker is available")]
    NoWorker,
    /// Every live worker's queue is full.
    #[error("every image worker is busy; retry shortly")]
    AllBusy,
    /// Workers failed to claim the job.
    #[error("no image worker could accept the job")]
    Failed,
}

#[derive(Debug)]
enum LinkError {
    Down,
    Rejected(Reject),
    Timeout,
}

#[derive(Debug)]
struct Request {
    job: JobSpec,
    reply: oneshot::Sender<Result<u32, LinkError>>,
}

#[derive(Debug)]
struct Link {
    slot: u32,
    tx: mpsc::Sender<Request>,
    up: Arc<AtomicBool>,
    /// When this worker last said its queue was full (ms since `epoch`).
    full_at: AtomicU64,
}

/// How long a worker's "queue full" answer counts as saturation for
/// readiness (it clears itself: a saturated front gets no traffic to clear it).
const SATURATION_MEMORY: Duration = Duration::from_secs(2);

/// The front's view of every worker.
#[derive(Debug)]
pub struct Dispatcher {
    /// One per worker slot.
    links: Vec<Link>,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Time origin of the links' `full_at`.
    epoch: std::time::Instant,
    /// Where the workers' claims are (whether a job is queued).
    store: Store,
}

impl Dispatcher {
    /// Starts one link task per worker socket.
    /// Events the workers send go to `bus`.
    pub fn start(
        store: Store,
        front_slot: u32,
        sockets: Vec<PathBuf>,
        bus: Arc<Bus>,
    ) -> Dispatcher {
        let links = sockets
            .into_iter()
            .enumerate()
            .map(|(i, path)| {
                let slot = i as u32;
                let (tx, rx) = mpsc::channel(256);
                let up = Arc::new(AtomicBool::new(false));
                let span = tracing::info_span!("link", worker = slot);
                tokio::spawn(
                    link_task(front_slot, path, rx, up.clone(), bus.clone()).instrument(span),
                );
                Link {
                    slot,
                    tx,
                    up,
                    full_at: AtomicU64::new(0),
                }
            })
            .collect();
        Dispatcher {
            links,
            next: AtomicUsize::new(0),
            epoch: std::time::Instant::now(),
            store,
        }
    }

    /// How many links are up now.
    pub fn workers_up(&self) -> usize {
        self.links
            .iter()
            .filter(|l| l.up.load(Ordering::Relaxed))
            .count()
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "never".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether every live worker refused a job as full in the last moments.
    pub fn all_saturated(&self) -> bool {
        let now = self.now_ms();
        let recent = |l: &Link| {
            let t = l.full_at.load(Ordering::Relaxed);
            t != 0 && now.saturating_sub(t) < SATURATION_MEMORY.as_millis() as u64
        };
        let mut live = self
            .links
            .iter()
            .filter(|l| l.up.load(Ordering::Relaxed))
            .peekable();
        live.peek().is_some() && live.all(recent)
    }

    /// Hands `job` to the next worker in turn that takes it.
    pub async fn submit(&self, job: &JobSpec) -> Result<Ack, DispatchError> {
        let n = self.links.len();
        if n == 0 {
            return Err(DispatchError::NoWorker);
        }
        // At start-up, or while a worker is being replaced (respawned, recycled,
        // rolled by SIGHUP), links come back within milliseconds: rather than
        // refuse, keep trying for a little while — unless the workers are
        // merely full, which is back-pressure to pass on at once.
        let deadline = tokio::time::Instant::now() + WAIT_FOR_WORKER;
        loop {
            match self.try_once(job, n).await {
                Ok(ack) => return Ok(ack),
                Err(DispatchError::AllBusy) => return Err(DispatchError::AllBusy),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// One round-robin pass over the live links.
    async fn try_once(&self, job: &JobSpec, n: usize) -> Result<Ack, DispatchError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let (mut busy, mut tried) = (0, 0);
        for i in 0..n {
            let link = &self.links[(start + i) % n];
            if !link.up.load(Ordering::Relaxed) {
                continue;
            }
            tried += 1;
            let (reply, rx) = oneshot::channel();
            if link
                .tx
                .send(Request {
                    job: job.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                continue;
            }
            let answer = match tokio::time::timeout(ACK_TIMEOUT, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(LinkError::Down),
                Err(_) => Err(LinkError::Timeout),
            };
            match answer {
                Ok(queue_depth) => {
                    link.full_at.store(0, Ordering::Relaxed);
                    return Ok(Ack {
                        worker: link.slot,
                        queue_depth,
                    });
                }
                Err(LinkError::Rejected(Reject::QueueFull)) => {
                    link.full_at.store(self.now_ms(), Ordering::Relaxed);
                    busy += 1
                }
                Err(e) => {
                    debug!(worker = link.slot, cause = ?e, "worker did not take the job; trying the next")
                }
            }
        }
        Err(match (tried, busy) {
            (0, _) => DispatchError::NoWorker,
            (t, b) if t == b => DispatchError::AllBusy,
            _ => DispatchError::Failed,
        })
    }
}

/// The embedded queue's front half: a job is queued once a worker has claimed it.
#[async_trait::async_trait]
impl Queue for Dispatcher {
    async fn enqueue(&self, job: &JobSpec) -> Result<Enqueued, EnqueueError> {
        match self.submit(job).await {
            Ok(ack) => Ok(Enqueued {
                worker: ack.worker,
                queue_depth: ack.queue_depth,
            }),
            Err(DispatchError::AllBusy) => Err(EnqueueError::AllBusy),
            Err(e) => Err(EnqueueError::Failed(e.to_string())),
        }
    }

    async fn is_queued(&self, id: &JobId) -> Result<bool, StoreError> {
        let (store, id) = (self.store.clone(), id.clone());
        tokio::task::spawn_blocking(move || store.is_claimed(&id))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))
    }
}

/// Keeps one worker connected: connect, handshake, serve requests; on loss,
/// fail what is pending and reconnect with backoff.
async fn link_task(
    front_slot: u32,
    path: PathBuf,
    mut rx: mpsc::Receiver<Request>,
    up: Arc<AtomicBool>,
    bus: Arc<Bus>,
) {
    let mut delay = RECONNECT_MIN;
    let mut was_up = false;
    loop {
        match connect(front_slot, &path).await {
            Ok((reader, writer, peer)) => {
                info!(worker_pid = peer.pid, "connected to worker");
                if was_up {
                    // Events sent while we were disconnected are lost: followers
                    // re-read their records.
                    bus.gap();
                }
                up.store(true, Ordering::Relaxed);
                was_up = true;
                delay = RECONNECT_MIN;
                let closed = serve(reader, writer, &mut rx, &bus).await;
                up.store(false, Ordering::Relaxed);
                if closed {
                    return; // the front is shutting down
                }
                warn!("lost the worker connection; reconnecting");
            }
            Err(e) => {
                if was_up {
                    debug!(cause = %e, "worker not reachable yet");
                }
            }
        }
        // While down, answer anything that raced in so nobody waits for the timeout.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                req = rx.recv() => match req {
                    Some(r) => { let _ = r.reply.send(Err(LinkError::Down)); }
                    None => return,
                },
            }
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

type Reader = FrameReader<tokio::net::unix::OwnedReadHalf, ToFront>;
type Writer = FrameWriter<tokio::net::unix::OwnedWriteHalf, ToWorker>;

async fn connect(front_slot: u32, path: &PathBuf) -> Result<(Reader, Writer, Hello), String> {
    let stream = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
    let (r, w) = stream.into_split();
    let mut reader = Reader::new(r);
    let mut writer = Writer::new(w);
    writer
        .send(&ToWorker::Hello(Hello::new(Role::Front, front_slot)))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(ACK_TIMEOUT, reader.read()).await {
        Ok(Ok(Some(ToFront::Hello(h))))
            if h.version == PROTOCOL_VERSION && h.role == Role::Worker =>
        {
            Ok((reader, writer, h))
        }
        Ok(Ok(Some(ToFront::Hello(h)))) => Err(format!(
            "worker speaks protocol {} (we speak {PROTOCOL_VERSION})",
            h.version
        )),
        Ok(Ok(other)) => Err(format!("unexpected handshake answer {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Serves requests over one live connection. Returns true when the front is
/// shutting down (request channel closed), false when the connection was lost.
async fn serve(
    mut reader: Reader,
    mut writer: Writer,
    rx: &mut mpsc::Receiver<Request>,
    bus: &Bus,
) -> bool {
    // Reading a frame is not cancel-safe, so the reader runs in its own task
    // and forwards whole messages.
    let (in_tx, mut in_rx) = mpsc::channel::<ToFront>(64);
    let read_task = tokio::spawn(
        async move {
            loop {
                match reader.read().await {
                    Ok(Some(msg)) => {
                        if in_tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        warn!(cause = %e, "bad frame from worker; dropping the connection");
                        return;
                    }
                }
            }
        }
        .in_current_span(),
    );
    let mut pending: HashMap<u64, oneshot::Sender<Result<u32, LinkError>>> = HashMap::new();
    let mut next_req: u64 = 0;
    let shutting_down = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some(req) = req else { break true };
                next_req += 1;
                let msg = ToWorker::Submit { req: next_req, job: req.job };
                if let Err(e) = writer.send(&msg).await {
                    let _ = req.reply.send(Err(LinkError::Down));
                    warn!(cause = %e, "could not send to worker");
                    break false;
                }
                pending.insert(next_req, req.reply);
            }
            msg = in_rx.recv() => match msg {
                Some(ToFront::Accepted { req, queue_depth }) => {
                    if let Some(reply) = pending.remove(&req) { let _ = reply.send(Ok(queue_depth)); }
                }
                Some(ToFront::Rejected { req, reason }) => {
                    if let Some(reply) = pending.remove(&req) { let _ = reply.send(Err(LinkError::Rejected(reason))); }
                }
                Some(ToFront::Event(ev)) => bus.publish(ev),
                Some(ToFront::Hello(_)) => { warn!("unexpected hello from worker"); break false; }
                None => break false,
            },
        }
    };
    read_task.abort();
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(LinkError::Down));
    }
    shutting_down
}
