//! [`Blobs`] in an S3-compatible object store (`--store s3://BUCKET[/PREFIX]`), for
//! several servers sharing one set of originals and variants.
//!
//! # Layout
//! ```text
//! BUCKET/PREFIX/originals/<id>.<ext>            originals, streamed from the spool file
//! BUCKET/PREFIX/variants/<id>-<preset>.<ext>    variants (a re-run overwrites the same key)
//! ```
//! The key a record keeps is the object key itself (`PREFIX/originals/<id>.<ext>`).
//!
//! The endpoint and credentials follow the AWS conventions that
//! `AmazonS3Builder::from_env` reads (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true` for plain `http://`);
//! [`S3Options`] overrides them where a caller (a test) must not touch the process
//! environment.

use std::io;
use std::path::Path as FsPath;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use pixpool_model::JobId;
use tokio::io::AsyncReadExt;
use tracing::warn;

use crate::backend::{AgedBlob, Blob, Blobs, VariantKey};
use crate::StoreError;

/// How the client reaches the object store. [`S3Options::default`] reads everything
/// from the environment and uses the production timeouts.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Overrides `AWS_ENDPOINT_URL` (an S3-compatible server: MinIO, Garage, moto).
    pub endpoint: Option<String>,
    /// Overrides `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Overrides `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Overrides `AWS_REGION`.
    pub region: Option<String>,
    /// Overrides `AWS_ALLOW_HTTP` (plain `http://` endpoints).
    pub allow_http: Option<bool>,
    /// How long opening a TCP connection may take: an unreachable endpoint fails
    /// after this (times the few retries), not after the client's default 5 s each.
    pub connect_timeout: Duration,
    /// How long one read from a connection may stall before the request fails.
    pub read_timeout: Duration,
    /// How long one whole request may take (one part of a multipart upload, one
    /// variant read to its end).
    pub request_timeout: Duration,
    /// Retries of a failed request, and the time after which none is started: a
    /// client is never held for the storage client's default three minutes.
    pub max_retries: usize,
    /// See [`S3Options::max_retries`].
    pub retry_timeout: Duration,
    /// How long [`connect`]'s check that the bucket is reachable may take in all.
    pub check_timeout: Duration,
    /// The size of one part of a multipart upload; an original no larger is sent with
    /// one PUT. S3 refuses parts under 5 MiB (but the last).
    pub part_size: usize,
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            region: None,
            allow_http: None,
            connect_timeout: Duration::from_secs(2),
            // A healthy endpoint answers within it; one that stopped answering
            // (after its connection was accepted) fails an upload within seconds.
            read_timeout: Duration::from_secs(4),
            request_timeout: Duration::from_secs(120),
            max_retries: 3,
            retry_timeout: Duration::from_secs(4),
            check_timeout: Duration::from_secs(10),
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// Parts of a multipart upload in flight at once: memory is bounded by this many parts
/// (plus the one being filled), whatever the original's size.
const PARTS_IN_FLIGHT: usize = 2;

/// How much of the spool file is read at a time.
const READ_CHUNK: usize = 256 * 1024;

/// [`Blobs`] in one bucket, under one prefix.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    /// The client, bound to the bucket.
    store: std::sync::Arc<AmazonS3>,
    /// The bucket's name, for errors.
    bucket: String,
    /// `PREFIX/` (or empty): every key this store hands out starts with it.
    prefix: String,
    /// See [`S3Options::part_size`].
    part_size: usize,
}

/// Connects to the bucket named by `url` (`s3://BUCKET[/PREFIX]`) with the settings
/// of the environment, and checks that it is there.
pub async fn connect(url: &str) -> Result<S3Blobs, StoreError> {
    connect_with(url, S3Options::default()).await
}

