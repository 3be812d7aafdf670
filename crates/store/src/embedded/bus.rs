//! Job events within one process.

use pixpool_model::JobEvent;
use tokio::sync::broadcast;

use crate::backend::{EventItem, EventStream, Events};

/// [`Events`] as a broadcast channel. A worker publishes on its bus and each front
/// connection forwards what it receives; a front's connections publish on the front's
/// bus, where its streams subscribe. A subscriber that falls `capacity` events behind
/// gets [`EventItem::Gap`] and re-reads the records.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<EventItem>,
}

impl Bus {
    /// A bus that buffers `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Bus {
        Bus {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Tells every subscriber that events were lost (a link to a worker dropped and
    /// came back): they re-read the records they follow.
    pub fn gap(&self) {
        let _ = self.tx.send(EventItem::Gap);
    }
}

impl Events for Bus {
    fn publish(&self, event: JobEvent) {
        // No subscriber is not an error: the record is the truth.
        let _ = self.tx.send(EventItem::Event(event));
    }

    fn subscribe(&self) -> EventStream {
        let rx = self.tx.subscribe();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(item) => Some((item, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((EventItem::Gap, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}
