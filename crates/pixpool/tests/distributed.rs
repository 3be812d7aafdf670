//! The distributed mode on real servers started here: a three-node NATS JetStream
//! cluster and an S3-compatible server (moto), with two `pixpool serve` trees that
//! share them and so are one service. The API is the same as the embedded mode's;
//! these tests go through it on both trees, and look into the bucket and the
//! processes, never at a mock.
//!
//! Needs `nats-server` and `moto_server` (`PIXPOOL_NATS_SERVER`,
//! `PIXPOOL_MOTO_SERVER`, else `PATH`); without them each test says so and passes.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use pixpool_testkit::servers::Moto;
use pixpool_testkit::*;

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(test_photo(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The shared servers of one test, and the trees it starts on them.
type Service = Services;

/// Every `processing attempt=` line for `id` in the logs of `trees`.
fn processing_lines(trees: &[&Server], id: &str) -> Vec<String> {
    trees.iter().flat_map(|t| t.processing_lines(id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trees_on_one_queue_and_bucket_are_one_service() {
    let Some(svc) = Service::start("one-service") else {
        return;
    };
    let a = svc.tree(1, 1, &[]);
    let b = svc.tree(1, 1, &[]);
    for tree in [&a, &b] {
        let mut conn = Conn::open(tree.addr).await.expect("connect");
        let health = conn.get("/health").await.expect("health");
        assert_eq!(
            health.json()["backend"],
            "distributed",
            "{:?}",
            health.json()
        );
        let ready = conn.get("/readyz").await.expect("readyz");
        assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body_snippet());
    }

    // Uploaded on A, followed and served on B: the record, the long-poll, the
    // events and the images are the service's, not a host's.
    let bytes = tagged_jpeg(&photo("04-fallenleaf.jpg"), "one-service");
    let mut on_a = Conn::open(a.addr).await.expect("connect A");
    let resp = on_a
        .upload_to(
            "/upload?presets=thumb,medium",
            &[("image", Some("leaf.jpg"), &bytes)],
        )
        .await
        .expect("upload on A");
    let id = accepted_id(&resp, "upload on A");
    let mut on_b = Conn::open(b.addr).await.expect("connect B");
    let mut events = on_b
        .events(&format!("/jobs/{id}/events"), None)
        .await
        .expect("events on B");
    let job = wait_final(b.addr, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
    let seen = events.all(Duration::from_secs(20)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "output").count(),
        2,
        "one output event per preset: {names:?}"
    );
    // New connections: these sat idle through the waits, past the front's
    // header-read timeout on a slow machine.
    let mut on_a = Conn::open(a.addr).await.expect("connect A");
    let mut on_b = Conn::open(b.addr).await.expect("connect B");
    let polled = on_a
        .get(&format!("/jobs/{id}?wait=5"))
        .await
        .expect("long-poll on A");
    assert_eq!(polled.json(), job, "both fronts tell the same record");

    // The original and both variants are in the bucket under the prefix.
    let keys = svc.keys();
    for key in [
        format!("svc/originals/{id}.jpg"),
        format!("svc/variants/{id}-thumb.jpg"),
        format!("svc/variants/{id}-medium.jpg"),
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }

    // Each image, from either front: the same bytes, ETag, caching and 304.
    for out in job["outputs"].as_array().expect("outputs") {
        let url = out["url"].as_str().expect("url");
        let etag = format!("\"{}\"", out["etag"].as_str().expect("etag"));
        let from_a = on_a.get(url).await.expect("GET on A");
        let from_b = on_b.get(url).await.expect("GET on B");
        for (r, front) in [(&from_a, "A"), (&from_b, "B")] {
            assert_eq!(r.status, StatusCode::OK, "{front} {url}");
            assert_eq!(r.header("etag"), Some(etag.as_str()), "{front} {url}");
            assert_eq!(r.header("content-type"), Some("image/jpeg"));
            assert_eq!(
                r.header("cache-control"),
                Some("public, max-age=31536000, immutable")
            );
            assert_eq!(out["bytes"].as_u64(), Some(r.body.len() as u64));
        }
        assert!(from_a.body == from_b.body, "{url}: one object");
        let (w, _) = image::load_from_memory(&from_b.body)
            .map(|i| (i.width(), i.height()))
            .expect("a served variant decodes");
        assert_eq!(Some(u64::from(w)), out["width"].as_u64(), "{url}");
        let head = on_b.request(Method::HEAD, url, &[]).await.expect("HEAD");
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        let cached = on_a
            .request(Method::GET, url, &[("if-none-match", &etag)])
            .await
            .expect("conditional GET");
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED, "{url}");
    }
    let missing = on_b.get(&format!("/images/{id}/large")).await.expect("GET");
    assert_problem(&missing, StatusCode::NOT_FOUND, "a preset not asked for");
    let unknown = on_b
        .upload_to(
            "/upload?presets=nonesuch",
            &[("image", Some("leaf.jpg"), &bytes)],
        )
        .await
        .expect("upload");
    assert_problem(&unknown, StatusCode::BAD_REQUEST, "an unknown preset");

    // Identical bytes sent at once to both trees: one job, processed once, on
    // whichever worker of the service took it.
    let leaf = photo("06-grey-grayscale.jpg");
    let mut ids = Vec::new();
    for round in 0..3 {
        let bytes = tagged_jpeg(&leaf, &format!("race-{round}"));
        let (ra, rb) = tokio::join!(
            upload(a.addr, "a.jpg", &bytes),
            upload(b.addr, "b.jpg", &bytes)
        );
        ids.push(one_job_of_a_race(&ra, &rb, &format!("round {round}")));
    }
    for id in &ids {
        let job = wait_final(a.addr, id, Duration::from_secs(60)).await;
        assert_eq!(
            (&job["state"], &job["attempts"]),
            (&"done".into(), &1.into())
        );
        let lines = processing_lines(&[&a, &b], id);
        assert_eq!(lines.len(), 1, "job {id} processed once: {lines:#?}");
    }
    // A repeat of a finished job is answered from the shared dedup index, on
    // the other tree: 200, the same job.
    let again = upload(b.addr, "again.jpg", &tagged_jpeg(&leaf, "race-0")).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body_snippet());
    assert_eq!(again.json()["id"], ids[0].as_str());
    // Nothing is left in either tree's spool.
    for tree in [&a, &b] {
        let spool = files_below(&tree.uploads.join("tmp"));
        assert!(spool.is_empty(), "spool files left: {spool:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_only_host_and_a_worker_only_host_share_the_work() {
    let Some(svc) = Service::start("split-hosts") else {
        return;
    };
    let workers = svc.tree(0, 2, &[]);
    assert!(
        workers
            .children()
            .iter()
            .all(|(_, c)| !c.contains(" front ")),
        "a worker-only host runs no front"
    );
    let fronts = svc.tree(1, 0, &[]);
    let mut ids = Vec::new();
    let mut conn = Conn::open(fronts.addr).await.expect("connect");
    for n in 0..6 {
        let bytes = unique_jpeg(&photo("04-fallenleaf.jpg"), 9000 + n);
        let resp = conn
            .upload_to("/upload?presets=thumb", &[("image", Some("l.jpg"), &bytes)])
            .await
            .expect("upload");
        ids.push(accepted_id(&resp, "upload to the front-only host"));
    }
    for id in &ids {
        let job = wait_final(fronts.addr, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(
            workers.processing_lines(id).len(),
            1,
            "run by the worker host"
        );
    }
    assert!(
        fronts.processing_lines(&ids[0]).is_empty(),
        "a front-only host runs no job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_serve_at_once_naming_it() {
    let Some(moto) = Moto::start("no-bucket") else {
        return;
    };
    let started = Instant::now();
    let out = std::process::Command::new(pixpool_bin())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--uploads",
        ])
        .arg(fresh_uploads())
        // No NATS server is needed to find the bucket missing.
        .args([
            "--queue",
            "nats://127.0.0.1:1",
            "--store",
            "s3://no-such-bucket/x",
        ])
        .envs(moto.env())
        .output()
        .expect("run pixpool serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-bucket"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused within seconds: {:?}",
        started.elapsed()
    );
    assert!(
        !stderr.contains("pixpool front") && !stderr.contains("all children started"),
        "no child was started: {stderr}"
    );
}

#[test]
fn a_host_without_fronts_or_workers_needs_a_queue() {
    for (fronts, workers) in [("0", "1"), ("1", "0")] {
        let out = std::process::Command::new(pixpool_bin())
            .args(["check-config", "--fronts", fronts, "--workers", workers])
            .env_remove("PIXPOOL_CONFIG")
            .output()
            .expect("run check-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "fronts {fronts} workers {workers}");
        assert!(stderr.contains("queue"), "{stderr}");
        let out = std::process::Command::new(pixpool_bin())
            .args(["check-config", "--fronts", fronts, "--workers", workers])
            .args(["--queue", "nats://127.0.0.1:4222"])
            .env_remove("PIXPOOL_CONFIG")
            .output()
            .expect("run check-config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("queue = \"nats://127.0.0.1:4222\""),
            "{shown}"
        );
    }
}

/// The flags of a tree whose jobs go to another worker soon after their worker stops
/// answering (the production default is 30 s).
const QUICK_REDELIVERY: &[&str] = &["--queue-ack-wait-secs", "5"];

/// The final record of every job in `ids`, each checked done with its variants
/// served as the record describes them.
async fn all_done(front: &Server, ids: &[String], within: Duration) -> Vec<serde_json::Value> {
    let mut jobs = Vec::new();
    for id in ids {
        let job = wait_final(front.addr, id, within).await;
        assert_eq!(job["state"], "done", "{job}");
        jobs.push(job);
    }
    // Opened after the waits: a connection idle past the front's header-read timeout
    // is closed by the front, as any keep-alive client expects.
    let mut conn = Conn::open(front.addr).await.expect("connect");
    for job in &jobs {
        for out in job["outputs"].as_array().expect("outputs") {
            let url = out["url"].as_str().expect("url");
            let got = conn.get(url).await.expect("GET image");
            assert_eq!(got.status, StatusCode::OK, "{url}");
            let etag = format!("\"{}\"", out["etag"].as_str().expect("etag"));
            assert_eq!(got.header("etag"), Some(etag.as_str()), "{url}");
            assert_eq!(out["bytes"].as_u64(), Some(got.body.len() as u64), "{url}");
        }
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_burst_and_a_lost_nats_node_lose_no_accepted_job() {
    let Some(mut svc) = Service::start("faults") else {
        return;
    };
    let workers = svc.tree(0, 2, QUICK_REDELIVERY);
    let front = svc.tree(1, 0, QUICK_REDELIVERY);
    let leaf = photo("04-fallenleaf.jpg");
    let mut conn = Conn::open(front.addr).await.expect("connect");
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for n in 0..12 {
        if n == 3 {
            // Both workers of the worker host, mid-burst, with jobs in hand.
            for slot in 0..2 {
                kill9(workers.child_pid("worker", slot).expect("worker pid"));
            }
        }
        if n == 6 {
            svc.nats.kill(1);
        }
        if n == 9 {
            svc.nats.restart(1);
        }
        let bytes = unique_jpeg(&leaf, 7000 + n);
        let resp = match conn
            .upload_to(
                "/upload?presets=thumb,small",
                &[("image", Some("l.jpg"), &bytes)],
            )
            .await
        {
            Ok(r) => r,
            Err(_) => {
                conn = Conn::open(front.addr).await.expect("reconnect");
                refused += 1;
                continue;
            }
        };
        match resp.status {
            StatusCode::ACCEPTED => accepted.push(accepted_id(&resp, "burst")),
            // Not taken while the cluster moved its leaders: refused, never lost.
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(resp.header("retry-after").is_some(), "{resp:?}");
                refused += 1;
            }
            other => panic!("upload {n}: {other} {:?}", resp.body_snippet()),
        }
    }
    assert!(
        accepted.len() >= 6,
        "{} accepted, {refused} refused",
        accepted.len()
    );
    let jobs = all_done(&front, &accepted, Duration::from_secs(120)).await;
    for job in &jobs {
        assert_eq!(job["outputs"].as_array().map(Vec::len), Some(2), "{job}");
    }
    // Ran again: the two jobs in hand when the workers died, and at most the two in
    // hand when the NATS node went (their in-progress acks may miss the 5 s ack wait
    // while their clients reconnect; the compare-and-swap keeps one result). Never
    // more: a worker slot holds one job at a time.
    let reruns = accepted
        .iter()
        .filter(|id| workers.processing_lines(id).len() > 1)
        .count();
    assert!(
        reruns <= 4,
        "at most the jobs in hand at each fault ran twice: {reruns}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_past_its_deadline_cannot_overwrite_the_newer_state() {
    let Some(svc) = Service::start("zombie") else {
        return;
    };
    let with_admin = [QUICK_REDELIVERY, &["--admin", "127.0.0.1:0"]].concat();
    let workers = svc.tree(0, 2, &with_admin);
    let front = svc.tree(1, 0, &with_admin);
    let (name, bytes) = slow_photo("zombie");
    let resp = upload(front.addr, &name, &bytes).await;
    let id = accepted_id(&resp, "slow photo");
    // Frozen mid-job: the worker whose `processing` line names the job.
    let line = poll_until(
        Duration::from_secs(60),
        || format!("job {id} never started:\n{}", workers.log_text()),
        || workers.processing_lines(&id).into_iter().next(),
    )
    .await;
    let zombie_slot: u32 = (0..2)
        .find(|s| line.contains(&format!("slot={s}")))
        .unwrap_or_else(|| panic!("no slot in {line}"));
    let zombie = workers.child_pid("worker", zombie_slot).expect("pid");
    pause_process(zombie);

    // Its heartbeat stops; after the deadline the other worker runs the job.
    let job = wait_final(front.addr, &id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    resume_process(zombie);
    // The zombie finishes its render, and its final write loses the race.
    poll_until(
        Duration::from_secs(60),
        || format!("the zombie did not give up:\n{}", workers.log_text()),
        || {
            (!workers
                .log_lines_with(&[&id, "the record changed under this worker"])
                .is_empty())
            .then_some(())
        },
    )
    .await;
    let after = all_done(&front, std::slice::from_ref(&id), Duration::from_secs(5)).await;
    assert_eq!(after[0], job, "the newer state stands, outputs and all");

    // The queue's view and the object store's timings, per side.
    scrape_until(workers.admin_addr(), "the workers' queue metrics", |t| {
        metric(t, "pixpool_queue_redeliveries_total") >= 1.0
            && metric(t, "pixpool_queue_ack_seconds_count{op=\"ack\"}") >= 1.0
            && metric(t, "pixpool_blob_seconds_count{op=\"get_original\"}") >= 2.0
            && metric(t, "pixpool_blob_seconds_count{op=\"put_variant\"}") >= 4.0
    })
    .await;
    scrape_until(front.admin_addr(), "the front's queue metrics", |t| {
        metric(t, "pixpool_queue_ack_seconds_count{op=\"publish\"}") >= 1.0
            && metric(t, "pixpool_blob_seconds_count{op=\"put_original\"}") >= 1.0
            && metric(t, "pixpool_blob_seconds_count{op=\"get_variant\"}") >= 4.0
    })
    .await;
}

/// A job taken and done before an outage: the tree works.
async fn done_before_the_outage(tree: &Server) -> String {
    let first = upload(
        tree.addr,
        "a.jpg",
        &unique_jpeg(&photo("04-fallenleaf.jpg"), 1),
    )
    .await;
    let first = accepted_id(&first, "before the outage");
    wait_final(tree.addr, &first, Duration::from_secs(60)).await;
    first
}

/// While a shared service is down: `/readyz` fails (within `notice`), an upload is
/// refused with 503 + Retry-After within 10 s, `/health` stays 200.
async fn refused_while_down(tree: &Server, conn: &mut Conn, notice: Duration) {
    wait_for_status(conn, "/readyz", StatusCode::SERVICE_UNAVAILABLE, notice).await;
    let started = Instant::now();
    let during = upload(
        tree.addr,
        "b.jpg",
        &unique_jpeg(&photo("04-fallenleaf.jpg"), 2),
    )
    .await;
    let took = started.elapsed();
    assert_problem(
        &during,
        StatusCode::SERVICE_UNAVAILABLE,
        "upload during the outage",
    );
    assert!(during.header("retry-after").is_some(), "{during:?}");
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    let health = conn.get("/health").await.expect("health");
    assert_eq!(health.status, StatusCode::OK);
}

/// Once the service is back: ready again within `within`, with no restart, and an
/// upload runs to `done`.
async fn recovered(tree: &Server, conn: &mut Conn, within: Duration) {
    wait_for_status(conn, "/readyz", StatusCode::OK, within).await;
    // Ready means every stream has a leader again; one may still move once, and a
    // client retries a 503 that says when.
    let bytes = unique_jpeg(&photo("04-fallenleaf.jpg"), 3);
    let mut after = upload(tree.addr, "c.jpg", &bytes).await;
    for _ in 0..20 {
        if after.status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(after.header("retry-after").is_some(), "{after:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = upload(tree.addr, "c.jpg", &bytes).await;
    }
    let after = accepted_id(&after, "after the outage");
    let job = wait_final(tree.addr, &after, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_stops_answering_gets_503_fast_and_the_service_recovers_alone() {
    let Some(svc) = Service::start("s3-outage") else {
        return;
    };
    let tree = svc.tree(1, 1, &[]);
    done_before_the_outage(&tree).await;
    let mut conn = Conn::open(tree.addr).await.expect("connect");
    svc.moto.pause();
    refused_while_down(&tree, &mut conn, Duration::from_secs(10)).await;
    svc.moto.resume();
    recovered(&tree, &mut conn, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_quorum_gets_503_fast_and_the_service_recovers_alone() {
    let Some(mut svc) = Service::start("no-quorum") else {
        return;
    };
    let tree = svc.tree(1, 1, &[]);
    let first = done_before_the_outage(&tree).await;
    let mut conn = Conn::open(tree.addr).await.expect("connect");
    // Two of three servers gone: no leader, no write can be acknowledged.
    svc.nats.kill(1);
    svc.nats.kill(2);
    refused_while_down(&tree, &mut conn, Duration::from_secs(20)).await;
    // Records are read from their leader, never from a replica that may lag behind a
    // 202: the finished job reads as it is (a leader that has not yet stepped down)
    // or 503, never as absent or as an error.
    let status = conn.get(&format!("/jobs/{first}")).await.expect("GET job");
    if status.status == StatusCode::OK {
        assert_eq!(status.json()["state"], "done", "{status:?}");
    } else {
        assert_problem(
            &status,
            StatusCode::SERVICE_UNAVAILABLE,
            "a read without quorum",
        );
    }
    svc.nats.restart(1);
    svc.nats.restart(2);
    recovered(&tree, &mut conn, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_three_workers_is_failed_and_leaves_the_queue() {
    let Some(svc) = Service::start("poison") else {
        return;
    };
    let quick = ["--queue-ack-wait-secs", "3"];
    let workers = svc.tree(0, 1, &quick);
    let front = svc.tree(1, 0, &quick);
    let (name, bytes) = slow_photo("poison-distributed");
    let resp = upload(front.addr, &name, &bytes).await;
    let id = accepted_id(&resp, "poison");
    let mut conn = Conn::open(front.addr).await.expect("connect");
    for attempt in 1..=3u64 {
        poll_until(
            Duration::from_secs(60),
            || format!("attempt {attempt} never started:\n{}", workers.log_text()),
            || {
                let lines = workers.processing_lines(&id);
                (lines.len() as u64 >= attempt).then_some(())
            },
        )
        .await;
        let victim = workers.child_pid("worker", 0).expect("worker 0");
        kill9(victim);
        let rec = conn
            .get(&format!("/jobs/{id}"))
            .await
            .expect("GET job")
            .json();
        assert_eq!(
            (&rec["state"], &rec["attempts"]),
            (&"processing".into(), &attempt.into()),
            "attempt {attempt} finished before the kill: {rec}"
        );
        workers
            .wait_respawn("worker", 0, victim, Duration::from_secs(30))
            .await;
    }
    // Its fourth delivery finds three attempts: failed, and acked for good.
    let job = wait_final(front.addr, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    let kind = job["error"]["type"].as_str().unwrap_or("");
    assert!(kind.contains("too-many-attempts"), "{job}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        workers.processing_lines(&id).len(),
        3,
        "never delivered again once failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_host_killed_mid_upload_leaves_nothing_and_loses_nothing() {
    let Some(svc) = Service::start("front-killed") else {
        return;
    };
    // A pull that expires just as a job arrives costs that job one ack wait.
    let workers = svc.tree(0, 1, QUICK_REDELIVERY);
    let fronts = svc.tree(2, 0, QUICK_REDELIVERY);
    let leaf = photo("04-fallenleaf.jpg");
    let mut accepted = Vec::new();
    let mut conn = Conn::open(fronts.addr).await.expect("connect");
    for i in 0..3 {
        let resp = conn
            .upload_to(
                "/upload?presets=thumb",
                &[(
                    "image",
                    Some("l.jpg"),
                    &tagged_jpeg(&leaf, &format!("before-{i}")),
                )],
            )
            .await
            .expect("upload");
        accepted.push(accepted_id(&resp, "before the kill"));
    }

    let sock = half_an_upload(fronts.addr, &tagged_jpeg(&leaf, "half"));
    let tmp = fronts.uploads.join("tmp");
    let (slot, half_id) = poll_until(
        Duration::from_secs(10),
        || format!("no spool file under tmp/: {:?}", files_below(&tmp)),
        || {
            files_below(&tmp).into_iter().find_map(|f| {
                let (slot, file) = f.split_once('/')?;
                Some((
                    slot.parse::<u32>().ok()?,
                    file.strip_suffix(".part")?.to_string(),
                ))
            })
        },
    )
    .await;
    let victim = fronts.child_pid("front", slot).expect("that front");
    kill9(victim);
    drop(sock);
    fronts
        .wait_respawn("front", slot, victim, Duration::from_secs(10))
        .await;
    let spool = tmp.join(slot.to_string());
    poll_until(
        Duration::from_secs(30),
        || format!("tmp/{slot}/ after the respawn: {:?}", files_below(&spool)),
        || files_below(&spool).is_empty().then_some(()),
    )
    .await;
    // Nothing of the half upload reached the service: no record, no object. (A new
    // connection: the one above may have been the killed front's.)
    let mut conn = Conn::open(fronts.addr).await.expect("connect");
    let gone = conn.get(&format!("/jobs/{half_id}")).await.expect("GET");
    assert_problem(&gone, StatusCode::NOT_FOUND, "the half upload's job");
    let keys = svc.keys();
    assert!(
        !keys.iter().any(|k| k.contains(&half_id)),
        "objects of the half upload: {keys:?}"
    );
    // The same bytes, sent again in full, are a new job (no ghost dedup entry).
    let again = upload(fronts.addr, "half-again.jpg", &tagged_jpeg(&leaf, "half")).await;
    let again = accepted_id(&again, "the killed upload, sent again in full");
    assert_ne!(again, half_id);
    accepted.push(again);
    all_done(&fronts, &accepted, Duration::from_secs(60)).await;
    assert!(
        workers.children().len() == 1,
        "the worker host ran throughout"
    );
}

/// A 48 MiB upload (a photo and 47 MiB after its end of image, which decoders
/// ignore) is streamed to S3 in parts: a front's memory grows by a few parts at most
/// over what the embedded mode's front needs for the same upload, never by the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_48_mib_upload_costs_a_front_a_few_parts_more_than_the_embedded_mode() {
    let Some(svc) = Service::start("big") else {
        return;
    };
    const MIB: u64 = 1024 * 1024;
    // Parts of 8 MiB, two in flight and one filling (`pixpool_store::s3`).
    const PARTS: u64 = 3 * 8 * MIB;
    let mut big = photo("04-fallenleaf.jpg");
    big.resize(48 * MIB as usize, 0x5A);
    let distributed = svc.tree(1, 1, &[]);
    let embedded = Server::start_in(fresh_uploads(), 1, 1, &[]);
    let mut grew = Vec::new();
    for (server, mode) in [(&embedded, "embedded"), (&distributed, "distributed")] {
        let front = server.child_pid("front", 0).expect("front");
        let before = peak_rss_bytes(front);
        let resp = upload(server.addr, "big.jpg", &big).await;
        let id = accepted_id(&resp, mode);
        let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "done", "{mode}: {job}");
        assert_eq!(job["source"]["bytes"], big.len() as u64, "{mode}: {job}");
        grew.push(peak_rss_bytes(front).saturating_sub(before));
    }
    eprintln!(
        "front peak RSS growth for a 48 MiB upload: embedded {:.1} MiB, distributed {:.1} MiB",
        grew[0] as f64 / MIB as f64,
        grew[1] as f64 / MIB as f64
    );
    assert!(
        grew[1] <= grew[0] + PARTS,
        "the distributed front grew by {} bytes, the embedded one by {}",
        grew[1],
        grew[0]
    );
    let original = svc
        .keys()
        .into_iter()
        .find(|k| k.starts_with("svc/originals/"))
        .expect("the original in the bucket");
    assert_eq!(
        svc.object(&original).map(|o| o.len()),
        Some(big.len()),
        "stored whole"
    );
}