/// [`connect`] with explicit settings.
pub async fn connect_with(url: &str, options: S3Options) -> Result<S3Blobs, StoreError> {
    let (bucket, prefix) = parse_url(url)?;
    // reqwest's rustls is built without a crypto provider of its own (aws-lc-rs is a
    // large C build): it takes the process default, `ring`. One installed earlier,
    // by whoever, is as good, hence the ignored error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = |key, d: Duration| {
        (
            AmazonS3ConfigKey::Client(key),
            humantime::format_duration(d).to_string(),
        )
    };
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    // Per key rather than `with_client_options`, which would drop what the
    // environment set (`AWS_ALLOW_HTTP`).
    for (key, value) in [
        client(ClientConfigKey::ConnectTimeout, options.connect_timeout),
        client(ClientConfigKey::ReadTimeout, options.read_timeout),
        client(ClientConfigKey::Timeout, options.request_timeout),
    ] {
        builder = builder.with_config(key, value);
    }
    builder = builder.with_retry(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: options.max_retries,
        retry_timeout: options.retry_timeout,
    });
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(id) = &options.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(allow) = options.allow_http {
        builder = builder.with_allow_http(allow);
    }
    let store = builder
        .build()
        .map_err(|e| s3_err(format!("configure the client of bucket {bucket}"), e))?;
    let blobs = S3Blobs {
        store: std::sync::Arc::new(store),
        bucket,
        prefix,
        // S3's smallest part but the last.
        part_size: options.part_size.max(5 * 1024 * 1024),
    };
    blobs.check(options.check_timeout).await?;
    Ok(blobs)
}

/// `s3://BUCKET[/PREFIX]` as the bucket and `PREFIX/` (or an empty prefix).
pub fn parse_url(url: &str) -> Result<(String, String), StoreError> {
    let bad = |reason| StoreError::S3Url {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // S3's rules for bucket names (and those of older buckets: `_`, capitals).
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("the bucket name is empty or has characters S3 refuses"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok((bucket.to_string(), String::new()));
    }
    // Plain segments only: the prefix is part of every key checked against it.
    if !prefix.split('/').all(is_plain_segment) {
        return Err(bad(
            "the prefix has an empty, `.` or `..` segment, or characters other than \
             letters, digits, `.`, `-`, `_`",
        ));
    }
    Ok((bucket.to_string(), format!("{prefix}/")))
}

/// A key segment this store writes: letters, digits, `.`, `-`, `_`, not starting
/// with `.` (so never `.` or `..`).
fn is_plain_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A [`StoreError::S3`] for `step`.
fn s3_err(step: impl Into<String>, source: object_store::Error) -> StoreError {
    StoreError::S3 {
        step: step.into(),
        source: Box::new(source),
    }
}

/// Whether `e` says the object is not there.
fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3Blobs {
    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Lists the prefix (one cheap request): a missing bucket, wrong credentials or an
    /// unreachable endpoint is an error here, at start, naming the bucket.
    async fn check(&self, within: Duration) -> Result<(), StoreError> {
        let step = format!(
            "list bucket {} (is it there, and may these credentials read it?)",
            self.bucket
        );
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        match tokio::time::timeout(within, self.store.list_with_delimiter(prefix.as_ref())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(s3_err(step, e)),
            Err(_) => Err(StoreError::S3 {
                step,
                source: format!("no answer within {within:?}").into(),
            }),
        }
    }

    /// The object key of `id`'s original.
    fn original_key(&self, id: &JobId, extension: &str) -> String {
        format!("{}originals/{id}.{extension}", self.prefix)
    }

    /// The object key of a variant.
    fn variant_key(&self, key: &VariantKey) -> String {
        format!("{}variants/{key}", self.prefix)
    }

    /// `key` as an object path, if it is one of this store's originals: the record's
    /// key is never trusted to stay inside `PREFIX/originals/`.
    fn original_path(&self, key: &str) -> Result<Path, StoreError> {
        let bad = || StoreError::BadKey {
            key: key.to_string(),
        };
        let name = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|k| k.strip_prefix("originals/"))
            .ok_or_else(bad)?;
        if !is_plain_segment(name) {
            return Err(bad());
        }
        Path::parse(key).map_err(|_| bad())
    }

    /// A variant's object path.
    fn variant_path(&self, key: &VariantKey) -> Result<Path, StoreError> {
        let k = self.variant_key(key);
        // Preset names are validated by the server; a path never escapes with them.
        if !is_plain_segment(&key.to_string()) {
            return Err(StoreError::BadKey { key: k });
        }
        Path::parse(&k).map_err(|_| StoreError::BadKey { key: k })
    }

    /// Uploads the file at `spool` to `path`: one PUT when it fits a part, else a
    /// multipart upload fed a chunk at a time (never the whole file in memory),
    /// aborted on failure so that no parts are left billed.
    async fn upload(&self, spool: &FsPath, path: &Path, key: &str) -> Result<(), StoreError> {
        let read_err = |source| StoreError::Blob {
            key: spool.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(spool).await.map_err(read_err)?;
        let len = file.metadata().await.map_err(read_err)?.len();
        if len <= self.part_size as u64 {
            let mut data = Vec::with_capacity(len as usize);
            file.read_to_end(&mut data).await.map_err(read_err)?;
            self.store
                .put(path, PutPayload::from(data))
                .await
                .map_err(|e| s3_err(format!("upload original {key}"), e))?;
            return Ok(());
        }
        let multipart = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| s3_err(format!("start the multipart upload of {key}"), e))?;
        let mut upload = WriteMultipart::new_with_chunk_size(multipart, self.part_size);
        let mut buf = vec![0u8; READ_CHUNK];
        let fed = async {
            loop {
                let n = file.read(&mut buf).await.map_err(read_err)?;
                if n == 0 {
                    return Ok(());
                }
                upload
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| s3_err(format!("upload a part of {key}"), e))?;
                upload.write(&buf[..n]);
            }
        }
        .await;
        match fed {
            Ok(()) => upload
                .finish()
                .await
                .map(drop)
                .map_err(|e| s3_err(format!("complete the multipart upload of {key}"), e)),
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    warn!(cause = %abort, key, "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }
}

/// A stream that is `Sync` ([`crate::backend::BlobStream`] asks it) around the
/// client's, which is only `Send`: polling needs `&mut`, so the lock is never
/// contended.
struct SyncStream(Mutex<futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>>);

impl Stream for SyncStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .poll_next_unpin(cx)
            .map(|item| item.map(|r| r.map_err(io::Error::from)))
    }
}

