//! A distributed pixpool service for a test: a NATS cluster and a bucket on moto
//! ([`Services`]), the `pixpool serve` trees started on them, and a look into what they
//! hold (job records in KV, objects in the bucket) as the tests of the embedded mode
//! look into `--uploads`.
//!
//! `PIXPOOL_TEST_BACKEND=distributed` makes [`crate::Server::start`] run every server
//! on services of its own, so a suite written for the embedded mode runs, unchanged, in
//! the distributed one (`.ci/run` does so for `tests/api.rs`).

use std::future::Future;
use std::path::PathBuf;

use futures_util::StreamExt;
use serde_json::Value;

use crate::servers::{Moto, NatsCluster};
use crate::Server;

/// The bucket every test service uses (each moto is its own server).
pub const BUCKET: &str = "pixpool-test";
/// The key prefix of the service in [`BUCKET`] (`--store s3://pixpool-test/svc`).
pub const PREFIX: &str = "svc";
/// The KV bucket of job records (issue 12's interface: `pixpool_` prefixed).
const JOBS_BUCKET: &str = "pixpool_jobs";

/// Which backend [`crate::Server::start`] gives a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `--uploads` alone (the default).
    Embedded,
    /// A NATS cluster and an S3 bucket of its own.
    Distributed,
}

impl Backend {
    /// `PIXPOOL_TEST_BACKEND`: `distributed`, else embedded. Any other value is a typo
    /// that must not quietly test the embedded mode twice.
    pub fn from_env() -> Backend {
        match std::env::var("PIXPOOL_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("embedded") => Backend::Embedded,
            Ok("distributed") => Backend::Distributed,
            Ok(other) => panic!("PIXPOOL_TEST_BACKEND={other:?}: embedded or distributed"),
        }
    }
}

/// A NATS cluster and a bucket: one service for every tree started on it.
#[derive(Debug)]
pub struct Services {
    pub nats: NatsCluster,
    pub moto: Moto,
}

impl Services {
    /// The cluster and the bucket, or `None` (with a note) where a server program is
    /// missing.
    pub fn start(tag: &str) -> Option<Services> {
        let nats = NatsCluster::start(tag)?;
        let moto = Moto::start(tag)?;
        moto.create_bucket(BUCKET);
        Some(Services { nats, moto })
    }

    /// The flags that put a tree on this service.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--queue".into(),
            self.nats.urls(),
            "--store".into(),
            format!("s3://{BUCKET}/{PREFIX}"),
        ]
    }

    /// A `pixpool serve` tree on this service, in a fresh uploads directory.
    pub fn tree(&self, fronts: u32, workers: u32, extra: &[&str]) -> Server {
        self.tree_in(crate::fresh_uploads(), fronts, workers, extra)
    }

    /// A tree on this service with `uploads` as its local spool.
    pub fn tree_in(&self, uploads: PathBuf, fronts: u32, workers: u32, extra: &[&str]) -> Server {
        self.tree_env(uploads, fronts, workers, extra, &[])
    }

    /// [`Services::tree_in`] with extra environment variables.
    pub fn tree_env(
        &self,
        uploads: PathBuf,
        fronts: u32,
        workers: u32,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        let args = self.args();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let env = self.moto.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(envs);
        Server::start_env(uploads, fronts, workers, &all, &env)
    }

    /// The bucket's keys (with the service's prefix).
    pub fn keys(&self) -> Vec<String> {
        self.moto.keys(BUCKET)
    }

    /// The bytes of the object a record names by `key` (its `path`: the whole key),
    /// read as any S3 client reads it (signed: moto keeps objects private).
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        use object_store::{aws::AmazonS3Builder, ObjectStoreExt};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::new().with_bucket_name(BUCKET);
        for (k, v) in self.moto.env() {
            let k = k.to_ascii_lowercase().parse().expect("an S3 setting");
            builder = builder.with_config(k, v);
        }
        let store = builder.build().expect("an S3 client");
        let path = object_store::path::Path::from(key);
        on_own_runtime(async move {
            match store.get(&path).await {
                Ok(got) => Some(got.bytes().await.expect("the object's bytes").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    /// Job `id`'s stored record, as the leader of its KV bucket has it.
    pub fn record(&self, id: &str) -> Option<Value> {
        let urls = self.nats.urls();
        let subject = format!("$KV.{JOBS_BUCKET}.{id}");
        let payload = on_own_runtime(async move {
            let js = jetstream(&urls).await;
            let stream = js
                .get_stream(format!("KV_{JOBS_BUCKET}"))
                .await
                .expect("the job records' stream");
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => {
                    let op = m.headers.get("KV-Operation").map(|v| v.as_str().to_string());
                    op.is_none_or(|op| op == "PUT").then(|| m.payload.to_vec())
                }
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    None
                }
                Err(e) => panic!("read the record of {subject}: {e}"),
            }
        })?;
        Some(serde_json::from_slice(&payload).expect("a record is JSON"))
    }

    /// The ids of every job with a record.
    pub fn job_ids(&self) -> Vec<String> {
        let urls = self.nats.urls();
        on_own_runtime(async move {
            let kv = jetstream(&urls)
                .await
                .get_key_value(JOBS_BUCKET)
                .await
                .expect("the job records' bucket");
            let mut keys = kv.keys().await.expect("list the records");
            let mut ids = Vec::new();
            while let Some(key) = keys.next().await {
                ids.push(key.expect("a record's key"));
            }
            ids.sort();
            ids
        })
    }

    /// Every live entry of KV bucket `bucket` (`pixpool_jobs`, `pixpool_dedup`,
    /// `pixpool_outbox`), as key and value text.
    pub fn kv(&self, bucket: &str) -> Vec<(String, String)> {
        let urls = self.nats.urls();
        let bucket = bucket.to_string();
        on_own_runtime(async move {
            let kv = jetstream(&urls)
                .await
                .get_key_value(&bucket)
                .await
                .expect("the bucket");
            let mut keys = kv.keys().await.expect("list the keys");
            let mut all = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.expect("a key");
                if let Ok(Some(value)) = kv.get(&key).await {
                    all.push((key, String::from_utf8_lossy(&value).into_owned()));
                }
            }
            all.sort();
            all
        })
    }

    /// The keys of the stored originals.
    pub fn originals(&self) -> Vec<String> {
        let under = format!("{PREFIX}/originals/");
        self.keys()
            .into_iter()
            .filter(|k| k.starts_with(&under))
            .collect()
    }
}

async fn jetstream(urls: &str) -> async_nats::jetstream::Context {
    let urls: Vec<&str> = urls.split(',').collect();
    let client = async_nats::connect(urls).await.expect("connect to NATS");
    async_nats::jetstream::new(client)
}

/// Runs `fut` to completion on a runtime of its own, on a thread of its own: the
/// callers are sync helpers that async tests call.
fn on_own_runtime<T: Send>(fut: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(fut)
        })
        .join()
        .expect("the inspecting thread")
    })
}
