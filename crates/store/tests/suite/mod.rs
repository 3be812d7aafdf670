//! The contracts of the backend traits, written against the traits alone: every
//! backend's test file runs these functions against its implementation
//! (`contract.rs`: the embedded one; `nats_contract.rs`: JetStream).
// Each test file uses the part of the suite its backend implements.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pixpool_model::{EventKind, JobEvent, JobId, JobSpec};
use pixpool_store::backend::{
    Blobs, Consumer, Delivery, Durability, EventItem, Events, Queue, Records, VariantKey,
};
use pixpool_store::{JobRecord, JobState, SourceRecord, Store, StoreError};

/// A fresh uploads directory (the spool's home), removed on drop.
pub struct Dir(std::path::PathBuf);

impl Dir {
    pub fn new(tag: &str) -> (Dir, Store) {
        let root = std::env::temp_dir().join(format!(
            "pixpool-contract-{tag}-{}-{}",
            std::process::id(),
            JobId::generate()
        ));
        let store = Store::open(&root, None).expect("open store");
        (Dir(root), store)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A record as an upload creates it.
pub fn sample() -> JobRecord {
    let id = JobId::generate();
    JobRecord::queued(
        id.clone(),
        SourceRecord {
            path: format!("raw/{id}.jpg"),
            format: "jpeg".into(),
            bytes: 3,
        },
        vec!["thumb".into()],
    )
}

pub fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

/// Records: create once, compare-and-swap, delete, dedup create-if-absent.
pub async fn records(records: Arc<dyn Records>) {
    let mut rec = sample();
    let first = records.create(&rec).await.expect("create");
    assert!(
        is_conflict(&records.create(&rec).await),
        "a second create of one job is a conflict"
    );
    let got = records.get(&rec.id).await.expect("get").expect("present");
    assert_eq!((&got.value, got.revision), (&rec, first));

    rec.state = JobState::Processing;
    let second = records
        .update(&rec, first, Durability::Provisional)
        .await
        .expect("update at the revision read");
    assert_ne!(second, first);
    // A writer that read the old revision (a worker presumed dead) loses, and
    // changes nothing.
    let mut stale = rec.clone();
    stale.state = JobState::Failed;
    assert!(is_conflict(
        &records.update(&stale, first, Durability::Durable).await
    ));
    let got = records.get(&rec.id).await.expect("get").expect("present");
    assert_eq!(
        (got.value.state, got.revision),
        (JobState::Processing, second)
    );

    // Many writers at one revision: exactly one wins.
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let (records, mut rec) = (records.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            rec.attempts = n + 1;
            records.update(&rec, second, Durability::Durable).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one of the racing updates wins");

    records.delete(&rec.id).await.expect("delete");
    assert!(records.get(&rec.id).await.expect("get").is_none());
    records
        .delete(&rec.id)
        .await
        .expect("deleting twice is fine");
    assert!(
        is_conflict(&records.update(&rec, second, Durability::Durable).await),
        "an update of a deleted job is a conflict, not a resurrection"
    );

    // Dedup: create-if-absent, held until its holder releases it.
    let key = format!("{}-presets", JobId::generate());
    let (a, b) = (JobId::generate(), JobId::generate());
    assert_eq!(records.dedup_claim(&key, &a).await.expect("claim"), None);
    assert_eq!(
        records.dedup_claim(&key, &b).await.expect("claim"),
        Some(a.clone())
    );
    records
        .dedup_release(&key, &b)
        .await
        .expect("release by another");
    assert_eq!(
        records.dedup_claim(&key, &b).await.expect("claim"),
        Some(a.clone()),
        "only the holder releases an entry"
    );
    records.dedup_release(&key, &a).await.expect("release");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (records, key) = (records.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            records.dedup_claim(&key, &JobId::generate()).await
        }));
    }
    let mut owners = 0;
    for t in tasks {
        if t.await.expect("task").expect("claim").is_none() {
            owners += 1;
        }
    }
    assert_eq!(owners, 1, "exactly one racing upload holds the entry");

    // Listing: every recorded job, none removed.
    let (kept, gone) = (sample(), sample());
    records.create(&kept).await.expect("create");
    records.create(&gone).await.expect("create");
    records.delete(&gone.id).await.expect("delete");
    let ids = list_ids(&*records).await;
    assert!(ids.contains(&kept.id), "{ids:?}");
    assert!(!ids.contains(&gone.id), "{ids:?}");
}

/// Every id `records` lists.
pub async fn list_ids(records: &dyn Records) -> Vec<JobId> {
    use futures_util::StreamExt;
    let mut ids = Vec::new();
    let mut stream = records.ids();
    while let Some(id) = stream.next().await {
        ids.push(id.expect("an id"));
    }
    ids
}