#[async_trait::async_trait]
impl Blobs for S3Blobs {
    async fn put_original(
        &self,
        id: &JobId,
        extension: &'static str,
        spool: &FsPath,
    ) -> Result<String, StoreError> {
        let key = self.original_key(id, extension);
        let path = self.original_path(&key)?;
        self.upload(spool, &path, &key).await?;
        // The object is durable (S3 acknowledged it): a spool file left behind is
        // only litter, which the front's recovery removes.
        if let Err(e) = tokio::fs::remove_file(spool).await {
            warn!(cause = %e, spool = %spool.display(), "could not remove an uploaded spool file");
        }
        Ok(key)
    }

    async fn get_original(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.original_path(key)?;
        let read = async { self.store.get(&path).await?.bytes().await };
        match read.await {
            Ok(data) => Ok(data.to_vec()),
            // As the embedded store says it: a blob error of kind NotFound.
            Err(e) if is_not_found(&e) => Err(StoreError::Blob {
                key: key.to_string(),
                source: io::Error::from(e),
            }),
            Err(e) => Err(s3_err(format!("read original {key}"), e)),
        }
    }

    async fn delete_original(&self, key: &str) -> Result<(), StoreError> {
        let path = self.original_path(key)?;
        match self.store.delete(&path).await {
            Err(e) if !is_not_found(&e) => Err(s3_err(format!("delete original {key}"), e)),
            _ => Ok(()),
        }
    }

