//! The courier: delivers what the outbox owes, at least once, and records the outcome
//! in the job's record. One per host (its own process in the tree); couriers on
//! several hosts share a distributed outbox, each entry held by one at a time (a
//! lease written by compare-and-swap).
//!
//! An entry is attempted once its job's record is final in the state the entry
//! announces (a worker writes the entry just before that record); one whose job is
//! gone, or final in another state (a worker presumed dead lost its race), is dropped.
//! 2xx: delivered. 410: the receiver wants no more, failed. Anything else, a timeout
//! or no connection: tried again after a growing pause until the attempts run out.
//! A callback whose host now resolves to a forbidden address is failed at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pixpool_metrics::{Counter, Histogram, Label, Recorder};
use pixpool_store::backend::{Durability, Outbox, Records, Versioned};
use pixpool_store::outbox::{entry_key, Destination, OutboxEntry};
use pixpool_store::{JobRecord, StoreError, WebhookState, WebhookStatus};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::signature::Secret;
use crate::target::{is_forbidden, resolve_public, CallbackError, CallbackPolicy};

/// How the courier works.
#[derive(Debug, Clone)]
pub struct CourierConfig {
    /// Attempts per entry before it is failed.
    pub max_attempts: u32,
    /// The pause after the first failed attempt; each later one is four times the
    /// one before (see [`backoff`]).
    pub retry_base: Duration,
    /// Deliveries in flight at once to one host and port.
    pub per_destination: usize,
    /// How long one attempt may take, connection to answer.
    pub timeout: Duration,
    /// How often the outbox is looked at for new or due entries.
    pub scan_every: Duration,
    /// The callback rules (`allow_private` is what deliveries use).
    pub policy: CallbackPolicy,
}

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

impl CourierConfig {
    /// The defaults: 12 attempts from 1 s (about a day), 4 at once per destination,
    /// 10 s per attempt.
    pub fn new(policy: CallbackPolicy) -> CourierConfig {
        CourierConfig {
            max_attempts: 12,
            retry_base: Duration::from_secs(1),
            per_destination: 4,
            timeout: Duration::from_secs(10),
            scan_every: Duration::from_millis(250),
            policy,
        }
    }
}

/// The pause after failed attempt number `attempts` (1 = the first): `base`, then
/// four times as long each time, capped at [`MAX_BACKOFF`], give or take a fifth
/// (`jitter`, in `0..1`, spreads receivers' retries apart). Doubling would spend 12
/// attempts in half an hour; at four times, a receiver down for most of a day still
/// gets the event: 1 s, 4 s, 16 s, 1 min, 4 min, 17 min, 68 min, 4.6 h, then 6 h.
pub fn backoff(base: Duration, attempts: u32, jitter: f64) -> Duration {
    let growth = 4f64.powi(i32::try_from(attempts.saturating_sub(1).min(30)).unwrap_or(30));
    let pause = base.as_secs_f64() * growth;
    let pause = pause.min(MAX_BACKOFF.as_secs_f64()) * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    Duration::from_secs_f64(pause)
}

