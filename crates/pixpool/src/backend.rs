//! The distributed backend a child connects to when its settings name one: NATS
//! JetStream for records, queue and events; an S3 bucket (or this host's uploads
//! directory) for originals and variants.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use pixpool_metrics::{Counter, Histogram, Label, Recorder};
use pixpool_model::{JobId, JobSpec};
use pixpool_store::backend::{
    Blob, Blobs, Consumer, Delivery, EnqueueError, Enqueued, Queue, VariantKey,
};
use pixpool_store::embedded::FileBlobs;
use pixpool_store::nats::NatsBackend;
use pixpool_store::{Store, StoreError};

use crate::settings::BackendSettings;

/// A child's connections to the distributed backend.
#[derive(Debug)]
pub struct Connected {
    nats: NatsBackend,
    blobs: Arc<dyn Blobs>,
    metrics: Recorder,
}

/// Connects to what `b` names; `None` when it names no queue (the embedded backend).
/// NATS servers still starting are waited for (a cluster electing its leaders); a
/// failure ends the child, and the supervisor starts it again after a pause.
pub async fn connect(
    b: &BackendSettings,
    store: &Store,
    metrics: &Recorder,
) -> anyhow::Result<Option<Connected>> {
    let Some(urls) = &b.queue else {
        return Ok(None);
    };
    let options = pixpool_store::nats::NatsOptions {
        ack_wait: b.ack_wait,
        ..pixpool_store::nats::NatsOptions::new(b.queue_replicas)
    };
    let nats = pixpool_store::nats::connect_with(urls, options)
        .await
        .with_context(|| format!("could not set up the job queue on {urls}"))?;
    let blobs: Arc<dyn Blobs> = match &b.store {
        Some(url) => Arc::new(
            pixpool_store::s3::connect(url)
                .await
                .with_context(|| format!("could not open the object store {url}"))?,
        ),
        None => Arc::new(FileBlobs::new(store.clone())),
    };
    let blobs = Arc::new(Timed {
        inner: blobs,
        metrics: metrics.clone(),
    });
    Ok(Some(Connected {
        nats,
        blobs,
        metrics: metrics.clone(),
    }))
}

impl Connected {
    /// What a front uses.
    pub fn front(&self) -> pixpool_front::Shared {
        pixpool_front::Shared {
            records: self.nats.records.clone(),
            blobs: self.blobs.clone(),
            queue: Arc::new(Timed {
                inner: self.nats.queue.clone() as Arc<dyn Queue>,
                metrics: self.metrics.clone(),
            }),
            events: self.nats.events.clone(),
            outbox: self.nats.outbox.clone(),
        }
    }

    /// What the sweeper uses: records, blobs and the outbox.
    pub fn sweeper(
        &self,
    ) -> (
        Arc<dyn pixpool_store::backend::Records>,
        Arc<dyn Blobs>,
        Arc<dyn pixpool_store::backend::Outbox>,
    ) {
        (
            self.nats.records.clone(),
            self.blobs.clone(),
            self.nats.outbox.clone(),
        )
    }

    /// What the courier uses: the records and the shared outbox.
    pub fn courier(
        &self,
    ) -> (
        Arc<dyn pixpool_store::backend::Records>,
        Arc<dyn pixpool_store::backend::Outbox>,
    ) {
        (self.nats.records.clone(), self.nats.outbox.clone())
    }

    /// What a worker uses: a consumer of its own on the shared queue.
    pub async fn worker(
        &self,
        webhooks: Option<&pixpool_worker::WebhookConfig>,
    ) -> anyhow::Result<pixpool_worker::execute::Backend> {
        let consumer = self
            .nats
            .consumer()
            .await
            .context("could not bind the workers' consumer of the job queue")?;
        Ok(pixpool_worker::execute::Backend {
            records: self.nats.records.clone(),
            blobs: self.blobs.clone(),
            events: self.nats.events.clone(),
            queue: Arc::new(Timed {
                inner: consumer as Arc<dyn Consumer>,
                metrics: self.metrics.clone(),
            }),
            webhooks: webhooks.map(|w| pixpool_worker::execute::Webhooks {
                outbox: self.nats.outbox.clone(),
                operator_url: w.operator_url.clone(),
            }),
        })
    }
}

