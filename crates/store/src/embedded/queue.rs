//! The worker's half of the embedded queue: durable claims, a bounded FIFO, and help
//! for a busy sibling.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pixpool_model::JobId;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::blocking;
use crate::backend::{Consumer, Delivery};
use crate::{Store, StoreError};

/// How soon an idle worker looks again for a busy sibling's queued jobs. Each look
/// that finds nothing doubles the wait, up to [`STEAL_POLL_MAX`]: an idle server does
/// not scan its claim directories ten times a second per worker.
pub const STEAL_POLL: Duration = Duration::from_millis(100);

/// The longest wait between two looks at the siblings' queues.
pub const STEAL_POLL_MAX: Duration = Duration::from_millis(1600);

/// Why [`ClaimQueue::admit`] refused a job.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The bounded queue is full: the front tries another worker.
    #[error("the queue is full")]
    Full,
    /// The consumer is closed (the worker drains).
    #[error("the worker is shutting down")]
    Closed,
    /// The claim could not be made durable.
    #[error("could not claim the job")]
    Claim(#[source] StoreError),
}

/// [`Consumer`] over the claim directories of one worker slot.
///
/// A job is admitted ([`ClaimQueue::admit`]) only once its claim
/// `claims/<slot>/<id>` is on disk; [`Consumer::start`] renames it to
/// `<id>.running` (one rename: of two workers, one gets it); [`Consumer::ack`]
/// removes it. A process that dies leaves its claims; the next one in its slot
/// (or, for a retired slot, the slot it maps to) takes them over at
/// [`ClaimQueue::open`].
#[derive(Debug)]
pub struct ClaimQueue {
    store: Store,
    slot: u32,
    workers: u32,
    /// Whether an idle worker takes a busy sibling's queued jobs.
    steal: bool,
    /// Admitted (not recovered) jobs queued or reserved at most.
    capacity: usize,
    /// The FIFO and the reservations not yet pushed; shared with a look at the
    /// siblings' queues that runs on a blocking thread.
    inner: Arc<Mutex<(VecDeque<Delivery>, usize)>>,
    ready: Arc<Notify>,
    closed: AtomicBool,
    /// Whether a look at the siblings' queues is running.
    looking: Arc<AtomicBool>,
}