/// What one attempt got.
#[derive(Debug)]
enum Answer {
    /// An HTTP status.
    Status(u16),
    /// No answer in time.
    Timeout,
    /// No connection, or the exchange broke.
    Failed(String),
    /// The callback's host resolves to an address callbacks may not reach.
    Refused(CallbackError),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(s) => write!(f, "HTTP {s}"),
            Answer::Timeout => f.write_str("no answer in time"),
            Answer::Failed(why) => write!(f, "no exchange: {why}"),
            Answer::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Where an entry stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conclusion {
    Delivered,
    Failed,
    Retry,
}

/// Delivers the outbox; see the module documentation.
pub struct Courier {
    outbox: Arc<dyn Outbox>,
    records: Arc<dyn Records>,
    secret: Secret,
    config: CourierConfig,
    metrics: Recorder,
    operator: reqwest::Client,
    callback: reqwest::Client,
    /// Per `host:port`, the deliveries allowed in flight.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Keys being attempted by this process.
    busy: Mutex<HashSet<String>>,
    /// Keys seen, and the Unix milliseconds before which they need no look.
    due: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Courier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Courier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why the courier could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not build the webhook HTTP client: {0}")]
pub struct ClientError(String);

impl Courier {
    /// A courier of `outbox`, reading and updating job records in `records`.
    pub fn new(
        outbox: Arc<dyn Outbox>,
        records: Arc<dyn Records>,
        secret: Secret,
        config: CourierConfig,
        metrics: Recorder,
    ) -> Result<Courier, ClientError> {
        // https receivers: rustls with the ring provider, installed once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = |public_only: bool| {
            let mut b = reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                // A redirect would go where nobody checked.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("pixpool-webhook/", env!("CARGO_PKG_VERSION")));
            if public_only {
                b = b.dns_resolver(PublicOnly);
            }
            b.build().map_err(|e| ClientError(e.to_string()))
        };
        let callback = client(!config.policy.allow_private)?;
        Ok(Courier {
            outbox,
            records,
            secret,
            metrics,
            operator: client(false)?,
            callback,
            config,
            slots: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            due: Mutex::new(HashMap::new()),
        })
    }