/// A backend part whose calls are timed into this process's metrics
/// (`pixpool_blob_seconds`, `pixpool_queue_ack_seconds`,
/// `pixpool_queue_redeliveries_total`); otherwise the part itself.
#[derive(Debug)]
struct Timed<T: ?Sized> {
    inner: Arc<T>,
    metrics: Recorder,
}

impl<T: ?Sized> Timed<T> {
    fn blob(&self, op: &'static str, since: Instant) {
        self.metrics.observe(
            Histogram::BlobDuration {
                op: Label::from(op),
            },
            since.elapsed(),
        );
    }

    fn ack(&self, op: &'static str, since: Instant) {
        self.metrics.observe(
            Histogram::QueueAck {
                op: Label::from(op),
            },
            since.elapsed(),
        );
    }
}

#[async_trait::async_trait]
impl Blobs for Timed<dyn Blobs> {
    async fn put_original(
        &self,
        id: &JobId,
        extension: &'static str,
        spool: &std::path::Path,
    ) -> Result<String, StoreError> {
        let t = Instant::now();
        let r = self.inner.put_original(id, extension, spool).await;
        self.blob("put_original", t);
        r
    }

    async fn get_original(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get_original(key).await;
        self.blob("get_original", t);
        r
    }

    async fn delete_original(&self, key: &str) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.delete_original(key).await;
        self.blob("delete", t);
        r
    }

    async fn put_variant(&self, key: &VariantKey, data: Bytes) -> Result<String, StoreError> {
        let t = Instant::now();
        let r = self.inner.put_variant(key, data).await;
        self.blob("put_variant", t);
        r
    }

    async fn sync_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError> {
        self.inner.sync_variants(keys).await
    }

    /// Timed to the first byte: the rest streams at the client's pace.
    async fn get_variant(&self, key: &VariantKey) -> Result<Option<Blob>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get_variant(key).await;
        self.blob("get_variant", t);
        r
    }

    async fn delete_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.delete_variants(keys).await;
        self.blob("delete", t);
        r
    }

    async fn aged(
        &self,
        age: Duration,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pixpool_store::backend::AgedBlob>, StoreError> {
        self.inner.aged(age, after, limit).await
    }

    async fn delete_aged(&self, blob: &pixpool_store::backend::AgedBlob) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.delete_aged(blob).await;
        self.blob("delete", t);
        r
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl Queue for Timed<dyn Queue> {
    async fn enqueue(&self, job: &JobSpec) -> Result<Enqueued, EnqueueError> {
        let t = Instant::now();
        let r = self.inner.enqueue(job).await;
        if r.is_ok() {
            self.ack("publish", t);
        }
        r
    }

    async fn is_queued(&self, id: &JobId) -> Result<bool, StoreError> {
        self.inner.is_queued(id).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl Consumer for Timed<dyn Consumer> {
    async fn next(&self) -> Option<Delivery> {
        let d = self.inner.next().await?;
        if d.retries > 0 {
            self.metrics.inc(Counter::QueueRedeliveries);
        }
        Some(d)
    }

    async fn start(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        self.inner.start(delivery).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.ack(delivery).await;
        if r.is_ok() {
            self.ack("ack", t);
        }
        r
    }

    async fn retry(&self, delivery: Delivery, wait: Duration) {
        self.inner.retry(delivery, wait).await
    }

    fn abandon(&self, delivery: &Delivery) {
        self.inner.abandon(delivery)
    }

    fn waiting(&self) -> usize {
        self.inner.waiting()
    }

    fn close(&self) {
        self.inner.close()
    }
}

/// The supervisor's check, before it starts anything: the bucket named by `store` is
/// there and these credentials may read it. A missing bucket would otherwise show only
/// at the first upload. Runs on a runtime of its own that is gone before any fork.
pub fn preflight(store: Option<&str>) -> anyhow::Result<()> {
    let Some(url) = store else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the runtime of the start-up checks")?;
    let checked = runtime.block_on(pixpool_store::s3::connect(url));
    // Its blocking threads (name resolution) go with it: the supervisor forks next.
    runtime.shutdown_timeout(Duration::from_secs(1));
    checked.with_context(|| format!("the object store {url} cannot be used"))?;
    Ok(())
}
