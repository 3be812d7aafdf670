//! The contracts of the backend traits, written against the traits alone and run
//! here against the embedded implementation; a second backend runs the same
//! functions (`records`, `blobs`, `events`, `consumer_*`) against its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pixpool_model::{EventKind, JobEvent, JobId};
use pixpool_store::backend::{Blobs, Consumer, Durability, EventItem, Events, Records, VariantKey};
use pixpool_store::embedded::{AdmitError, Bus, ClaimQueue, FileBlobs, FileRecords};
use pixpool_store::{JobRecord, JobState, SourceRecord, Store, StoreError};

/// A fresh uploads directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> (Dir, Store) {
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

fn sample() -> JobRecord {
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

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

/// Records: create once, compare-and-swap, delete, dedup create-if-absent.
async fn records(records: Arc<dyn Records>) {
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
            Err(e) => panic!("unexpected error: {e}"),
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
}

async fn read_all(blob: pixpool_store::backend::Blob) -> Vec<u8> {
    let mut body = blob.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

/// Blobs: an original taken from the spool, variants stored whole and replaced.
async fn blobs(blobs: Arc<dyn Blobs>, store: &Store) {
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
}

/// Events: every subscriber gets every event published after it subscribed, in order.
async fn events(events: Arc<dyn Events>) {
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

/// The worker's half of the queue: at least once, never lost, one worker at a time.
async fn consumer_delivers_until_acked(open: impl Fn() -> Arc<ClaimQueue>) {
    let q = open();
    let (done, crashed, running) = (JobId::generate(), JobId::generate(), JobId::generate());
    for id in [&done, &crashed, &running] {
        q.admit(id.clone(), vec!["thumb".into()], None)
            .await
            .expect("admit");
    }
    assert_eq!(q.waiting(), 3);
    let d = q.next().await.expect("delivery");
    assert_eq!(
        (&d.id, d.presets.as_deref()),
        (&done, Some(&["thumb".to_string()][..]))
    );
    assert!(q.start(&d).await.expect("start"));
    q.ack(&d).await.expect("ack");
    let _queued = q.next().await.expect("delivery"); // `crashed`: never started
    let r = q.next().await.expect("delivery");
    assert!(q.start(&r).await.expect("start"));
    q.close();
    assert!(
        q.next().await.is_none(),
        "a closed consumer hands out nothing"
    );
    drop(q);

    // The process dies: its successor gets back everything not acked, oldest first.
    let q = open();
    let mut again = Vec::new();
    while q.waiting() > 0 {
        let d = q.next().await.expect("delivery");
        assert_eq!(
            d.presets, None,
            "a redelivery reads its presets from the record"
        );
        assert!(q.start(&d).await.expect("start"));
        again.push(d);
    }
    assert_eq!(
        again.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        [crashed, running]
    );
    // A retried job comes back after its wait, and stays until acked.
    let first = again.remove(0);
    let t = Arc::clone(&q);
    let retried = first.clone();
    tokio::spawn(async move { t.retry(retried, Duration::from_millis(20)).await });
    let d = tokio::time::timeout(Duration::from_secs(5), q.next())
        .await
        .expect("retried in time")
        .expect("delivery");
    assert_eq!(d.id, first.id);
    assert!(q.start(&d).await.expect("restart"));
    for d in [d, again.remove(0)] {
        q.ack(&d).await.expect("ack");
    }
    drop(q);
    assert_eq!(open().waiting(), 0, "acked jobs are never delivered again");
}

#[tokio::test]
async fn embedded_records_keep_the_contract() {
    let (_dir, store) = Dir::new("records");
    records(Arc::new(FileRecords::new(store))).await;
}

#[tokio::test]
async fn embedded_blobs_keep_the_contract() {
    let (_dir, store) = Dir::new("blobs");
    blobs(Arc::new(FileBlobs::new(store.clone())), &store).await;
}

#[tokio::test]
async fn embedded_events_keep_the_contract() {
    events(Arc::new(Bus::new(16))).await;
}

#[tokio::test]
async fn embedded_queue_keeps_the_contract() {
    let (_dir, store) = Dir::new("queue");
    consumer_delivers_until_acked(|| {
        ClaimQueue::open(store.clone(), 0, 1, 8, false).expect("open queue")
    })
    .await;
}

#[tokio::test]
async fn embedded_queue_is_bounded_and_one_job_runs_on_one_worker() {
    let (_dir, store) = Dir::new("bound");
    let q0 = ClaimQueue::open(store.clone(), 0, 2, 2, true).expect("open");
    let q1 = ClaimQueue::open(store.clone(), 1, 2, 2, true).expect("open");
    for _ in 0..2 {
        q0.admit(JobId::generate(), vec![], None)
            .await
            .expect("admit");
    }
    assert!(matches!(
        q0.admit(JobId::generate(), vec![], None).await,
        Err(AdmitError::Full)
    ));
    // Worker 0 starts one; idle worker 1 helps with the other, and the two
    // cannot both start the same job.
    let a = q0.next().await.expect("delivery");
    assert!(q0.start(&a).await.expect("start"));
    let b = tokio::time::timeout(Duration::from_secs(5), q1.next())
        .await
        .expect("helped in time")
        .expect("delivery");
    assert!(b.stolen);
    assert!(q1.start(&b).await.expect("start"));
    let late = q0.next().await.expect("its own queue still lists it");
    assert_eq!(late.id, b.id);
    assert!(
        !q0.start(&late).await.expect("start"),
        "a job already taken is skipped"
    );
    q1.close();
    q0.close();
    assert!(matches!(
        q0.admit(JobId::generate(), vec![], None).await,
        Err(AdmitError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_that_stops_waiting_loses_no_job_it_took() {
    let (_dir, store) = Dir::new("cancel");
    let q0 = ClaimQueue::open(store.clone(), 0, 2, 64, true).expect("open");
    let q1 = ClaimQueue::open(store.clone(), 1, 2, 64, true).expect("open");
    let mut admitted = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let id = JobId::generate();
        q0.admit(id.clone(), vec![], None).await.expect("admit");
        admitted.insert(id.as_str().to_string());
    }
    // Worker 0 is busy: worker 1 may help itself, but keeps giving up waiting
    // (a worker's `select!` on its next job and its pending commit).
    let busy = q0.next().await.expect("delivery");
    assert!(q0.start(&busy).await.expect("start"));
    let mut started = vec![busy.id.as_str().to_string()];
    for _ in 0..8 {
        // Polled once, then dropped: the look it began goes on without it.
        if let Some(Some(d)) = futures_util::FutureExt::now_or_never(q1.next()) {
            if q1.start(&d).await.expect("start") {
                started.push(d.id.as_str().to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Whatever is left, each queue hands out; a job taken by a cancelled look
    // is in worker 1's queue, not lost in its claim directory.
    for q in [&q1, &q0] {
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), q.next()).await {
            if q.start(&d).await.expect("start") {
                started.push(d.id.as_str().to_string());
            }
        }
    }
    started.sort();
    let before = started.len();
    started.dedup();
    assert_eq!(before, started.len(), "a job was started twice");
    assert_eq!(
        started
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        admitted,
        "every admitted job is started once"
    );
}
