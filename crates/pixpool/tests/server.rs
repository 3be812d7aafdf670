//! The server end to end (issue 2): the real binary, real processes, real
//! sockets, real HTTP and real photos.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pixpool_testkit::*;
use serde_json::Value;

/// The output the `medium` preset must produce for a source of `w`×`h` pixels
/// (after EXIF orientation): 800 wide, never upscaled, aspect kept.
fn expected_medium(w: u32, h: u32) -> (u32, u32) {
    let ow = w.min(800);
    let oh = ((h as f64) * (ow as f64) / (w as f64)).round() as u32;
    (ow, oh)
}

fn assert_output(server: &Server, job: &Value, expect: (u32, u32), what: &str) {
    assert_eq!(job["state"], "done", "{what}: {job}");
    assert!(job["error"].is_null(), "{what}: {job}");
    let out = job["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["preset"] == "medium"))
        .unwrap_or_else(|| panic!("{what}: no medium output: {job}"));
    assert_eq!(out["content_type"], "image/jpeg", "{what}: {job}");
    // Where files lie is the store's business, not the API's: read the record.
    let id = job["id"].as_str().expect("id");
    let rec = server.record(id).expect("record");
    let stored = rec["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["preset"] == "medium"))
        .expect("stored medium output");
    let rel = stored["path"].as_str().expect("output path");
    assert!(rel.starts_with("processed/"), "{what}: {rel}");
    let (w, h) = jpeg_dimensions(&server.uploads.join(rel));
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(w as u64), Some(h as u64)),
        "{what}"
    );
    assert_eq!(w, expect.0, "{what}: width");
    assert!(
        h.abs_diff(expect.1) <= 1,
        "{what}: height {h}, expected {}",
        expect.1
    );
    let raw = rec["source"]["path"].as_str().expect("source path");
    assert!(
        server.uploads.join(raw).is_file(),
        "{what}: original kept at {raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_photo_is_accepted_at_once_and_processed() {
    let Some(corpus) = corpus() else { return };
    let manifest: Vec<Value> =
        serde_json::from_slice(&std::fs::read(corpus.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest.len(), 20, "corpus manifest lists 20 photos");
    let server = Server::start(2, 2, &[]);
    let addr = server.addr;

    let mut uploads = Vec::new();
    for entry in &manifest {
        let name = entry["name"].as_str().expect("name").to_string();
        let bytes = std::fs::read(corpus.join(&name)).expect("photo");
        uploads.push(tokio::spawn(async move {
            let resp = upload(addr, &name, &bytes).await;
            (name, resp)
        }));
    }
    let mut jobs = Vec::new();
    for (entry, task) in manifest.iter().zip(uploads) {
        let (name, resp) = task.await.expect("upload task");
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{name}: {:?}", resp.body);
        let body = resp.json();
        let id = body["id"].as_str().expect("id").to_string();
        assert_eq!(body["state"], "queued", "{name}");
        assert_eq!(body["status_url"], format!("/jobs/{id}"), "{name}");
        assert_eq!(
            resp.header("location"),
            Some(format!("/jobs/{id}").as_str()),
            "{name}"
        );
        assert_eq!(resp.header("content-type"), Some("application/json"));
        jobs.push((name, id, entry));
    }
    for (name, id, entry) in jobs {
        let job = wait_final(addr, &id, Duration::from_secs(180)).await;
        let (mut w, mut h) = (
            entry["width"].as_u64().expect("w") as u32,
            entry["height"].as_u64().expect("h") as u32,
        );
        let orientation = entry["orientation"].as_u64().unwrap_or(1);
        if (5..=8).contains(&orientation) {
            std::mem::swap(&mut w, &mut h);
        }
        assert_output(&server, &job, expected_medium(w, h), &name);
        if name == "01-storm-orient6.jpg" {
            let out = job["outputs"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["preset"] == "medium"))
                .expect("medium");
            assert!(
                out["height"].as_u64() > out["width"].as_u64(),
                "Orientation 6 must come out portrait: {job}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tree_has_every_role_named_in_its_command_line() {
    let server = Server::start(3, 2, &[]);
    let kids = server.children();
    assert_eq!(kids.len(), 5, "{kids:?}");
    for slot in 0..3 {
        assert!(
            server.child_pid("front", slot).is_some(),
            "front {slot} in {kids:?}"
        );
    }
    for slot in 0..2 {
        assert!(
            server.child_pid("worker", slot).is_some(),
            "worker {slot} in {kids:?}"
        );
    }
    // Every front answers /health, and from different processes over time.
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let health = conn.get("/health").await.expect("health");
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    // The log names role, slot and pid of each process.
    let log = server.log_text();
    for needle in ["supervisor[", "front#0[", "front#2[", "worker#1["] {
        assert!(log.contains(needle), "log lacks {needle}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_respawned_into_its_slot_and_jobs_flow_again() {
    let server = Server::start(1, 2, &[]);
    let old = server.child_pid("worker", 0).expect("worker 0");
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill worker");
    let killed = Instant::now();
    let new = loop {
        if let Some(pid) = server.child_pid("worker", 0).filter(|p| *p != old) {
            break pid;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "worker 0 not respawned within 2 s:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(new, old);
    assert_eq!(server.children().len(), 3);

    // New uploads are processed, by both workers (round-robin).
    let bytes = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let mut ids = Vec::new();
    for n in 0..4 {
        let resp = upload(server.addr, "grey.jpg", &unique_jpeg(&bytes, n)).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
        ids.push(resp.json()["id"].as_str().expect("id").to_string());
    }
    let mut workers = std::collections::BTreeSet::new();
    for id in ids {
        let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
        assert_output(&server, &job, (800, 500), "after respawn");
        let rec = server.record(&id).expect("record");
        workers.insert(rec["worker"].as_u64().expect("worker slot"));
    }
    assert_eq!(workers.len(), 2, "jobs went to both workers: {workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_front_under_load_fails_only_its_own_in_flight_requests() {
    let server = Arc::new(Server::start(2, 2, &[]));
    let bytes = Arc::new(std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo"));
    let kill_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    const CLIENTS: usize = 6;

    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (server, bytes, stop) = (server.clone(), bytes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A fresh connection per upload: each one goes through the shared accept queue.
                let outcome = match Conn::open(server.addr).await {
                    Ok(mut c) => c
                        .upload("grey.jpg", &unique_jpeg(&bytes, n))
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                results.push((started, outcome));
            }
            results
        }));
    }
    // Let the burst get going, then kill front 0 and note when it is really gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = server.child_pid("front", 0).expect("front 0");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill front");
    while std::fs::read_to_string(format!("/proc/{victim}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    *kill_at.lock().expect("lock") = Some(Instant::now());
    // Keep the burst going while the front is respawned.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut accepted = Vec::new();
    let mut failed_before_kill = 0;
    let mut started_after_kill = 0;
    let dead_at = kill_at.lock().expect("lock").expect("kill time");
    for t in tasks {
        for (started, outcome) in t.await.expect("client task") {
            if started > dead_at {
                started_after_kill += 1;
            }
            match outcome {
                Ok(resp) if resp.status == StatusCode::ACCEPTED => {
                    accepted.push(resp.json()["id"].as_str().expect("id").to_string())
                }
                // Back-pressure is an answer, not a failure: the workers' queues
                // are full because this burst outruns them.
                Ok(resp) if resp.status == StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(resp.header("retry-after"), Some("1"));
                }
                other => {
                    assert!(
                        started < dead_at,
                        "a request started after the front died failed: {other:?}\n{}",
                        server.log_text()
                    );
                    failed_before_kill += 1;
                }
            }
        }
    }
    // At most the requests in flight on the killed front may fail.
    assert!(
        failed_before_kill <= CLIENTS,
        "{failed_before_kill} failures"
    );
    assert!(
        started_after_kill >= CLIENTS,
        "the burst went on after the kill: {started_after_kill} requests"
    );
    assert!(!accepted.is_empty());
    let respawned = server.child_pid("front", 0).expect("front 0 respawned");
    assert_ne!(respawned, victim);
    for id in accepted {
        let job = wait_final(server.addr, &id, Duration::from_secs(120)).await;
        assert_eq!(job["state"], "done", "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_uploads_over_keep_alive_connections_all_complete() {
    let server = Server::start(2, 2, &[]);
    let bytes = Arc::new(std::fs::read(test_photo("01-storm-orient6.jpg")).expect("photo"));
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (addr, bytes) = (server.addr, unique_jpeg(&bytes, n));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.expect("connect");
            let resp = conn.upload("storm.jpg", &bytes).await.expect("upload");
            assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            let id = resp.json()["id"].as_str().expect("id").to_string();
            // Same connection again: keep-alive works after a streamed upload.
            let status = conn
                .get(&format!("/jobs/{id}"))
                .await
                .expect("status on the same connection");
            assert_eq!(status.status, StatusCode::OK);
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("client"));
    }
    for id in ids {
        let job = wait_final(server.addr, &id, Duration::from_secs(240)).await;
        assert_output(&server, &job, (800, 1200), "keep-alive burst");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_jobs_in_hand_exits_zero_and_leaves_no_process() {
    let mut server = Server::start(1, 2, &["--grace-secs", "10"]);
    let bytes = std::fs::read(test_photo("04-fallenleaf.jpg")).expect("photo");
    let mut ids = Vec::new();
    for n in 0..8 {
        let resp = upload(server.addr, "leaf.jpg", &unique_jpeg(&bytes, n)).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED);
        ids.push(resp.json()["id"].as_str().expect("id").to_string());
    }
    // Wait until a job is in a worker's hands, then ask for a drain.
    let read = |id: &str, uploads: &std::path::Path| -> Value {
        serde_json::from_slice(
            &std::fs::read(uploads.join(format!("jobs/{id}.json"))).expect("record"),
        )
        .expect("json")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let in_hand: Vec<String> = loop {
        let processing: Vec<_> = ids
            .iter()
            .filter(|id| read(id, &server.uploads)["state"] == "processing")
            .cloned()
            .collect();
        if !processing.is_empty() {
            break processing;
        }
        assert!(Instant::now() < deadline, "no job started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(12))
        .expect("supervisor exits within the grace period");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        server.log_text()
    );
    assert!(stopped.elapsed() < Duration::from_secs(12));
    let left = processes_using(&server.uploads);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    // The spare files records were swapped with go with the processes that held them.
    let spares: Vec<_> = std::fs::read_dir(server.uploads.join("jobs"))
        .expect("jobs directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".spare."))
        .collect();
    assert!(spares.is_empty(), "spare files left: {spares:?}");
    for id in &in_hand {
        assert_eq!(
            read(id, &server.uploads)["state"],
            "done",
            "job {id} in hand at SIGTERM must finish"
        );
    }

    // Jobs that were still queued are on disk, claimed: a restart runs them all.
    let uploads = server.uploads.clone();
    std::mem::forget(std::mem::replace(
        &mut server.uploads,
        std::env::temp_dir().join("pixpool-none"),
    ));
    drop(server);
    let server = Server::start_in(uploads, 1, 2, &[]);
    for id in &ids {
        let job = wait_final(server.addr, id, Duration::from_secs(120)).await;
        assert_output(&server, &job, (800, 500), "after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_json_and_the_server_keeps_serving() {
    let server = Server::start(1, 1, &[]);
    let addr = server.addr;
    let mut conn = Conn::open(addr).await.expect("connect");
    let check = |resp: &Resp, status: StatusCode| {
        assert_eq!(resp.status, status, "{:?}", resp.body);
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        let p = resp.json();
        assert_eq!(p["status"].as_u64(), Some(status.as_u16() as u64), "{p}");
        assert!(
            p["type"].as_str().is_some_and(|t| !t.is_empty())
                && p["title"].is_string()
                && p["detail"].is_string(),
            "{p}"
        );
    };

    let text = b"this is plain text, not a picture\n".repeat(10);
    check(
        &conn.upload("photo.jpg", &text).await.expect("send"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    check(
        &conn.upload("empty.jpg", b"").await.expect("send"),
        StatusCode::BAD_REQUEST,
    );
    let no_image = multipart_request(addr, "/upload", &[("presets", None, b"medium")]);
    check(
        &conn.send(no_image).await.expect("send"),
        StatusCode::BAD_REQUEST,
    );
    let bytes = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let unknown = multipart_request(
        addr,
        "/upload",
        &[("image", Some("a.jpg"), &bytes), ("presets", None, b"huge")],
    );
    check(
        &conn.send(unknown).await.expect("send"),
        StatusCode::BAD_REQUEST,
    );
    check(
        &conn.get("/jobs/not-a-job").await.expect("send"),
        StatusCode::NOT_FOUND,
    );
    check(
        &conn
            .get("/jobs/..%2F..%2Fetc%2Fpasswd")
            .await
            .expect("send"),
        StatusCode::NOT_FOUND,
    );
    check(
        &conn
            .get("/jobs/01a2083c-89a7-713c-8a3d-873a30d29dd5")
            .await
            .expect("send"),
        StatusCode::NOT_FOUND,
    );
    check(
        &conn.get("/nowhere").await.expect("send"),
        StatusCode::NOT_FOUND,
    );
    let resp = conn.get("/upload").await.expect("send");
    check(&resp, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.header("allow"), Some("POST"));

    // A file that sniffs as JPEG but is cut short: accepted, then failed with a reason.
    let truncated = &bytes[..bytes.len() * 2 / 5];
    let resp = conn.upload("cut.jpg", truncated).await.expect("send");
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    let job = wait_final(addr, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["status"], 422, "{job}");
    assert!(
        job["outputs"].as_array().is_some_and(|o| o.is_empty()),
        "{job}"
    );

    // The client's file name never becomes a path; the server still serves.
    let evil = multipart_request(
        addr,
        "/upload",
        &[("image", Some("../../../../tmp/evil.jpg"), &bytes)],
    );
    let resp = conn.send(evil).await.expect("send");
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    wait_final(addr, &id, Duration::from_secs(60)).await;
    let rec = read_record(&server.uploads, &id).expect("record");
    assert_eq!(rec["source"]["path"], format!("raw/{id}.jpg"));
    assert!(!std::path::Path::new("/tmp/evil.jpg").exists());
    assert_eq!(
        conn.get("/health").await.expect("health").status,
        StatusCode::OK
    );
    // Nothing refused left a file behind.
    let tmp: Vec<_> = std::fs::read_dir(server.uploads.join("tmp"))
        .expect("tmp")
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(tmp.is_empty(), "spool files left: {tmp:?}");
    let raws = std::fs::read_dir(server.uploads.join("raw"))
        .expect("raw")
        .count();
    assert_eq!(raws, 2, "only the two accepted uploads are kept");
}

/// A worker frozen (SIGSTOP) in the middle of a slow job, with two small jobs
/// routed to it behind that job, and two routed to its sibling.
struct Frozen {
    server: Server,
    /// The frozen worker's slot and pid.
    slot: u64,
    pid: i32,
    slow: String,
    /// Routed to the frozen worker (round-robin), behind the slow job.
    behind: Vec<String>,
    /// Routed to the other worker.
    others: Vec<String>,
}

/// One front, two workers. Uploads a slow job, then, while it runs, four small
/// ones, which round-robin routes to the other worker, the busy one, the other,
/// the busy one; then SIGSTOPs the busy worker. A set-up that raced (the slow
/// job finished before the stop) is tried again on a fresh server.
async fn jobs_behind_a_frozen_worker(extra: &[&str]) -> Frozen {
    let small = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    for attempt in 0..3 {
        let server = Server::start(1, 2, extra);
        let (slow_name, slow_bytes) = slow_photo(&format!("frozen-{attempt}"));
        let mut conn = Conn::open(server.addr).await.expect("connect");
        let resp = conn.upload(&slow_name, &slow_bytes).await.expect("upload");
        let slow = accepted_id(&resp, "slow job");
        let rec = server
            .wait_record(&slow, Duration::from_secs(10), "processing", |r| {
                r["state"] == "processing"
            })
            .await;
        let slot = rec["worker"].as_u64().expect("worker slot");
        let mut ids = Vec::new();
        for n in 0..4 {
            let bytes = unique_jpeg(&small, 100 * attempt + n);
            let resp = conn.upload("grey.jpg", &bytes).await.expect("upload");
            ids.push(accepted_id(&resp, "small job"));
        }
        let pid = server
            .child_pid("worker", slot as u32)
            .expect("busy worker");
        pause_process(pid);
        let running = server
            .uploads
            .join(format!("claims/{slot}/{slow}.running"))
            .exists();
        if !running {
            eprintln!("attempt {attempt}: the slow job ended before its worker was stopped; again");
            resume_process(pid);
            continue;
        }
        return Frozen {
            server,
            slot,
            pid,
            slow,
            behind: vec![ids[1].clone(), ids[3].clone()],
            others: vec![ids[0].clone(), ids[2].clone()],
        };
    }
    panic!("the slow job never outlasted four small uploads");
}

/// Claims left under `claims/` (none once every job is final).
fn claims_left(server: &Server) -> Vec<String> {
    let mut left = Vec::new();
    for slot in std::fs::read_dir(server.uploads.join("claims"))
        .expect("claims")
        .flatten()
    {
        for claim in std::fs::read_dir(slot.path()).expect("slot dir").flatten() {
            left.push(format!(
                "{}/{}",
                slot.file_name().to_string_lossy(),
                claim.file_name().to_string_lossy()
            ));
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_runs_the_jobs_queued_behind_a_busy_sibling() {
    let f = jobs_behind_a_frozen_worker(&[]).await;
    let other = 1 - f.slot;
    // The frozen worker cannot run anything: its sibling runs all four.
    for id in f.behind.iter().chain(&f.others) {
        let job = wait_final(f.server.addr, id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "done", "{job}");
        let rec = f.server.record(id).expect("record");
        assert_eq!(rec["worker"], other, "run by the idle worker: {rec}");
        assert_eq!(job["attempts"], 1, "{job}");
    }
    let stolen = f
        .server
        .log_lines_with(&["took a queued job from a busy sibling"]);
    for id in &f.behind {
        assert!(
            stolen.iter().any(|l| l.contains(id.as_str())),
            "no log line for taking {id}:\n{}",
            f.server.log_text()
        );
    }
    // Resumed, the busy worker finishes its own job and finds the two it had
    // queued gone: nothing runs twice, and no claim is left.
    resume_process(f.pid);
    let job = wait_final(f.server.addr, &f.slow, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
    let rec = f.server.record(&f.slow).expect("record");
    assert_eq!(rec["worker"], f.slot, "{rec}");
    poll_until(
        Duration::from_secs(10),
        || format!("claims left: {:?}", claims_left(&f.server)),
        || claims_left(&f.server).is_empty().then_some(()),
    )
    .await;
    for id in f.behind.iter().chain(&f.others) {
        let rec = f.server.record(id).expect("record");
        assert_eq!(
            (&rec["worker"], &rec["attempts"]),
            (&other.into(), &1.into()),
            "{rec}"
        );
        assert_eq!(f.server.processing_lines(id).len(), 1, "ran once: {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_work_stealing_jobs_wait_for_the_worker_they_were_routed_to() {
    let f = jobs_behind_a_frozen_worker(&["--work-stealing", "false"]).await;
    for id in &f.others {
        wait_final(f.server.addr, id, Duration::from_secs(30)).await;
        let rec = f.server.record(id).expect("record");
        assert_eq!(rec["worker"], 1 - f.slot, "{rec}");
    }
    // Round-robin put these behind the frozen worker's job; nobody takes them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &f.behind {
        let rec = f.server.record(id).expect("record");
        assert_eq!(rec["state"], "queued", "{rec}");
        assert!(
            f.server
                .uploads
                .join(format!("claims/{}/{id}", f.slot))
                .exists(),
            "still queued with its worker"
        );
    }
    resume_process(f.pid);
    for id in &f.behind {
        wait_final(f.server.addr, id, Duration::from_secs(60)).await;
        let rec = f.server.record(id).expect("record");
        assert_eq!(
            (&rec["state"], &rec["worker"]),
            (&"done".into(), &f.slot.into()),
            "{rec}"
        );
    }
}
