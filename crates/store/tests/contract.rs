//! The contracts of the backend traits (`suite`) run against the embedded
//! implementation, and the embedded claim queue's own.

mod suite;

use std::sync::Arc;
use std::time::Duration;

use pixpool_model::JobId;
use pixpool_store::backend::Consumer;
use pixpool_store::embedded::{AdmitError, Bus, ClaimQueue, FileBlobs, FileRecords};
use suite::{blobs, events, records, Dir};

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

/// Records change by swapping in spare files that are rewritten later: readers racing
/// the writers (for longer than a spare rests) always get a whole record, their own,
/// and the record files take no new inodes once each writer has its spares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_records_read_whole_while_spares_are_reused() {
    use pixpool_store::backend::{Durability, Records};
    use std::os::unix::fs::MetadataExt;
    let (_dir, store) = Dir::new("spares");
    let records: Arc<dyn Records> = Arc::new(FileRecords::new(store.clone()));
    let mut ids = Vec::new();
    for _ in 0..4 {
        let rec = suite::sample();
        records.create(&rec).await.expect("create");
        ids.push(rec.id);
    }
    let until = std::time::Instant::now() + Duration::from_millis(2000);
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            let mut updates = 0u32;
            while std::time::Instant::now() < until {
                let read = records.get(&id).await.expect("get").expect("present");
                let mut rec = read.value;
                rec.attempts += 1;
                records
                    .update(&rec, read.revision, Durability::Provisional)
                    .await
                    .expect("the only writer of this record");
                updates += 1;
            }
            updates
        }));
    }
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, ids) = (store.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while std::time::Instant::now() < until {
                    for id in &ids {
                        let got = store.read_versioned(id).expect("a whole record");
                        assert_eq!(&got.expect("present").value.id, id, "another job's record");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let mut updates = 0;
    for t in tasks {
        updates += t.await.expect("writer");
    }
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    assert!(updates > 100, "only {updates} updates");
    for id in &ids {
        let rec = records.get(id).await.expect("get").expect("present");
        assert!(rec.value.attempts > 0);
    }
    // Far fewer inodes than updates: the files swapped out came back as spares.
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(store.jobs_dir())
        .expect("list")
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
        .collect();
    // (At most 256 spares per process and directory: beyond, files are freed.)
    assert!(
        inodes.len() <= ids.len() + 256 && (inodes.len() as u32) * 2 < updates,
        "{} files for {updates} updates",
        inodes.len()
    );
}

#[test]
fn a_record_file_that_names_another_job_is_corrupt() {
    let (_dir, store) = Dir::new("misnamed");
    let (a, b) = (suite::sample(), suite::sample());
    store.write_record(&a).expect("write");
    std::fs::copy(store.record_path(&a.id), store.record_path(&b.id)).expect("copy");
    assert!(matches!(
        store.read_versioned(&b.id),
        Err(pixpool_store::StoreError::CorruptRecord { .. })
    ));
    assert_eq!(
        store
            .read_versioned(&a.id)
            .expect("read")
            .expect("present")
            .value,
        a
    );
}

#[tokio::test]
async fn embedded_blobs_keep_the_contract() {
    let (_dir, store) = Dir::new("blobs");
    blobs(Arc::new(FileBlobs::new(store.clone())), &store).await;
}

#[tokio::test]
async fn embedded_outbox_keeps_the_contract() {
    let (_dir, store) = Dir::new("outbox");
    suite::outbox(Arc::new(pixpool_store::embedded::FileOutbox::new(store))).await;
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