pub async fn read_all(blob: pixpool_store::backend::Blob) -> Vec<u8> {
    let mut body = blob.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

/// Blobs: an original taken from the spool, variants stored whole and replaced.
pub async fn blobs(blobs: Arc<dyn Blobs>, store: &Store) {
    let id = JobId::generate();
    let spool = store.part_path(0, &id);
    std::fs::create_dir_all(spool.parent().expect("spool dir")).expect("spool dir");
    let original = vec![7u8; 300_000];
    std::fs::write(&spool, &original).expect("spool");
    let key = blobs.put_original(&id, "jpg", &spool).await.expect("put");
    assert!(!spool.exists(), "the spool file is consumed");
    assert_eq!(blobs.get_original(&key).await.expect("get"), original);
    blobs.delete_original(&key).await.expect("delete");
    assert!(blobs.get_original(&key).await.is_err());
    blobs
        .delete_original(&key)
        .await
        .expect("deleting twice is fine");
    for bad in ["../../etc/passwd", "/etc/passwd", "raw/../jobs/x.json", ""] {
        assert!(blobs.get_original(bad).await.is_err(), "{bad:?} was read");
    }

    let v = VariantKey::new(&id, "thumb", "jpg");
    assert!(blobs.get_variant(&v).await.expect("get").is_none());
    let big: Bytes = (0..200_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    blobs.put_variant(&v, big.clone()).await.expect("put");
    blobs
        .sync_variants(std::slice::from_ref(&v))
        .await
        .expect("sync");
    let got = blobs.get_variant(&v).await.expect("get").expect("present");
    assert_eq!(got.len, big.len() as u64);
    assert_eq!(read_all(got).await, big);
    // A re-run stores the same key again: replaced whole.
    blobs
        .put_variant(&v, Bytes::from_static(b"second"))
        .await
        .expect("put");
    let got = blobs.get_variant(&v).await.expect("get").expect("present");
    assert_eq!(read_all(got).await, b"second");
    let other = VariantKey::new(&id, "medium", "webp");
    blobs
        .delete_variants(&[v.clone(), other])
        .await
        .expect("delete");
    assert!(blobs.get_variant(&v).await.expect("get").is_none());

    // The orphan sweep's listing: every original and variant with its job, in key
    // order, a page at a time.
    let owner = JobId::generate();
    let spool = store.part_path(0, &owner);
    std::fs::write(&spool, b"orphan").expect("spool");
    let original = blobs
        .put_original(&owner, "png", &spool)
        .await
        .expect("put");
    let thumb = VariantKey::new(&owner, "thumb", "webp");
    blobs
        .put_variant(&thumb, Bytes::from_static(b"variant"))
        .await
        .expect("put");
    let all = blobs.aged(Duration::ZERO, None, 100).await.expect("aged");
    let mine: Vec<_> = all.iter().filter(|b| b.job == owner).collect();
    assert_eq!(mine.len(), 2, "{all:?}");
    let listed = mine
        .iter()
        .find(|b| b.key == original)
        .expect("the original listed");
    assert_eq!(listed.bytes, 6);
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "in key order: {all:?}"
    );
    let first = blobs.aged(Duration::ZERO, None, 1).await.expect("aged");
    assert_eq!(first.len(), 1);
    let rest = blobs
        .aged(Duration::ZERO, Some(&first[0].key), 100)
        .await
        .expect("aged");
    assert_eq!(rest.len(), all.len() - 1, "after the cursor: the rest");
    let young = blobs
        .aged(Duration::from_secs(3600), None, 100)
        .await
        .expect("aged");
    assert!(
        young.iter().all(|b| b.job != owner),
        "nothing this young: {young:?}"
    );
    for blob in mine {
        blobs.delete_aged(blob).await.expect("delete");
    }
    assert!(blobs.get_original(&original).await.is_err());
    assert!(blobs.get_variant(&thumb).await.expect("get").is_none());
}

/// Events: every subscriber gets every event published after it subscribed, in order.
pub async fn events(events: Arc<dyn Events>) {
    let id = JobId::generate();
    let ev = |attempt| JobEvent {
        id: id.clone(),
        kind: EventKind::Processing { attempt },
    };
    events.publish(ev(0)); // before anyone listens: nobody gets it, nothing breaks
    let (mut a, mut b) = (events.subscribe(), events.subscribe());
    for n in 1..=3 {
        events.publish(ev(n));
    }
    for sub in [&mut a, &mut b] {
        for n in 1..=3 {
            let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("in time")
                .expect("open");
            assert_eq!(got, EventItem::Event(ev(n)));
        }
    }
}

/// Waits until `queue` no longer lists `id` (a replicated queue may take a moment
/// after the ack to drop the job everywhere).
pub async fn assert_leaves_queue(queue: &dyn Queue, id: &JobId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while queue.is_queued(id).await.expect("is_queued") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still queued after its ack"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next delivery of `consumer`, within `within`.
pub async fn next_within(consumer: &dyn Consumer, within: Duration) -> Delivery {
    tokio::time::timeout(within, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("an open consumer")
}

/// A queue shared by workers, both halves: a job enqueued is delivered until acked (at
/// least once, never lost), a consumer that dies gives its jobs back within
/// `redelivered_within`, a retried job comes back. `open` starts a worker's consumer.
pub async fn queue_delivers_until_acked<F, Fut>(
    queue: Arc<dyn Queue>,
    open: F,
    redelivered_within: Duration,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Consumer>>,
{
    let in_time = Duration::from_secs(5);
    let spec = |id: &JobId| JobSpec {
        id: id.clone(),
        presets: vec!["thumb".into()],
    };
    let (done, crashed, running) = (JobId::generate(), JobId::generate(), JobId::generate());
    for id in [&done, &crashed, &running] {
        queue.enqueue(&spec(id)).await.expect("enqueue");
        assert!(queue.is_queued(id).await.expect("is_queued"));
    }
    let q = open().await;
    let d = next_within(&*q, in_time).await;
    assert_eq!(
        (&d.id, d.presets.as_deref()),
        (&done, Some(&["thumb".to_string()][..]))
    );
    assert!(q.start(&d).await.expect("start"));
    q.ack(&d).await.expect("ack");
    assert_leaves_queue(&*queue, &done).await;
    let queued = next_within(&*q, in_time).await; // never started
    assert_eq!(queued.id, crashed);
    let r = next_within(&*q, in_time).await;
    assert_eq!(r.id, running);
    assert!(q.start(&r).await.expect("start"));
    q.close();
    assert!(
        q.next().await.is_none(),
        "a closed consumer hands out nothing"
    );
    drop(q);

    // The worker dies: another gets back everything not acked.
    let q = open().await;
    let mut again = Vec::new();
    for _ in 0..2 {
        let d = next_within(&*q, redelivered_within + in_time).await;
        assert!(d.retries >= 1, "a redelivery counts the earlier delivery");
        assert!(q.start(&d).await.expect("start"));
        again.push(d);
    }
    again.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    assert_eq!(
        again.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        [crashed.clone(), running.clone()]
    );
    for id in [&crashed, &running] {
        assert!(
            queue.is_queued(id).await.expect("is_queued"),
            "running is queued"
        );
    }
    // A retried job comes back after its wait, and stays until acked.
    let first = again.remove(0);
    let t = Arc::clone(&q);
    let retried = first.clone();
    tokio::spawn(async move { t.retry(retried, Duration::from_millis(20)).await });
    let d = next_within(&*q, in_time).await;
    assert_eq!(d.id, first.id);
    assert!(d.retries > first.retries, "a retry counts");
    assert!(q.start(&d).await.expect("restart"));
    for d in [d, again.remove(0)] {
        q.ack(&d).await.expect("ack");
    }
    for id in [&crashed, &running] {
        assert_leaves_queue(&*queue, id).await;
    }
    q.close();
}

/// The webhook outbox: a put is read back whole; changes are compare-and-swaps, so of
/// two couriers holding one revision only one wins; a put replaces (a job concluded
/// again) and makes the older revision stale; a removal at a stale revision leaves the
/// newer entry.
pub async fn outbox(outbox: Arc<dyn pixpool_store::backend::Outbox>) {
    use pixpool_store::outbox::{Destination, OutboxEntry};
    let job = JobId::generate();
    let entry = OutboxEntry::new(
        job.clone(),
        pixpool_model::JobState::Done,
        Destination::Operator,
        "http://127.0.0.1:9/hook".into(),
        "2026-12-04T00:00:00.000Z".into(),
    );
    let key = entry.key();
    assert!(outbox.get(&key).await.expect("get").is_none());
    outbox.put(&entry).await.expect("put");
    let read = outbox.get(&key).await.expect("get").expect("present");
    assert_eq!(read.value, entry);
    assert!(outbox.keys().await.expect("keys").contains(&key));

    let mut leased = read.value.clone();
    leased.leased_until_ms = 42;
    let next = outbox.update(&leased, read.revision).await.expect("update");
    assert_ne!(next, read.revision);
    assert!(
        is_conflict(&outbox.update(&leased, read.revision).await),
        "a second courier at the old revision loses"
    );

    // The job concluded again (a re-run): the newer entry replaces the held one.
    outbox.put(&entry).await.expect("put again");
    let fresh = outbox.get(&key).await.expect("get").expect("present");
    assert_eq!(fresh.value.leased_until_ms, 0);
    outbox
        .remove(&key, next)
        .await
        .expect("a stale removal is no error");
    assert!(outbox.get(&key).await.expect("get").is_some(), "kept");
    outbox.remove(&key, fresh.revision).await.expect("remove");
    assert!(outbox.get(&key).await.expect("get").is_none());
    assert!(!outbox.keys().await.expect("keys").contains(&key));
    outbox
        .remove(&key, fresh.revision)
        .await
        .expect("missing: no error");
    assert!(
        outbox.get("../jobs/x").await.is_err(),
        "a key that is not an entry key is refused"
    );
}