impl ClaimQueue {
    /// The queue of worker `slot` of `workers`, holding at most `capacity` admitted
    /// jobs, with the claims a previous process left in this slot (or in retired
    /// slots it adopts) queued first, oldest first, beyond the bound.
    pub fn open(
        store: Store,
        slot: u32,
        workers: u32,
        capacity: usize,
        steal: bool,
    ) -> Result<Arc<ClaimQueue>, StoreError> {
        let recovered = store.claims_to_recover(slot, workers)?;
        if !recovered.is_empty() {
            info!(
                count = recovered.len(),
                "recovering claimed jobs from a previous run"
            );
        }
        let fifo = recovered
            .into_iter()
            .map(|(owner, id)| Delivery {
                id,
                presets: None,
                owner,
                retries: 0,
                stolen: false,
                token: 0,
            })
            .collect();
        Ok(Arc::new(ClaimQueue {
            store,
            slot,
            workers,
            steal,
            capacity,
            inner: Arc::new(Mutex::new((fifo, 0))),
            ready: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            looking: Arc::new(AtomicBool::new(false)),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, (VecDeque<Delivery>, usize)> {
        lock(&self.inner)
    }

    /// Admits a job handed over by front `front`: room is reserved, the claim made
    /// durable (from the front's pending marker, see [`Store::claim_pending`]), then
    /// the job queued. Returns the queue depth. Only after `Ok` may the front answer 202.
    pub async fn admit(
        &self,
        id: JobId,
        presets: Vec<String>,
        front: Option<u32>,
    ) -> Result<usize, AdmitError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(AdmitError::Closed);
        }
        {
            let mut g = self.lock();
            if g.0.len() + g.1 >= self.capacity {
                return Err(AdmitError::Full);
            }
            g.1 += 1;
        }
        let (store, slot, claim) = (self.store.clone(), self.slot, id.clone());
        let claimed = blocking(move || store.claim_pending(slot, &claim, front)).await;
        let depth = {
            let mut g = self.lock();
            g.1 = g.1.saturating_sub(1);
            if let Err(e) = claimed {
                return Err(AdmitError::Claim(e));
            }
            g.0.push_back(Delivery {
                id,
                presets: Some(presets),
                owner: self.slot,
                retries: 0,
                stolen: false,
                token: 0,
            });
            g.0.len()
        };
        self.ready.notify_one();
        Ok(depth)
    }

    fn push(&self, delivery: Delivery) {
        self.lock().0.push_back(delivery);
        self.ready.notify_one();
    }

    /// Takes the oldest queued job of a sibling that is busy with another one into this
    /// worker's hands (see [`Store::steal`]) and queues it here, first. Returns whether
    /// it found one. The job goes into the queue, not to the caller: a caller that
    /// stops waiting (a cancelled [`Consumer::next`]) cannot lose a job already taken.
    async fn help_a_sibling(&self) -> bool {
        if !self.steal || self.workers < 2 || self.looking.swap(true, Ordering::AcqRel) {
            return false;
        }
        let (store, slot, workers) = (self.store.clone(), self.slot, self.workers);
        let (inner, ready, looking) =
            (self.inner.clone(), self.ready.clone(), self.looking.clone());
        let look = tokio::task::spawn_blocking(move || {
            let stolen = store.steal(slot, workers);
            if let Ok(Some(id)) = &stolen {
                info!(job_id = %id, "took a queued job from a busy sibling");
                lock(&inner).0.push_front(Delivery {
                    id: id.clone(),
                    presets: None,
                    owner: slot,
                    retries: 0,
                    stolen: true,
                    token: 0,
                });
                ready.notify_one();
            }
            looking.store(false, Ordering::Release);
            stolen
        });
        match look.await {
            Ok(Ok(found)) => found.is_some(),
            Ok(Err(e)) => {
                warn!(cause = %e, "could not look at the siblings' queues");
                false
            }
            Err(e) => {
                warn!(cause = %e, "the look at the siblings' queues failed");
                false
            }
        }
    }
}

fn lock(inner: &Mutex<(VecDeque<Delivery>, usize)>) -> MutexGuard<'_, (VecDeque<Delivery>, usize)> {
    // Each critical section is one push, pop or counter update: a panic cannot leave
    // the queue inconsistent, so poisoning is ignored.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl Consumer for ClaimQueue {
    async fn next(&self) -> Option<Delivery> {
        let mut poll = STEAL_POLL;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(d) = self.lock().0.pop_front() {
                return Some(d);
            }
            if self.help_a_sibling().await {
                continue;
            }
            // `Notify` keeps a permit for a push that happens before this wait.
            let stealing = self.steal && self.workers > 1;
            tokio::select! {
                _ = self.ready.notified() => poll = STEAL_POLL,
                _ = tokio::time::sleep(poll), if stealing => {
                    poll = (poll * 2).min(STEAL_POLL_MAX);
                }
            }
        }
    }

    async fn start(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let (store, slot, workers) = (self.store.clone(), self.slot, self.workers);
        let (owner, id) = (delivery.owner, delivery.id.clone());
        blocking(move || store.take(slot, owner, workers, &id)).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError> {
        // Started, so the claim is this slot's `<id>.running`.
        let (store, slot, id) = (self.store.clone(), self.slot, delivery.id.clone());
        blocking(move || store.release(slot, &id)).await
    }

    async fn retry(&self, mut delivery: Delivery, wait: Duration) {
        // Its claim stays on disk meanwhile, running in this slot: if this process ends
        // first, its successor runs it.
        delivery.owner = self.slot;
        tokio::time::sleep(wait).await;
        self.push(delivery);
    }

    fn waiting(&self) -> usize {
        self.lock().0.len()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
        self.ready.notify_one();
    }
}
