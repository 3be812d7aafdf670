//! The worker's IPC side: accept fronts on a Unix socket, shake hands, take jobs.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use pixpool_protocol::{
    FrameReader, FrameWriter, Hello, Reject, Role, ToFront, ToWorker, PROTOCOL_VERSION,
};
use pixpool_store::backend::{EventItem, Events};
use pixpool_store::embedded::{AdmitError, ClaimQueue};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn, Instrument};

use crate::{WorkerConfig, WorkerError};

/// Binds the worker's socket, replacing a stale one left by a dead predecessor.
pub fn bind(path: &Path) -> Result<UnixListener, WorkerError> {
    let err = |source: io::Error| WorkerError::Listen {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // The run directory is already 0700; the socket is owner-only as well.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Accepts connections until the task is aborted.
pub async fn serve(
    listener: UnixListener,
    config: Arc<WorkerConfig>,
    queue: Arc<ClaimQueue>,
    events: Arc<dyn Events>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(
                    stream,
                    config.clone(),
                    queue.clone(),
                    events.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One front's connection: handshake, then submits until either side closes.
#[instrument(skip_all, fields(front))]
async fn connection(
    stream: UnixStream,
    config: Arc<WorkerConfig>,
    queue: Arc<ClaimQueue>,
    events: Arc<dyn Events>,
) {
    let mut events = events.subscribe();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::<_, ToWorker>::new(r);
    let mut writer = FrameWriter::<_, ToFront>::new(w);

    let peer = match reader.read().await {
        Ok(Some(ToWorker::Hello(h))) if h.version == PROTOCOL_VERSION && h.role == Role::Front => h,
        Ok(Some(ToWorker::Hello(h))) => {
            warn!(
                version = h.version,
                ours = PROTOCOL_VERSION,
                "refusing a peer with another protocol version"
            );
            return;
        }
        Ok(other) => {
            warn!(?other, "connection did not open with a hello; closing");
            return;
        }
        Err(e) => {
            warn!(cause = %e, "bad handshake frame; closing");
            return;
        }
    };
    tracing::Span::current().record("front", peer.slot);
    let front = peer.slot;
    if let Err(e) = writer
        .send(&ToFront::Hello(Hello::new(Role::Worker, config.slot)))
        .await
    {
        warn!(cause = %e, "could not answer the handshake");
        return;
    }
    debug!(front_pid = peer.pid, "front connected");

    // Answers go through one writer task so that submits can be handled
    // concurrently (each waits on its own fsync).
    let (tx, mut rx) = mpsc::channel::<ToFront>(64);
    let write_task = tokio::spawn(
        async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = writer.send(&msg).await {
                    debug!(cause = %e, "front went away while answering");
                    break;
                }
            }
        }
        .in_current_span(),
    );

    // Every job event goes to every front: a client following a job may be
    // connected to any of them.
    let event_tx = tx.clone();
    let event_task = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            match item {
                EventItem::Event(ev) => {
                    if event_tx.send(ToFront::Event(ev)).await.is_err() {
                        return;
                    }
                }
                EventItem::Gap => warn!("front is slow; job events dropped"),
            }
        }
    });

    loop {
        match reader.read().await {
            Ok(Some(ToWorker::Submit { req, job })) => {
                let (queue, tx) = (queue.clone(), tx.clone());
                tokio::spawn(
                    async move {
                        let answer = admit(&queue, req, job.id, job.presets, front).await;
                        let _ = tx.send(answer).await;
                    }
                    .in_current_span(),
                );
            }
            Ok(Some(ToWorker::Hello(_))) => {
                warn!("second hello on one connection; closing");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                // Malformed, oversized or truncated: the stream cannot be
                // resynchronised, so close it; the front reconnects.
                warn!(cause = %e, "bad frame from front; closing the connection");
                break;
            }
        }
    }
    event_task.abort();
    drop(tx);
    let _ = write_task.await;
}

/// Admission: the answer is sent only after the claim is on disk — that is what
/// the front's 202 rests on.
#[instrument(skip_all, fields(job_id = %id))]
async fn admit(
    queue: &ClaimQueue,
    req: u64,
    id: pixpool_store::JobId,
    presets: Vec<String>,
    front: u32,
) -> ToFront {
    match queue.admit(id, presets, Some(front)).await {
        Ok(depth) => {
            info!(queue_depth = depth, "job accepted");
            ToFront::Accepted {
                req,
                queue_depth: u32::try_from(depth).unwrap_or(u32::MAX),
            }
        }
        Err(AdmitError::Full) => {
            debug!("queue full; rejecting");
            ToFront::Rejected {
                req,
                reason: Reject::QueueFull,
            }
        }
        Err(AdmitError::Closed) => ToFront::Rejected {
            req,
            reason: Reject::ShuttingDown,
        },
        Err(AdmitError::Claim(e)) => {
            warn!(cause = %e, "could not claim job");
            ToFront::Rejected {
                req,
                reason: Reject::Claim(pixpool_store::error_chain(&e)),
            }
        }
    }
}