    /// Delivers until `stop` turns true, then lets the attempts in flight end.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut attempts = JoinSet::new();
        loop {
            match self.outbox.keys().await {
                Ok(keys) => self.schedule(keys, &mut attempts),
                Err(e) => warn!(cause = %e, "could not list the webhook outbox"),
            }
            while attempts.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(self.config.scan_every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        info!(in_flight = attempts.len(), "courier stopping");
        while attempts.join_next().await.is_some() {}
    }

    /// Starts an attempt for every key due and not in hand.
    fn schedule(self: &Arc<Self>, keys: Vec<String>, attempts: &mut JoinSet<()>) {
        let now = now_ms();
        let listed: HashSet<&String> = keys.iter().collect();
        let mut due = lock(&self.due);
        due.retain(|k, _| listed.contains(k));
        let mut busy = lock(&self.busy);
        for key in keys {
            if busy.contains(&key) || due.get(&key).is_some_and(|&at| at > now) {
                continue;
            }
            busy.insert(key.clone());
            let courier = Arc::clone(self);
            attempts.spawn(async move {
                let next = courier.attempt(&key).await;
                lock(&courier.busy).remove(&key);
                let mut due = lock(&courier.due);
                match next {
                    Some(at) => due.insert(key, at),
                    None => due.remove(&key),
                };
            });
        }
    }

    /// One look at the entry under `key`, and an attempt if it is due. Returns when to
    /// look again (`None`: it is gone).
    async fn attempt(&self, key: &str) -> Option<u64> {
        let now = now_ms();
        let read = match self.outbox.get(key).await {
            Ok(Some(read)) => read,
            Ok(None) => return None,
            Err(e) => {
                warn!(key, cause = %e, "could not read a webhook outbox entry");
                return Some(now + 5_000);
            }
        };
        let Versioned {
            value: mut entry,
            revision,
        } = read;
        let held_until = entry.leased_until_ms.max(entry.not_before_ms);
        if held_until > now {
            return Some(held_until);
        }
        let record = match self.records.get(&entry.job).await {
            Ok(record) => record,
            Err(e) => {
                warn!(key, cause = %e, "could not read the job of a webhook");
                return Some(now + 5_000);
            }
        };
        let record = match record {
            Some(r) if r.value.state == entry.state => r.value,
            // Not final yet: its worker is writing the record the entry announces.
            Some(r) if !r.value.state.is_final() => return Some(now + 1_000),
            other => {
                // The job is gone, or ended otherwise (a worker presumed dead wrote
                // this entry and then lost the record to the one that took over).
                debug!(key, found = ?other.map(|r| r.value.state), "webhook no longer owed");
                self.remove(key, revision).await;
                return None;
            }
        };
        if entry.body.is_none() {
            entry.body = Some(body(&entry, &record));
        }
        let lease = self.config.timeout + Duration::from_secs(30);
        entry.leased_until_ms = now + millis(lease);
        let revision = match self.outbox.update(&entry, revision).await {
            Ok(revision) => revision,
            // Another courier took it, or the entry was written anew.
            Err(StoreError::Conflict { .. }) => return Some(now + 1_000),
            Err(e) => {
                warn!(key, cause = %e, "could not lease a webhook outbox entry");
                return Some(now + 5_000);
            }
        };
        let started = Instant::now();
        let answer = self.send(&entry).await;
        self.metrics
            .observe(Histogram::WebhookDuration, started.elapsed());
        entry.attempts += 1;
        let status = match &answer {
            Answer::Status(s) => Some(*s),
            _ => None,
        };
        entry.last_status = status.or(entry.last_status);
        let conclusion = match &answer {
            Answer::Status(s) if (200..300).contains(s) => Conclusion::Delivered,
            Answer::Status(410) | Answer::Refused(_) => Conclusion::Failed,
            _ if entry.attempts >= self.config.max_attempts => Conclusion::Failed,
            _ => Conclusion::Retry,
        };
        let outcome = match (&answer, conclusion) {
            (Answer::Refused(_), _) => "refused",
            (_, Conclusion::Delivered) => "delivered",
            (_, Conclusion::Failed) => "failed",
            (_, Conclusion::Retry) => "retry",
        };
        self.metrics.add(
            Counter::WebhookDeliveries {
                outcome: Label::from(outcome),
            },
            1,
        );
        match conclusion {
            Conclusion::Delivered => {
                info!(key, attempts = entry.attempts, %answer, "webhook delivered");
            }
            Conclusion::Failed => {
                warn!(key, attempts = entry.attempts, %answer, "webhook failed for good");
            }
            Conclusion::Retry => {
                info!(key, attempts = entry.attempts, %answer, "webhook to be tried again");
            }
        }
        self.record(&entry, status, conclusion).await;
        if conclusion == Conclusion::Retry {
            let jitter = f64::from(random_u32()) / f64::from(u32::MAX);
            let pause = backoff(self.config.retry_base, entry.attempts, jitter);
            entry.not_before_ms = now_ms() + millis(pause);
            entry.leased_until_ms = 0;
            match self.outbox.update(&entry, revision).await {
                Ok(_) => return Some(entry.not_before_ms),
                Err(StoreError::Conflict { .. }) => return Some(now_ms()),
                Err(e) => {
                    warn!(key, cause = %e, "could not reschedule a webhook; its lease will lapse");
                    return Some(now_ms() + millis(lease));
                }
            }
        }
        self.remove(key, revision).await;
        None
    }

    async fn remove(&self, key: &str, revision: u64) {
        if let Err(e) = self.outbox.remove(key, revision).await {
            warn!(key, cause = %e, "could not remove a webhook outbox entry; it may be sent again");
        }
    }

    /// One POST of the entry's body, signed now.
    async fn send(&self, entry: &OutboxEntry) -> Answer {
        let body = entry.body.clone().unwrap_or_default();
        let client = match entry.destination {
            Destination::Operator => &self.operator,
            Destination::Callback => {
                // The resolver checks names; an address literal never reaches it.
                if let Err(e) = self.literal_allowed(&entry.url) {
                    return Answer::Refused(e);
                }
                &self.callback
            }
        };
        let slot = self.slot(&entry.url);
        let Ok(_permit) = slot.acquire_owned().await else {
            return Answer::Failed("the destination's slots are closed".into());
        };
        let id = entry.message_id();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = self.secret.sign(&id, timestamp, body.as_bytes());
        let sent = client
            .post(&entry.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => Answer::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => Answer::Timeout,
            Err(e) => match refusal(&e) {
                Some(refused) => Answer::Refused(refused),
                None => Answer::Failed(pixpool_store::error_chain(&e)),
            },
        }
    }

    fn literal_allowed(&self, url: &str) -> Result<(), CallbackError> {
        if self.config.policy.allow_private {
            return Ok(());
        }
        let parsed = url::Url::parse(url).map_err(|e| CallbackError::Unparsable(e.to_string()))?;
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if is_forbidden(ip) {
            return Err(CallbackError::Forbidden {
                host: ip.to_string(),
                ip,
            });
        }
        Ok(())
    }

    fn slot(&self, url: &str) -> Arc<Semaphore> {
        let key = url::Url::parse(url)
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let per = self.config.per_destination.max(1);
        lock(&self.slots)
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(per)))
            .clone()
    }

