//! Job events over core NATS: one subject, JSON, best effort.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use pixpool_model::{JobEvent, JobId};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use super::{nats_err, EVENTS_SUBJECT};
use crate::backend::{EventItem, EventStream, Events};
use crate::StoreError;

/// Header naming the process that published an event (a random token).
const ORIGIN: &str = "Pixpool-Origin";
/// Header numbering the events one process published.
const SEQ: &str = "Pixpool-Seq";

/// What the process's one subscription passes to its subscribers.
#[derive(Debug, Clone)]
pub(super) struct Item {
    event: EventItem,
    /// This process's number for the event, when this process published it.
    local: Option<u64>,
}

impl From<EventItem> for Item {
    fn from(event: EventItem) -> Item {
        Item { event, local: None }
    }
}

/// [`Events`] on core NATS subject `pixpool.events`.
///
/// One NATS subscription per process, fanned out in memory: [`Events::subscribe`] is
/// synchronous and must see every event published after it returns, which a
/// subscription of its own (set up by a round trip) could not promise.
#[derive(Debug)]
pub struct NatsEvents {
    /// Events to publish, in order: `publish` never blocks, and one task sends them,
    /// so that one job's events leave in the order they were published.
    out: mpsc::UnboundedSender<(JobEvent, u64)>,
    /// The fan-out of what the subscription receives (and of reconnection gaps).
    tx: broadcast::Sender<Item>,
    /// Events this process has published: a subscriber skips this process's own
    /// events numbered below the count when it subscribed (published before it,
    /// though they come back from the server after).
    published: Arc<AtomicU64>,
}

impl NatsEvents {
    /// Subscribes to the events subject, and starts the tasks that publish and fan out.
    pub(super) async fn start(
        client: async_nats::Client,
        tx: broadcast::Sender<Item>,
    ) -> Result<NatsEvents, StoreError> {
        // Unique per process (time and 104 random bits).
        let origin = JobId::generate().to_string();
        let mut sub = client
            .subscribe(EVENTS_SUBJECT)
            .await
            .map_err(|e| nats_err("subscribe to job events", e))?;
        // Only once the server has the subscription are events published from now
        // on sure to reach it (a subscribe returns before the server saw it).
        client
            .flush()
            .await
            .map_err(|e| nats_err("subscribe to job events", e))?;
        let fan = tx.clone();
        let ours = origin.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let event = match serde_json::from_slice::<JobEvent>(&msg.payload) {
                    Ok(event) => event,
                    Err(e) => {
                        warn!(cause = %e, "ignoring a malformed job event");
                        continue;
                    }
                };
                let headers = msg.headers.as_ref();
                let local = headers
                    .filter(|h| h.get(ORIGIN).is_some_and(|o| o.as_str() == ours))
                    .and_then(|h| h.get(SEQ))
                    .and_then(|s| s.as_str().parse().ok());
                let _ = fan.send(Item {
                    event: EventItem::Event(event),
                    local,
                });
            }
        });
        let (out, mut rx) = mpsc::unbounded_channel::<(JobEvent, u64)>();
        tokio::spawn(async move {
            while let Some((event, seq)) = rx.recv().await {
                let payload = match serde_json::to_vec(&event) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(cause = %e, job_id = %event.id, "could not encode a job event");
                        continue;
                    }
                };
                let mut headers = HeaderMap::new();
                headers.insert(ORIGIN, origin.as_str());
                headers.insert(SEQ, seq.to_string().as_str());
                if let Err(e) = client
                    .publish_with_headers(EVENTS_SUBJECT, headers, payload.into())
                    .await
                {
                    // Best effort: the record is the truth, and subscribers of a
                    // connection that dropped are told of the gap.
                    warn!(cause = %e, job_id = %event.id, "could not publish a job event");
                }
            }
        });
        Ok(NatsEvents {
            out,
            tx,
            published: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl Events for NatsEvents {
    fn publish(&self, event: JobEvent) {
        let seq = self.published.fetch_add(1, Ordering::SeqCst);
        // Fails only once the publishing task ended (the runtime shuts down).
        let _ = self.out.send((event, seq));
    }

    fn subscribe(&self) -> EventStream {
        let from = self.published.load(Ordering::SeqCst);
        let rx = self.tx.subscribe();
        Box::pin(futures_util::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(item) if item.local.is_some_and(|n| n < from) => continue,
                    Ok(item) => return Some((item.event, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((EventItem::Gap, rx))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }
}
