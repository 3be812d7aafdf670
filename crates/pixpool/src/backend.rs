//! The distributed backend a child connects to when its settings name one: NATS
//! JetStream for records, queue and events; an S3 bucket (or this host's uploads
//! directory) for originals and variants.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pixpool_store::backend::Blobs;
use pixpool_store::embedded::FileBlobs;
use pixpool_store::nats::NatsBackend;
use pixpool_store::Store;

use crate::settings::BackendSettings;

/// A child's connections to the distributed backend.
#[derive(Debug)]
pub struct Connected {
    nats: NatsBackend,
    blobs: Arc<dyn Blobs>,
}

/// Connects to what `b` names; `None` when it names no queue (the embedded backend).
/// NATS servers still starting are waited for (a cluster electing its leaders); a
/// failure ends the child, and the supervisor starts it again after a pause.
pub async fn connect(b: &BackendSettings, store: &Store) -> anyhow::Result<Option<Connected>> {
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
    Ok(Some(Connected { nats, blobs }))
}

impl Connected {
    /// What a front uses.
    pub fn front(&self) -> pixpool_front::Shared {
        pixpool_front::Shared {
            records: self.nats.records.clone(),
            blobs: self.blobs.clone(),
            queue: self.nats.queue.clone(),
            events: self.nats.events.clone(),
        }
    }

    /// What a worker uses: a consumer of its own on the shared queue.
    pub async fn worker(&self) -> anyhow::Result<pixpool_worker::execute::Backend> {
        let consumer = self
            .nats
            .consumer()
            .await
            .context("could not bind the workers' consumer of the job queue")?;
        Ok(pixpool_worker::execute::Backend {
            records: self.nats.records.clone(),
            blobs: self.blobs.clone(),
            events: self.nats.events.clone(),
            queue: consumer,
        })
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