    /// Writes the attempt into the job's record (compare-and-swap, tried again on a
    /// conflict). Delivered shows once no other destination of the event is owed.
    async fn record(&self, entry: &OutboxEntry, status: Option<u16>, conclusion: Conclusion) {
        let others_owed = match conclusion {
            Conclusion::Delivered => {
                let other = match entry.destination {
                    Destination::Operator => Destination::Callback,
                    Destination::Callback => Destination::Operator,
                };
                let key = entry_key(&entry.job, entry.state, other);
                !matches!(self.outbox.get(&key).await, Ok(None))
            }
            _ => false,
        };
        for _ in 0..16 {
            let read = match self.records.get(&entry.job).await {
                Ok(Some(read)) => read,
                Ok(None) => return,
                Err(e) => {
                    warn!(job = %entry.job, cause = %e, "could not read the record to note a webhook attempt");
                    return;
                }
            };
            let mut rec: JobRecord = read.value;
            let mut webhook = rec.webhook.clone().unwrap_or(WebhookStatus {
                state: WebhookState::Pending,
                attempts: 0,
                last_status: None,
            });
            webhook.attempts += 1;
            webhook.last_status = status;
            webhook.state = match (webhook.state, conclusion) {
                (WebhookState::Failed, _) | (_, Conclusion::Failed) => WebhookState::Failed,
                (_, Conclusion::Delivered) if !others_owed => WebhookState::Delivered,
                (state, _) => state,
            };
            rec.webhook = Some(webhook);
            match self
                .records
                .update(&rec, read.revision, Durability::Durable)
                .await
            {
                Ok(_) => return,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    warn!(job = %entry.job, cause = %e, "could not note a webhook attempt in the record");
                    return;
                }
            }
        }
    }
}

/// The event's body: `{"type", "timestamp", "data"}`, `data` being the job as
/// `GET /jobs/<id>` shows it.
fn body(entry: &OutboxEntry, record: &JobRecord) -> String {
    let event = serde_json::json!({
        "type": entry.event_type(),
        "timestamp": entry.timestamp,
        "data": pixpool_store::view::JobView::of(record),
    });
    event.to_string()
}

/// Resolves names for callbacks: only to public addresses, checked as the connection
/// is made, so that a name cannot resolve one way when checked and another when used.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_public(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The address refusal inside a client error, if that is what it is.
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<CallbackError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<CallbackError>() {
            return Some(refused.clone());
        }
        cause = c.source();
    }
    None
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    u32::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_fourfold_from_the_base_to_a_cap_with_a_fifth_of_jitter() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_secs(16));
        assert_eq!(backoff(base, 40, 0.5), MAX_BACKOFF);
        assert_eq!(backoff(base, 2, 0.0), Duration::from_secs_f64(3.2));
        assert_eq!(backoff(base, 2, 1.0), Duration::from_secs_f64(4.8));
        // The default 12 attempts span about a day.
        let total: f64 = (1..12).map(|n| backoff(base, n, 0.5).as_secs_f64()).sum();
        assert!((20.0 * 3600.0..30.0 * 3600.0).contains(&total), "{total}");
    }
}
