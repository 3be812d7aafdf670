//! The job store under damage: torn index entries, unacknowledged holders,
//! clients that hang up, and what a crash leaves on disk.

use std::time::Duration;

use hyper::StatusCode;

use pixpool_testkit::*;

fn photo() -> Vec<u8> {
    std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo")
}

/// The only dedup entry of a fresh server, after one upload.
fn only_dedup_entry(server: &Server) -> std::path::PathBuf {
    let names: Vec<String> = dir_entries(&server.uploads.join("dedup"))
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    server.uploads.join("dedup").join(&names[0])
}

/// Regression: an empty dedup entry made `dedup_claim` recurse until the
/// stack overflowed (SIGABRT: every request of that front lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_dedup_entry_is_replaced_and_the_front_lives() {
    let server = Server::start(1, 1, &[]);
    let front = server.child_pid("front", 0).expect("front");
    let jpeg = unique_jpeg(&photo(), 8_000_001);
    let first = accepted_id(&upload(server.addr, "a.jpg", &jpeg).await, "first");
    assert_eq!(
        wait_final(server.addr, &first, Duration::from_secs(60)).await["state"],
        "done"
    );
    let entry = only_dedup_entry(&server);
    for torn in [&b""[..], b"\0\0\0\0", b"not an id"] {
        // Entries are links now (whole once they exist); a torn one is what an
        // older version's file entry can be after a crash: replace the link by one.
        let _ = std::fs::remove_file(&entry);
        std::fs::write(&entry, torn).expect("tear the entry");
        let resp = upload(server.addr, "a.jpg", &jpeg).await;
        let id = accepted_id(&resp, "upload over a torn entry");
        assert_ne!(id, first);
        assert_eq!(
            wait_final(server.addr, &id, Duration::from_secs(60)).await["state"],
            "done"
        );
        // The entry now names the new job: the next identical upload is its duplicate.
        let again = upload(server.addr, "a.jpg", &jpeg).await;
        assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
        assert_eq!(again.json()["id"].as_str(), Some(id.as_str()));
    }
    assert_eq!(
        server.child_pid("front", 0),
        Some(front),
        "the front crashed"
    );
}

/// A duplicate must not get the 202 of a job that no worker has acknowledged
/// yet: that job's dispatch may still fail and remove it, leaving the duplicate
/// with a job id that answers 404. Here the holder is exactly such a job, as an
/// in-flight first upload leaves it: recorded `queued`, no claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_an_unacknowledged_job_is_not_answered_with_it() {
    let server = Server::start(1, 1, &[]);
    let jpeg = unique_jpeg(&photo(), 8_000_002);
    let first = accepted_id(&upload(server.addr, "a.jpg", &jpeg).await, "first");
    assert_eq!(
        wait_final(server.addr, &first, Duration::from_secs(60)).await["state"],
        "done"
    );
    // Turn the holder back into a job still being dispatched.
    let record_path = server.uploads.join(format!("jobs/{first}.json"));
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("json");
    record["state"] = "queued".into();
    record["outputs"] = serde_json::json!([]);
    std::fs::write(&record_path, serde_json::to_vec(&record).expect("json")).expect("write");

    let resp = upload(server.addr, "a.jpg", &jpeg).await;
    let id = accepted_id(&resp, "duplicate of an unacknowledged job");
    assert_ne!(id, first, "answered with a job no worker had taken");
    assert_eq!(
        wait_final(server.addr, &id, Duration::from_secs(60)).await["state"],
        "done"
    );
}