    async fn put_variant(&self, key: &VariantKey, data: Bytes) -> Result<String, StoreError> {
        let path = self.variant_path(key)?;
        // One PUT: S3 makes the whole object visible at once, or nothing.
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| s3_err(format!("upload variant {path}"), e))?;
        Ok(path.to_string())
    }

    async fn sync_variants(&self, _keys: &[VariantKey]) -> Result<(), StoreError> {
        // An acknowledged PUT is already durable.
        Ok(())
    }

    async fn get_variant(&self, key: &VariantKey) -> Result<Option<Blob>, StoreError> {
        let path = self.variant_path(key)?;
        match self.store.get(&path).await {
            Ok(got) => Ok(Some(Blob {
                len: got.meta.size,
                body: Box::pin(SyncStream(Mutex::new(got.into_stream()))),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_err(format!("read variant {path}"), e)),
        }
    }

    async fn aged(
        &self,
        age: Duration,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgedBlob>, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cutoff = i64::try_from(now.saturating_sub(age.as_secs())).unwrap_or(i64::MAX);
        let mut aged = Vec::new();
        for dir in ["originals/", "variants/"] {
            let under = format!("{}{dir}", self.prefix);
            let prefix = Path::from(under.as_str());
            // Keys sort `originals/` before `variants/`: a cursor in the second skips
            // the first whole.
            if after.is_some_and(|a| a >= under.as_str() && !a.starts_with(&under)) {
                continue;
            }
            let mut list = match after.filter(|a| a.starts_with(&under)) {
                Some(a) => self.store.list_with_offset(Some(&prefix), &Path::from(a)),
                None => self.store.list(Some(&prefix)),
            };
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(|e| s3_err(format!("list {under}"), e))?;
                let key = meta.location.to_string();
                let Some(job) = key
                    .strip_prefix(under.as_str())
                    .and_then(|file| file.split(['.', '-']).next())
                    .and_then(JobId::parse)
                else {
                    continue;
                };
                if meta.last_modified.timestamp() <= cutoff {
                    aged.push(AgedBlob {
                        key,
                        job,
                        bytes: meta.size,
                    });
                    if aged.len() >= limit {
                        return Ok(aged);
                    }
                }
            }
        }
        aged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(aged)
    }

    async fn delete_aged(&self, blob: &AgedBlob) -> Result<(), StoreError> {
        let under = |dir: &str| blob.key.starts_with(&format!("{}{dir}", self.prefix));
        if !(under("originals/") || under("variants/")) {
            return Err(StoreError::BadKey {
                key: blob.key.clone(),
            });
        }
        match self.store.delete(&Path::from(blob.key.as_str())).await {
            Err(e) if !is_not_found(&e) => Err(s3_err(format!("delete {}", blob.key), e)),
            _ => Ok(()),
        }
    }

    async fn delete_variants(&self, keys: &[VariantKey]) -> Result<(), StoreError> {
        for key in keys {
            let path = self.variant_path(key)?;
            match self.store.delete(&path).await {
                Err(e) if !is_not_found(&e) => {
                    return Err(s3_err(format!("delete variant {path}"), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// One HEAD of a key nobody writes: "not found" is an answer from the bucket.
    async fn ready(&self) -> Result<(), StoreError> {
        let path = Path::from(format!("{}{READINESS_KEY}", self.prefix));
        match self.store.head(&path).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(s3_err(format!("reach bucket {}", self.bucket), e)),
        }
    }
}

/// The key [`Blobs::ready`] asks about; never written.
const READINESS_KEY: &str = ".pixpool-readiness";

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn store_urls_name_a_bucket_and_a_plain_prefix() {
        let ok = |url: &str| parse_url(url).expect(url);
        assert_eq!(ok("s3://b"), ("b".into(), "".into()));
        assert_eq!(ok("s3://b/"), ("b".into(), "".into()));
        assert_eq!(
            ok("s3://my-bucket/a/b_2/"),
            ("my-bucket".into(), "a/b_2/".into())
        );
        for bad in [
            "b",
            "http://b",
            "s3://",
            "s3:///p",
            "s3://b/a//c",
            "s3://b/../c",
            "s3://b/a/.",
            "s3://b c",
            "s3://b/a?x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
