//! The contract of [`Blobs`] (`suite`) run against the S3 backend on a real
//! S3-compatible server (moto's, on a loopback port), and what the issue asks of that
//! backend beyond it: a missing bucket is an error at connect naming it, a large
//! original goes up in parts and comes back whole, keys outside the prefix are
//! refused, an unreachable endpoint fails within seconds.
//!
//! Needs a `moto_server` binary: `PIXPOOL_MOTO_SERVER`, else `PATH`. Without one the
//! tests say so and pass (`pip install 'moto[server]'` provides one).

mod suite;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixpool_model::JobId;
use pixpool_store::backend::{Blobs, VariantKey};
use pixpool_store::s3::{self, S3Blobs, S3Options};
use pixpool_store::StoreError;
use pixpool_testkit::servers::Moto;

/// Client settings for `moto`, none from the environment's defaults.
fn options(moto: &Moto) -> S3Options {
    S3Options {
        endpoint: Some(moto.endpoint()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        ..S3Options::default()
    }
}

async fn connect(moto: &Moto, url: &str) -> S3Blobs {
    s3::connect_with(url, options(moto))
        .await
        .expect("connect to moto")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_keep_the_contract() {
    let Some(moto) = Moto::start("contract") else {
        return;
    };
    let started = Instant::now();
    moto.create_bucket("pixpool");
    let (_dir, store) = suite::Dir::new("contract");
    // Without a prefix, and with one.
    for url in ["s3://pixpool", "s3://pixpool/a/b"] {
        let blobs = connect(&moto, url).await;
        suite::blobs(Arc::new(blobs), &store).await;
    }

    // Keys are the object keys, under the prefix; nothing outside its originals/ is
    // read, even in the same bucket.
    let blobs = connect(&moto, "s3://pixpool/tenant").await;
    let id = JobId::generate();
    let spool = store.part_path(0, &id);
    std::fs::write(&spool, b"original").expect("spool");
    let key = blobs.put_original(&id, "png", &spool).await.expect("put");
    assert_eq!(key, format!("tenant/originals/{id}.png"));
    let v = VariantKey::new(&id, "thumb", "webp");
    let vkey = blobs
        .put_variant(&v, bytes::Bytes::from_static(b"variant"))
        .await
        .expect("put");
    assert_eq!(vkey, format!("tenant/variants/{id}-thumb.webp"));
    for bad in [
        format!("originals/{id}.png"),
        format!("other/originals/{id}.png"),
        vkey.clone(),
        "tenant/originals/../variants/x.webp".to_string(),
        "tenant/originals/".to_string(),
        "tenant/originals/a/b.png".to_string(),
    ] {
        assert!(
            matches!(
                blobs.get_original(&bad).await,
                Err(StoreError::BadKey { .. })
            ),
            "{bad:?} was read"
        );
    }
    let other = connect(&moto, "s3://pixpool/other").await;
    assert!(other.get_original(&key).await.is_err());
    assert_eq!(blobs.get_original(&key).await.expect("get"), b"original");
    eprintln!("contract checks took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_at_connect() {
    let Some(moto) = Moto::start("missing") else {
        return;
    };
    let err = s3::connect_with("s3://no-such-bucket/p", options(&moto))
        .await
        .expect_err("a missing bucket");
    assert!(matches!(err, StoreError::S3 { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    assert!(matches!(
        s3::connect_with("pixpool", options(&moto)).await,
        Err(StoreError::S3Url { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_original_goes_up_in_parts_and_comes_back_whole() {
    let Some(moto) = Moto::start("large") else {
        return;
    };
    moto.create_bucket("large");
    let (_dir, store) = suite::Dir::new("large");
    let blobs = connect(&moto, "s3://large/p").await;
    let id = JobId::generate();
    let spool = store.part_path(0, &id);
    std::fs::create_dir_all(spool.parent().expect("spool dir")).expect("spool dir");
    // 20 MiB: three parts of at most 8 MiB, the last one shorter.
    let original: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&spool, &original).expect("spool");
    let started = Instant::now();
    let key = blobs.put_original(&id, "jpg", &spool).await.expect("put");
    eprintln!("20 MiB uploaded in {:?}", started.elapsed());
    assert!(!spool.exists(), "the spool file is consumed");
    let got = blobs.get_original(&key).await.expect("get");
    assert!(got == original, "the original came back changed");
    // A re-run overwrites the same object.
    std::fs::write(&spool, b"again").expect("spool");
    assert_eq!(
        blobs.put_original(&id, "jpg", &spool).await.expect("put"),
        key
    );
    assert_eq!(blobs.get_original(&key).await.expect("get"), b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_within_seconds() {
    // Needs no server: one port nobody listens on (refused at once, retried), one
    // address nothing answers (TEST-NET-1: the connect timeout, where the machine
    // has a route at all), and a listener that never answers (the check's bound).
    let closed = format!("http://127.0.0.1:{}", pixpool_testkit::servers::free_port());
    let mute = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute_url = format!("http://{}", mute.local_addr().expect("addr"));
    for endpoint in [closed, "http://192.0.2.1:9000".to_string(), mute_url] {
        let options = S3Options {
            endpoint: Some(endpoint.clone()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            ..S3Options::default()
        };
        let started = Instant::now();
        let err = s3::connect_with("s3://pixpool", options)
            .await
            .expect_err("an unreachable endpoint");
        let took = started.elapsed();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        eprintln!("{endpoint}: failed in {took:?}: {err}: {cause:?}");
        assert!(err.to_string().contains("pixpool"), "{err}");
        assert!(
            took < Duration::from_secs(15),
            "{endpoint}: failed only after {took:?}"
        );
    }
    drop(mute);
}