/// Clients that hang up right after sending their upload: every job that got
/// recorded is either run to the end or removed, never left `queued`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_whose_client_hangs_up_leave_no_stranded_job() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(1, 1, &[]);
    let bytes = photo();
    for n in 0..30 {
        let req = multipart_request(
            server.addr,
            "/upload?presets=thumb",
            &[("image", Some("a.jpg"), &unique_jpeg(&bytes, 8_100_000 + n))],
        );
        let (parts, body) = req.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .expect("body")
            .to_bytes();
        let mut head = format!("POST {} HTTP/1.1\r\n", parts.uri);
        for (k, v) in &parts.headers {
            head.push_str(&format!("{k}: {}\r\n", v.to_str().expect("ascii")));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        s.write_all(head.as_bytes()).await.expect("head");
        s.write_all(&body).await.expect("body");
        // Hang up at a different point of the server's work each time.
        tokio::time::sleep(Duration::from_micros(300 * (n as u64 % 10))).await;
        drop(s);
    }
    // Whatever was recorded ends final; nothing stays pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut stranded = Vec::new();
        for name in dir_entries(&server.uploads.join("jobs")) {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if let Some(rec) = read_record(&server.uploads, id) {
                if !matches!(rec["state"].as_str(), Some("done") | Some("failed")) {
                    stranded.push(id.to_string());
                }
            }
        }
        let pending: Vec<String> = dir_entries(&server.uploads.join("tmp/0"));
        if stranded.is_empty() && pending.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs left unfinished: {stranded:?}, spool: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a crash can leave (temp files of records, dedup entries and outputs,
/// originals without a record) is removed when the server starts again;
/// live jobs are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sweeps_what_a_crash_left() {
    let server = Server::start(1, 1, &[]);
    let live = accepted_id(&upload(server.addr, "a.jpg", &photo()).await, "live");
    assert_eq!(
        wait_final(server.addr, &live, Duration::from_secs(60)).await["state"],
        "done"
    );
    let (uploads, _log) = server.kill_tree();
    let orphan = "0193a5b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let planted = [
        format!("raw/{orphan}.jpg"),
        format!("jobs/.{orphan}.json.4242.tmp"),
        format!("dedup/.abc-def.{orphan}.tmp"),
        format!("processed/.{orphan}-thumb.jpg.tmp"),
    ];
    for p in &planted {
        std::fs::write(uploads.join(p), b"x").expect("plant");
    }
    let server = Server::start_in(uploads.clone(), 1, 1, &[]);
    server.wait_ready(Duration::from_secs(30));
    for p in &planted {
        assert!(!uploads.join(p).exists(), "{p} was not swept");
    }
    let raw = dir_entries(&uploads.join("raw"));
    assert!(
        raw.iter().any(|n| n.starts_with(&live)),
        "the live original went: {raw:?}"
    );
    let resp = Conn::open(server.addr)
        .await
        .expect("connect")
        .get(&format!("/images/{live}/medium"))
        .await
        .expect("send");
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_are_not_guessable() {
    let server = Server::start(1, 1, &[]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let resp = upload(server.addr, "a.jpg", &unique_jpeg(&photo(), 8_200_000 + n)).await;
        ids.push(accepted_id(&resp, "upload"));
    }
    for id in &ids {
        // 13 hex digits of time, then 26 (104 bits) of randomness.
        assert_eq!(id.len(), 39, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
    }
    let randoms: std::collections::HashSet<&str> = ids.iter().map(|i| &i[13..]).collect();
    assert_eq!(randoms.len(), ids.len());
}

/// Regression: dedup keys named the presets but not their specifications, so
/// after a SIGHUP changed a preset, identical uploads got the old outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_changed_on_reload_is_not_served_from_old_outputs() {
    let uploads = fresh_uploads();
    let etc = uploads.with_extension("etc");
    std::fs::create_dir_all(&etc).expect("config dir");
    let config = etc.join("pixpool.toml");
    let write = |small: u32| {
        std::fs::write(
            &config,
            format!("presets = [\"thumb:200x200:cover\", \"small:{small}\"]\n"),
        )
        .expect("write config")
    };
    write(480);
    let server = Server::start_env(
        uploads,
        1,
        1,
        &["--config", config.to_str().expect("utf-8 path")],
        &[],
    );
    let jpeg = unique_jpeg(&photo(), 8_300_001);
    let small_width = |job: &serde_json::Value| {
        job["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["preset"] == "small"))
            .and_then(|o| o["width"].as_u64())
    };
    let req = |server: &Server| {
        multipart_request(
            server.addr,
            "/upload?presets=small",
            &[("image", Some("a.jpg"), &jpeg)],
        )
    };
    let mut c = Conn::open(server.addr).await.expect("connect");
    let first = accepted_id(&c.send(req(&server)).await.expect("send"), "first");
    let job = wait_final(server.addr, &first, Duration::from_secs(60)).await;
    assert_eq!(small_width(&job), Some(480), "{job}");

    write(320);
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !server.log_text().contains("rolling restart complete") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Conn::open(server.addr).await.expect("connect");
    let second = accepted_id(
        &c.send(req(&server)).await.expect("send"),
        "after the reload",
    );
    assert_ne!(second, first);
    let job = wait_final(server.addr, &second, Duration::from_secs(60)).await;
    assert_eq!(small_width(&job), Some(320), "{job}");
}
