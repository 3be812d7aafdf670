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
