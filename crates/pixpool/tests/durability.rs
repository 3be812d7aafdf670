//! What a 202 promises (issue 3), on the real binary with real `kill -9`:
//! workers, fronts and the whole tree killed at the worst moments, poison
//! jobs and torn records. Nothing accepted may be lost or left half-done.

use std::io::Read;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use pixpool_testkit::*;
use serde_json::Value;

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(test_photo(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn is_final(rec: &Value) -> bool {
    rec["state"] == "done" || rec["state"] == "failed"
}

/// Every output of a done job is a JPEG of the size its record says.
fn assert_done_with_outputs(server: &Server, job: &Value, presets: usize) {
    assert_eq!(job["state"], "done", "{job}");
    assert!(job["error"].is_null(), "{job}");
    let outputs = job["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), presets, "{job}");
    // Paths are the store's, not the API's: the record has them.
    let rec = server
        .record(job["id"].as_str().expect("id"))
        .expect("record");
    let stored = rec["outputs"].as_array().expect("stored outputs");
    for (out, stored) in outputs.iter().zip(stored) {
        let (w, h) = jpeg_dimensions(&server.uploads.join(stored["path"].as_str().expect("path")));
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(w as u64), Some(h as u64)),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_redelivered_to_its_slot_and_completes() {
    let server = Server::start(1, 1, &[]);
    let (name, bytes) = slow_photo("worker-kill");
    let resp = upload(server.addr, &name, &bytes).await;
    let id = accepted_id(&resp, "slow job");
    // A client follows the job's events across the kill.
    let mut follower = Conn::open(server.addr).await.expect("connect");
    let mut events = follower
        .events(&format!("/jobs/{id}/events"), None)
        .await
        .expect("events");
    assert_eq!(events.status, StatusCode::OK);

    let processing = server
        .wait_record(&id, Duration::from_secs(10), "processing", |r| {
            r["state"] == "processing"
        })
        .await;
    assert_eq!(processing["attempts"], 1, "{processing}");
    let victim = server.child_pid("worker", 0).expect("worker 0");
    kill9(victim);
    // The kill landed mid-job: the record still says processing, attempt 1.
    let rec = server.record(&id).expect("record");
    assert!(
        rec["state"] == "processing" && rec["attempts"] == 1,
        "the job finished before the kill (make it slower): {rec}"
    );
    assert!(
        server
            .uploads
            .join(format!("claims/0/{id}.running"))
            .exists(),
        "the dead worker's claim stays on disk, as running"
    );

    let respawned = server
        .wait_respawn("worker", 0, victim, Duration::from_secs(5))
        .await;
    let killed = Instant::now();
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_done_with_outputs(&server, &job, 4);
    assert_eq!(
        job["attempts"], 2,
        "one interrupted attempt, one whole: {job}"
    );
    assert_eq!(server.record(&id).expect("record")["worker"], 0, "{job}");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "redelivered and done within seconds, took {:?}",
        killed.elapsed()
    );
    // The killed attempt may not have logged its line (the record is written
    // first); the respawned worker #0 logs attempt 2.
    let lines = server.processing_lines(&id);
    let by_respawned = format!("worker#0[{respawned}]");
    assert!(
        (1..=2).contains(&lines.len())
            && lines
                .last()
                .is_some_and(|l| l.contains(&by_respawned) && l.contains("attempt=2")),
        "the respawned worker #0 ran attempt 2: {lines:#?}"
    );
    let claims = dir_entries(&server.uploads.join("claims/0"));
    assert!(claims.is_empty(), "claim dropped when done: {claims:?}");

    // The follower's stream went on through the redelivery and ended with `done`.
    let seen = events.all(Duration::from_secs(10)).await;
    for pair in seen.windows(2) {
        assert!(pair[1].id > pair[0].id, "ids increase strictly: {pair:#?}");
    }
    assert_eq!(
        seen.first().map(|e| e.event.as_str()),
        Some("queued"),
        "{seen:#?}"
    );
    let last = seen.last().expect("events");
    assert_eq!(last.event, "done", "{seen:#?}");
    assert_eq!(last.json()["attempts"], 2, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|e| e.event == "processing" && e.json()["attempt"] == 2),
        "the second attempt was announced: {seen:#?}"
    );
    // No half-written output is left beside the final ones.
    let stray: Vec<_> = dir_entries(&server.uploads.join("processed"))
        .into_iter()
        .filter(|f| f.starts_with('.') || f.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temp outputs left: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_killed_mid_upload_leaves_no_spool_file_and_no_job() {
    let server = Server::start(2, 1, &[]);
    let leaf = photo("04-fallenleaf.jpg");

    // Accepted before the kill, and still queued behind one another (one worker).
    let mut accepted = Vec::new();
    let mut conn = Conn::open(server.addr).await.expect("connect");
    for i in 0..4 {
        let resp = conn
            .upload("leaf.jpg", &tagged_jpeg(&leaf, &format!("before-{i}")))
            .await
            .expect("upload");
        accepted.push(accepted_id(&resp, "before the kill"));
    }

    let mut sock = half_an_upload(server.addr, &tagged_jpeg(&leaf, "half"));
    // Which front has it: its spool file is tmp/<front slot>/<id>.part.
    let tmp = server.uploads.join("tmp");
    let (slot, part) = poll_until(
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
    let half_id = part;
    let victim = server.child_pid("front", slot).expect("that front");
    kill9(victim);

    // Its client never gets an answer, only the end of the connection.
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let read = sock.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 202 "),
        "a killed front answered 202: {:?} ({read:?})",
        String::from_utf8_lossy(&answer)
    );
    if let Err(e) = &read {
        assert!(
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            "the connection of a killed front stayed open: {e}"
        );
    }

    server
        .wait_respawn("front", slot, victim, Duration::from_secs(5))
        .await;
    let spool = tmp.join(slot.to_string());
    poll_until(
        Duration::from_secs(10),
        || format!("tmp/{slot}/ after the respawn: {:?}", files_below(&spool)),
        || files_below(&spool).is_empty().then_some(()),
    )
    .await;
    assert!(
        !server.uploads.join(format!("jobs/{half_id}.json")).exists(),
        "a job was recorded for the half upload {half_id}"
    );
    let raws: Vec<_> = dir_entries(&server.uploads.join("raw"))
        .into_iter()
        .filter(|f| f.starts_with(&half_id))
        .collect();
    assert!(
        raws.is_empty(),
        "original kept for the half upload: {raws:?}"
    );

    // Everything that got its 202 completes, and the server still takes uploads,
    // the very bytes of the killed upload included (no ghost dedup entry).
    let resp = upload(server.addr, "after.jpg", &tagged_jpeg(&leaf, "after")).await;
    accepted.push(accepted_id(&resp, "after the kill"));
    let resp = upload(server.addr, "half-again.jpg", &tagged_jpeg(&leaf, "half")).await;
    let again = accepted_id(&resp, "the killed upload, sent again in full");
    assert_ne!(again, half_id);
    accepted.push(again);
    for id in &accepted {
        let job = wait_final(server.addr, id, Duration::from_secs(60)).await;
        assert_done_with_outputs(&server, &job, 4);
    }
    assert_eq!(
        server.job_ids().len(),
        accepted.len(),
        "one record per accepted upload, none for the half one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_whole_tree_with_fifty_queued_jobs_loses_none() {
    const JOBS: usize = 50;
    let server = Server::start(1, 1, &[]);
    let grey = photo("06-grey-grayscale.jpg");
    let mut ids = Vec::new();
    let mut conn = Conn::open(server.addr).await.expect("connect");
    for i in 0..JOBS {
        let resp = conn
            .upload("grey.jpg", &tagged_jpeg(&grey, &format!("tree-{i}")))
            .await
            .expect("upload");
        ids.push(accepted_id(&resp, &format!("upload {i}")));
    }
    drop(conn);

    let (uploads, log) = server.kill_tree();
    poll_until(
        Duration::from_secs(5),
        || {
            format!(
                "processes outlived the supervisor: {:?}",
                processes_using(&uploads)
            )
        },
        || processes_using(&uploads).is_empty().then_some(()),
    )
    .await;
    let pending = ids
        .iter()
        .filter(|id| !read_record(&uploads, id).is_some_and(|r| is_final(&r)))
        .count();
    assert!(
        pending > 0,
        "every job finished before the kill: the test proves nothing\n{log}"
    );
    eprintln!("{pending} of {JOBS} jobs unfinished when the tree was killed");
    // The killed processes' spare files (records are swapped with them): the
    // start-up sweep removes them.
    let spares = |dir: &std::path::Path| -> Vec<String> {
        dir_entries(dir)
            .into_iter()
            .filter(|n| n.starts_with(".spare."))
            .collect()
    };
    let stale = spares(&uploads.join("jobs"));
    eprintln!("{} spare files left by the killed tree", stale.len());

    let server = Server::start_in(uploads, 1, 1, &[]);
    let left: Vec<_> = spares(&server.uploads.join("jobs"))
        .into_iter()
        .filter(|n| stale.contains(n))
        .collect();
    assert!(
        left.is_empty(),
        "a killed process's spares survived the restart: {left:?}"
    );
    let started = Instant::now();
    for id in &ids {
        let job = wait_final(server.addr, id, Duration::from_secs(60)).await;
        assert_done_with_outputs(&server, &job, 4);
    }
    eprintln!("all {JOBS} done {:?} after the restart", started.elapsed());
    // The dedup index survived too: the same bytes again are the same job.
    let again = upload(server.addr, "grey.jpg", &tagged_jpeg(&grey, "tree-7")).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.json()["id"], ids[7].as_str());
    assert_eq!(again.json()["deduplicated"], true);
    poll_until(
        Duration::from_secs(5),
        || {
            format!(
                "claims left: {:?}",
                files_below(&server.uploads.join("claims"))
            )
        },
        || {
            files_below(&server.uploads.join("claims"))
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_three_times_is_failed_as_poison() {
    let server = Server::start(1, 1, &[]);
    let (name, bytes) = slow_photo("poison");
    let resp = upload(server.addr, &name, &bytes).await;
    let id = accepted_id(&resp, "poison");

    for attempt in 1..=3u64 {
        server
            .wait_record(
                &id,
                Duration::from_secs(10),
                &format!("processing, attempt {attempt}"),
                |r| r["state"] == "processing" && r["attempts"] == attempt,
            )
            .await;
        let victim = server.child_pid("worker", 0).expect("worker 0");
        kill9(victim);
        let rec = server.record(&id).expect("record");
        assert!(
            rec["state"] == "processing" && rec["attempts"] == attempt,
            "attempt {attempt} finished before the kill: {rec}"
        );
        server
            .wait_respawn("worker", 0, victim, Duration::from_secs(10))
            .await;
    }
    let job = wait_final(server.addr, &id, Duration::from_secs(20)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    assert!(
        job["outputs"].as_array().is_some_and(|o| o.is_empty()),
        "{job}"
    );
    let kind = job["error"]["type"].as_str().unwrap_or("");
    assert!(kind.contains("too-many-attempts"), "{job}");
    assert!(job["error"]["title"].is_string() && job["error"]["detail"].is_string());
    // Never a fourth run (a killed attempt may not have logged its line).
    let lines = server.processing_lines(&id);
    assert!(lines.len() <= 3, "{lines:#?}");
    assert!(
        !server.log_text().contains("attempt=4"),
        "a fourth attempt ran:\n{}",
        server.log_text()
    );

    // The worker lives on and the next job completes.
    let resp = upload(
        server.addr,
        "after.jpg",
        &tagged_jpeg(&photo("06-grey-grayscale.jpg"), "after-poison"),
    )
    .await;
    let next = accepted_id(&resp, "after the poison job");
    let job = wait_final(server.addr, &next, Duration::from_secs(30)).await;
    assert_done_with_outputs(&server, &job, 4);
    assert_eq!(job["attempts"], 1, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_job_record_is_logged_and_the_server_keeps_serving() {
    let uploads = std::env::temp_dir().join(format!("pixpool-test-torn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&uploads);
    let torn = "01a2083c-89a7-713c-8a3d-873a30d29dd5";
    std::fs::create_dir_all(uploads.join("jobs")).expect("jobs dir");
    std::fs::create_dir_all(uploads.join("claims/0")).expect("claims dir");
    std::fs::write(
        uploads.join(format!("jobs/{torn}.json")),
        br#"{"id": "01a2"#,
    )
    .expect("torn record");
    std::fs::write(uploads.join(format!("claims/0/{torn}")), b"").expect("claim");

    let server = Server::start_in(uploads, 1, 1, &[]);
    let worker = server.child_pid("worker", 0).expect("worker 0");
    let front = server.child_pid("front", 0).expect("front 0");
    poll_until(
        Duration::from_secs(10),
        || format!("no line names the torn record:\n{}", server.log_text()),
        || {
            server
                .log_text()
                .lines()
                .any(|l| l.contains(torn) && (l.contains("corrupt") || l.contains("unreadable")))
                .then_some(())
        },
    )
    .await;

    let mut conn = Conn::open(server.addr).await.expect("connect");
    let resp = conn.get(&format!("/jobs/{torn}")).await.expect("get");
    assert!(
        resp.status.is_client_error() || resp.status.is_server_error(),
        "a torn record is not a job: {resp:?}"
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{resp:?}"
    );
    for (i, path) in [
        format!("/jobs/{torn}/events"),
        format!("/images/{torn}/thumb"),
    ]
    .iter()
    .enumerate()
    {
        // Any answer but a success, on a fresh connection in case this one closed.
        let mut c = Conn::open(server.addr).await.expect("connect");
        let resp = c.get(path).await.expect("get");
        assert!(!resp.status.is_success(), "#{i} {path}: {resp:?}");
    }

    let resp = upload(
        server.addr,
        "grey.jpg",
        &tagged_jpeg(&photo("06-grey-grayscale.jpg"), "after-torn"),
    )
    .await;
    let id = accepted_id(&resp, "after the torn record");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_done_with_outputs(&server, &job, 4);
    let health = Conn::open(server.addr)
        .await
        .expect("connect")
        .get("/health")
        .await
        .expect("health");
    assert_eq!(health.status, StatusCode::OK);
    // Nobody crashed over it.
    assert_eq!(
        server.child_pid("worker", 0),
        Some(worker),
        "worker restarted"
    );
    assert_eq!(server.child_pid("front", 0), Some(front), "front restarted");
}
