//! A hostile world (issue 5): bad files, bombs, floods, slow and lying clients,
//! path tricks and tokens — against the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use pixpool_testkit::*;
use serde_json::Value;

fn problem(resp: &Resp, status: StatusCode) -> Value {
    assert_eq!(
        resp.status,
        status,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let p = resp.json();
    assert_eq!(p["status"].as_u64(), Some(status.as_u16() as u64), "{p}");
    p
}

/// The `detail` of a 415 `unsupported-format` problem.
fn unsupported_detail(resp: &Resp) -> String {
    let body = problem(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        body["type"], "urn:pixpool:problem:unsupported-format",
        "{body}"
    );
    body["detail"].as_str().unwrap_or("").to_string()
}

fn spool_files(server: &Server) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(server.uploads.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_file_gets_its_expected_answer_and_nothing_is_left_behind() {
    let Some(corpus) = corpus() else { return };
    let bad = corpus.join("bad");
    let server = Server::start(1, 2, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    // (file, status at upload, final state if accepted, limit named in the problem)
    let cases: &[(&str, StatusCode, Option<&str>)] = &[
        ("empty.jpg", StatusCode::BAD_REQUEST, None),
        ("not-an-image.jpg", StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        (
            "png-bomb-50000x50000-header.png",
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "png-bomb-50000x50000-full.png",
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "jpeg-65500x65500.jpg",
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        ("truncated.jpg", StatusCode::ACCEPTED, Some("failed")),
        (
            "gif-5000-frames.gif",
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        ("jpeg-named.png", StatusCode::ACCEPTED, Some("done")),
        ("tiny-8x8.jpg", StatusCode::ACCEPTED, Some("done")),
    ];
    for (name, status, final_state) in cases {
        let bytes = std::fs::read(bad.join(name)).expect("bad file");
        let resp = conn.upload(name, &bytes).await.expect("upload");
        if *status != StatusCode::ACCEPTED {
            let p = problem(&resp, *status);
            if *status == StatusCode::UNPROCESSABLE_ENTITY {
                let detail = p["detail"].as_str().unwrap_or("");
                assert!(
                    detail.contains("50000")
                        || detail.contains("65500")
                        || detail.contains("frame count"),
                    "{name}: the limit is named: {p}"
                );
            }
            // A refusal may close the connection (the body was not all read).
            conn = Conn::open(server.addr).await.expect("reconnect");
            continue;
        }
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{name}: {:?}", resp.body);
        let id = resp.json()["id"].as_str().expect("id").to_string();
        let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
        assert_eq!(job["state"].as_str(), *final_state, "{name}: {job}");
        if job["state"] == "failed" {
            assert_eq!(job["error"]["status"], 422, "{name}: {job}");
        }
        if *name == "tiny-8x8.jpg" {
            let medium = job["outputs"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["preset"] == "medium"))
                .expect("medium");
            assert_eq!(
                (medium["width"].as_u64(), medium["height"].as_u64()),
                (Some(8), Some(8)),
                "never upscaled"
            );
        }
    }
    assert_eq!(
        conn.get("/health").await.expect("health").status,
        StatusCode::OK
    );
    assert!(
        spool_files(&server).is_empty(),
        "{:?}",
        spool_files(&server)
    );
    let raws = std::fs::read_dir(server.uploads.join("raw"))
        .expect("raw")
        .count();
    assert_eq!(raws, 3, "only the three accepted uploads keep an original");
}

/// A body of `total` bytes made on the fly: a JPEG header, then zeros.
fn endless_jpeg(
    total: u64,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    let boundary_head = "--pixpool-test-boundary-7d3f9a\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n";
    let mut first = boundary_head.as_bytes().to_vec();
    first.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    let chunk = Bytes::from(vec![0u8; 1 << 20]);
    futures_util::stream::unfold((Some(Bytes::from(first)), 0u64), move |(first, sent)| {
        let chunk = chunk.clone();
        async move {
            if let Some(f) = first {
                let n = f.len() as u64;
                return Some((Ok(Frame::data(f)), (None, n)));
            }
            (sent < total).then(|| {
                (
                    Ok(Frame::data(chunk.clone())),
                    (None, sent + chunk.len() as u64),
                )
            })
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_streamed_upload_is_cut_off_with_413_and_front_memory_stays_flat() {
    let server = Server::start(1, 1, &[]);
    let front = server.child_pid("front", 0).expect("front");
    let before = rss_bytes(front);
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let body = StreamBody::new(endless_jpeg(2 << 30)).boxed();
    let req = Request::post("/upload")
        .header("host", server.addr.to_string())
        .header(
            "content-type",
            "multipart/form-data; boundary=pixpool-test-boundary-7d3f9a",
        )
        .body(body)
        .expect("request");
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("answered well before 2 GiB could be sent");
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(
                resp.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
        }
        // The server may close the connection while we are still sending; the
        // 413 was written, but the client saw the reset first. The log tells.
        Err(e) => eprintln!("client saw the connection close: {e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log_text().contains("Upload too large")
        && !server.log_text().contains("exceeds the")
    {
        assert!(
            Instant::now() < deadline,
            "no 413 in the log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let after = rss_bytes(front);
    assert!(
        after < before + 40 * 1024 * 1024,
        "front RSS grew from {before} to {after}"
    );
    assert!(
        spool_files(&server).is_empty(),
        "partial upload removed: {:?}",
        spool_files(&server)
    );
    let mut c = Conn::open(server.addr).await.expect("connect");
    assert_eq!(
        c.get("/health").await.expect("health").status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_worker_gets_202_or_503_with_retry_after_and_every_202_completes() {
    let server = Arc::new(Server::start(2, 1, &["--queue-depth", "16"]));
    let bytes = Arc::new(std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo"));
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (addr, bytes) = (server.addr, bytes.clone());
        tasks.push(tokio::spawn(async move {
            let req = multipart_request(
                addr,
                "/upload?presets=thumb",
                &[("image", Some("g.jpg"), &unique_jpeg(&bytes, n))],
            );
            let mut conn = Conn::open(addr).await.expect("connect");
            conn.send(req).await.expect("an answer, not a reset")
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let resp = t.await.expect("client");
        match resp.status {
            StatusCode::ACCEPTED => {
                accepted.push(resp.json()["id"].as_str().expect("id").to_string())
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    resp.header("retry-after").is_some(),
                    "503 without Retry-After"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", resp.body),
        }
    }
    assert!(
        refused > 0,
        "a 16-deep queue on one worker must push back on 200 at once"
    );
    assert!(!accepted.is_empty());
    for pid in server.children().iter().map(|(p, _)| *p) {
        assert!(
            rss_bytes(pid) < 300 * 1024 * 1024,
            "process {pid} RSS bounded"
        );
    }
    for id in accepted {
        assert_eq!(
            wait_final(server.addr, &id, Duration::from_secs(120)).await["state"],
            "done"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slowloris_connections_do_not_slow_health_down() {
    let server = Server::start(2, 1, &[]);
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("partial header");
        idle.push(s);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let mut c = Conn::open(server.addr).await.expect("connect");
        assert_eq!(
            c.get("/health").await.expect("health").status,
            StatusCode::OK
        );
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < Duration::from_millis(50),
        "slowest /health took {worst:?}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_edge_cases_are_answered_cleanly() {
    let server = Server::start(1, 1, &["--body-idle-secs", "1"]);
    let addr = server.addr;
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");

    // Two files in `image`.
    let two = multipart_request(
        addr,
        "/upload",
        &[
            ("image", Some("a.jpg"), &jpeg),
            ("image", Some("b.jpg"), &jpeg),
        ],
    );
    problem(
        &Conn::open(addr)
            .await
            .expect("c")
            .send(two)
            .await
            .expect("send"),
        StatusCode::BAD_REQUEST,
    );
    // A huge non-file field.
    let huge = vec![b'x'; 1 << 20];
    let big_field = multipart_request(
        addr,
        "/upload",
        &[("presets", None, &huge), ("image", Some("a.jpg"), &jpeg)],
    );
    problem(
        &Conn::open(addr)
            .await
            .expect("c")
            .send(big_field)
            .await
            .expect("send"),
        StatusCode::BAD_REQUEST,
    );
    // An unexpected field.
    let other = multipart_request(
        addr,
        "/upload",
        &[("evil", None, b"1"), ("image", Some("a.jpg"), &jpeg)],
    );
    problem(
        &Conn::open(addr)
            .await
            .expect("c")
            .send(other)
            .await
            .expect("send"),
        StatusCode::BAD_REQUEST,
    );
    // Not multipart at all.
    let plain = Request::post("/upload")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .expect("req");
    problem(
        &Conn::open(addr)
            .await
            .expect("c")
            .send(plain)
            .await
            .expect("send"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );

    // A boundary that never ends (the body stops inside the file part).
    let mut open_ended =
        b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
            .to_vec();
    open_ended.extend_from_slice(&jpeg);
    let req = Request::post("/upload")
        .header("host", addr.to_string())
        .header("content-type", "multipart/form-data; boundary=B")
        .body(http_body_util::Full::new(Bytes::from(open_ended)))
        .expect("req");
    problem(
        &Conn::open(addr)
            .await
            .expect("c")
            .send(req)
            .await
            .expect("send"),
        StatusCode::BAD_REQUEST,
    );

    // Transfer-Encoding: chunked, no Content-Length: must work.
    let whole = multipart_request(
        addr,
        "/upload",
        &[("image", Some("a.jpg"), &unique_jpeg(&jpeg, 1))],
    );
    let body = whole.into_body().collect().await.expect("body").to_bytes();
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = body
        .chunks(7000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("hs");
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", addr.to_string())
        .header(
            "content-type",
            "multipart/form-data; boundary=pixpool-test-boundary-7d3f9a",
        )
        .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        .expect("req");
    let resp = sender.send_request(req).await.expect("chunked upload");
    assert!(
        resp.headers().get("content-length").is_some() || resp.status() == StatusCode::ACCEPTED
    );
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // A Content-Length larger than the body: cut off after the idle timeout, cleanly.
    let mut s = TcpStream::connect(addr).expect("connect");
    let partial = b"--pixpool-test-boundary-7d3f9a\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n\xFF\xD8\xFF\xE0";
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=pixpool-test-boundary-7d3f9a\r\nContent-Length: 100000\r\n\r\n"
    )
    .expect("head");
    s.write_all(partial).expect("part of the body");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off after the 1 s idle timeout"
    );

    let mut c = Conn::open(addr).await.expect("connect");
    assert_eq!(
        c.get("/health").await.expect("health").status,
        StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !spool_files(&server).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", spool_files(&server));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_file_names_never_become_paths() {
    let server = Server::start(1, 1, &[]);
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let long = "a".repeat(4096) + ".jpg";
    let names = [
        "../../../../tmp/pixpool-evil.jpg",
        "..\\..\\pixpool-evil.jpg",
        "/etc/cron.d/pixpool-evil.jpg",
        "nul\0byte.jpg",
        long.as_str(),
    ];
    for (n, name) in names.iter().enumerate() {
        let req = multipart_request(
            server.addr,
            "/upload?presets=thumb",
            &[("image", Some(name), &unique_jpeg(&jpeg, n))],
        );
        let resp = Conn::open(server.addr)
            .await
            .expect("c")
            .send(req)
            .await
            .expect("send");
        if name.contains('\0') && resp.status == StatusCode::BAD_REQUEST {
            // A raw NUL in a part header is malformed HTTP: refusing it is fine.
            problem(&resp, StatusCode::BAD_REQUEST);
            continue;
        }
        assert_eq!(
            resp.status,
            StatusCode::ACCEPTED,
            "{name:?}: {:?}",
            resp.body
        );
        let id = resp.json()["id"].as_str().expect("id").to_string();
        wait_final(server.addr, &id, Duration::from_secs(60)).await;
        let rec = read_record(&server.uploads, &id).expect("record");
        assert_eq!(rec["source"]["path"], format!("raw/{id}.jpg"));
    }
    assert!(!std::path::Path::new("/tmp/pixpool-evil.jpg").exists());
    assert!(!std::path::Path::new("/etc/cron.d/pixpool-evil.jpg").exists());
    // Ids in URLs are validated before any file is touched.
    let mut c = Conn::open(server.addr).await.expect("c");
    for bad in [
        "/jobs/..",
        "/jobs/%2e%2e%2fjobs",
        "/images/../raw/x",
        "/jobs/01a2083c-89a7-713c-8a3d-873a30d29dd5/../../x",
    ] {
        let resp = c.get(bad).await.expect("send");
        assert!(resp.status.is_client_error(), "{bad}: {}", resp.status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_uploads_and_reads_but_not_health() {
    let server = Server::start_env(
        fresh_uploads(),
        1,
        1,
        &[],
        &[(
            "PIXPOOL_API_TOKENS",
            "s3cret-one-0123456789, s3cret-two-0123456789",
        )],
    );
    let addr = server.addr;
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let with = |token: Option<&str>| {
        let mut req = multipart_request(
            addr,
            "/upload?presets=thumb",
            &[("image", Some("a.jpg"), &jpeg)],
        );
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        req
    };
    let mut c = Conn::open(addr).await.expect("c");
    let resp = c.send(with(None)).await.expect("send");
    problem(&resp, StatusCode::UNAUTHORIZED);
    assert!(resp
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let mut c = Conn::open(addr).await.expect("c");
    problem(
        &c.send(with(Some("s3cret-one-012345678")))
            .await
            .expect("send"),
        StatusCode::UNAUTHORIZED,
    );
    let mut c = Conn::open(addr).await.expect("c");
    let resp = c
        .send(with(Some("s3cret-two-0123456789")))
        .await
        .expect("send");
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    problem(
        &c.get(&format!("/jobs/{id}")).await.expect("send"),
        StatusCode::UNAUTHORIZED,
    );
    let mut req = Request::get(format!("/jobs/{id}"))
        .header("host", addr.to_string())
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("req");
    req.headers_mut().insert(
        "authorization",
        "Bearer s3cret-one-0123456789".parse().expect("h"),
    );
    assert_eq!(c.send(req).await.expect("send").status, StatusCode::OK);
    assert_eq!(
        c.get("/health").await.expect("health").status,
        StatusCode::OK
    );
    assert!(!server.log_text().contains("open to anyone"));
    // The tokens never appear on a command line.
    for (_, cmd) in server.children() {
        assert!(!cmd.contains("s3cret"), "{cmd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_whether_an_upload_can_be_taken() {
    let server = Server::start(1, 1, &[]);
    let mut c = Conn::open(server.addr).await.expect("c");
    let ready = c.get("/readyz").await.expect("readyz");
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    drop(server);
    // A free-disk floor above what the disk has: not ready, and uploads get 507.
    let server = Server::start(1, 1, &["--min-free-disk-mb", "100000000"]);
    let mut c = Conn::open(server.addr).await.expect("c");
    problem(
        &c.get("/readyz").await.expect("readyz"),
        StatusCode::SERVICE_UNAVAILABLE,
    );
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = c.upload("a.jpg", &jpeg).await.expect("send");
    problem(&resp, StatusCode::INSUFFICIENT_STORAGE);
    assert!(resp.header("retry-after").is_some());
    assert!(spool_files(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_time_limit_fails_and_its_worker_is_replaced() {
    let Some(corpus) = corpus() else { return };
    let server = Server::start(1, 1, &["--job-timeout-secs", "0.03"]);
    let old = server.child_pid("worker", 0).expect("worker");
    let big = std::fs::read(corpus.join("15-kleiber-20mp-orient6.jpg")).expect("photo");
    let resp = upload(server.addr, "big.jpg", &big).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]["type"]
            .as_str()
            .is_some_and(|t| t.contains("timeout")),
        "{job}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.child_pid("worker", 0).is_none_or(|p| p == old) {
        assert!(
            Instant::now() < deadline,
            "worker not replaced:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replacement works: it takes and finishes the next job. (With a
    // 30 ms limit even a tiny job may overrun on a loaded machine — its fsyncs
    // count — so either final state shows a live worker.)
    let tiny = std::fs::read(corpus.join("bad/tiny-8x8.jpg")).expect("tiny");
    let resp = upload(server.addr, "tiny.jpg", &tiny).await;
    let id = resp.json()["id"].as_str().expect("id").to_string();
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert!(
        job["state"] == "done"
            || job["error"]["type"]
                .as_str()
                .is_some_and(|t| t.contains("timeout")),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_recycle_after_n_jobs_without_dropping_queued_jobs() {
    let server = Server::start(1, 1, &["--recycle-after-jobs", "2"]);
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let mut ids = Vec::new();
    for n in 0..7 {
        let resp = upload(server.addr, "g.jpg", &unique_jpeg(&jpeg, n)).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
        ids.push(resp.json()["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        assert_eq!(
            wait_final(server.addr, id, Duration::from_secs(60)).await["state"],
            "done"
        );
    }
    let replaced = server
        .log_text()
        .matches("child asked to be replaced")
        .count();
    assert!(
        replaced >= 2,
        "recycled {replaced} times:\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_every_child_one_by_one_under_load_without_a_failed_request() {
    let server = Arc::new(Server::start(2, 2, &[]));
    let before: Vec<i32> = server.children().iter().map(|(p, _)| *p).collect();
    let bytes = Arc::new(std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (server, bytes, stop) = (server.clone(), bytes.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let req = multipart_request(
                    server.addr,
                    "/upload?presets=thumb",
                    &[("image", Some("g.jpg"), &unique_jpeg(&bytes, n))],
                );
                let outcome = match Conn::open(server.addr).await {
                    Ok(mut c) => c.send(req).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                results.push(outcome);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log_text().contains("rolling restart complete") {
        assert!(
            Instant::now() < deadline,
            "roll did not finish:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ids = Vec::new();
    for c in clients {
        for outcome in c.await.expect("client") {
            let resp = outcome.unwrap_or_else(|e| {
                panic!(
                    "a request failed during the roll: {e}\n{}",
                    server.log_text()
                )
            });
            assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            ids.push(resp.json()["id"].as_str().expect("id").to_string());
        }
    }
    assert!(
        ids.len() > 10,
        "the load ran through the roll ({} uploads)",
        ids.len()
    );
    let after: Vec<i32> = server.children().iter().map(|(p, _)| *p).collect();
    assert_eq!(after.len(), 4);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every child replaced: {before:?} → {after:?}"
    );
    for id in ids {
        assert_eq!(
            wait_final(server.addr, &id, Duration::from_secs(60)).await["state"],
            "done"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_child_is_held_back_and_recovers_when_its_cause_is_gone() {
    let server = Server::start(1, 2, &[]);
    let socket = server.uploads.join("run/worker-0.sock");
    // Make slot 0 unable to start: its socket path becomes a directory.
    let victim = server.child_pid("worker", 0).expect("worker 0");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = std::fs::remove_file(&socket);
    std::fs::create_dir(&socket).expect("block the socket path");
    let started = Instant::now();
    while !server.log_text().contains("crash loop") {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no crash-loop detection:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let starts = server
        .log_text()
        .matches("started child role=\"worker\" slot=0")
        .count();
    assert!(starts <= 8, "respawned {starts} times: a hot loop");
    // The other worker keeps the service up meanwhile.
    let bytes = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "g.jpg", &unique_jpeg(&bytes, 1)).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    assert_eq!(
        wait_final(server.addr, &id, Duration::from_secs(30)).await["state"],
        "done"
    );
    // Cause removed: the slot comes back by itself.
    std::fs::remove_dir(&socket).expect("unblock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !socket.exists() || server.child_pid("worker", 0).is_none() {
        assert!(
            Instant::now() < deadline,
            "slot 0 did not come back:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_stops_at_once_and_a_bad_configuration_exits_non_zero() {
    let mut server = Server::start(2, 2, &[]);
    let started = Instant::now();
    server.signal(nix::sys::signal::Signal::SIGQUIT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits at once");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_using(&server.uploads).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            processes_using(&server.uploads)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A configuration error is fatal and says what is wrong (systemd's
    // restart policy, not a respawn loop, deals with it).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pixpool"))
        .args(["serve", "--bind", "127.0.0.1:0", "--uploads"])
        .arg(fresh_uploads())
        .args(["--preset", "thumb:0x0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid preset"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipc_directory_and_sockets_are_private_to_the_service_user() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(1, 2, &[]);
    let run = server.uploads.join("run");
    let mode = std::fs::metadata(&run)
        .expect("run dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "run dir mode {mode:o}");
    for w in 0..2 {
        let sock = run.join(format!("worker-{w}.sock"));
        let mode = std::fs::metadata(&sock)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} mode {mode:o}", sock.display());
    }
}

/// Every JPEG coding a build decodes is accepted and processed (lossless, arithmetic);
/// one it does not is refused before the 202 with a 415 naming the coding, and, when
/// its frame header lies beyond what the door reads, fails its job with the same 415
/// instead of an opaque decoder error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_codings_are_decoded_or_refused_naming_the_coding() {
    let server = Server::start(1, 1, &[]);
    for name in [
        "lossless-rgb.jpg",
        "lossless-grey12.jpg",
        "04-fallenleaf-arith.jpg",
        "04-fallenleaf-arith-progressive.jpg",
    ] {
        let bytes = std::fs::read(test_photo(name)).expect("test file");
        let resp = upload(server.addr, name, &bytes).await;
        let id = accepted_id(&resp, name);
        let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "done", "{name}: {job}");
    }

    // SOI, a hierarchical (SOF5) frame header: 8-bit, 300 × 200, 3 components.
    let mut sof5 = vec![0xff, 0xd8, 0xff, 0xc5, 0, 17, 8, 0, 200, 1, 44, 3];
    sof5.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
    let resp = upload(server.addr, "h.jpg", &sof5).await;
    let detail = unsupported_detail(&resp);
    assert!(
        detail.contains("hierarchical (differential) JPEG"),
        "{detail}"
    );

    // The same behind 70 KiB of APP15 segments: the door's 64 KiB head ends first.
    let mut hidden = vec![0xff, 0xd8];
    for _ in 0..2 {
        hidden.extend_from_slice(&[0xff, 0xef, 0x8c, 0x02]);
        hidden.resize(hidden.len() + 0x8c00, 0x20);
    }
    hidden.extend_from_slice(&sof5[2..]);
    let resp = upload(server.addr, "hidden.jpg", &hidden).await;
    let id = accepted_id(&resp, "a frame header past the head");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["status"], 415, "{job}");
    assert_eq!(
        job["error"]["type"], "urn:pixpool:problem:unsupported-format",
        "{job}"
    );
    let detail = job["error"]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("hierarchical"), "{detail}");
}

/// HEIC uploads: the build with libheif (`--features heif`, in native-codecs) takes an
/// iPhone-style photo (made here with `heif-enc`) and serves it sRGB; every other build
/// refuses one at the door with a 415 that says which build reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heic_is_read_by_the_libheif_build_and_refused_by_the_others_naming_it() {
    let server = Server::start(1, 1, &[]);
    if cfg!(feature = "heif") {
        let heif_enc = std::env::var_os("PIXPOOL_HEIF_ENC").unwrap_or_else(|| "heif-enc".into());
        let out = server.uploads.with_extension("heic");
        let made = std::process::Command::new(&heif_enc)
            .args(["-q", "90", "-o"])
            .arg(&out)
            .arg(test_photo("04-fallenleaf-p3.jpg"))
            .status()
            .unwrap_or_else(|e| panic!("{heif_enc:?} (apt-get install libheif-examples): {e}"));
        assert!(made.success(), "heif-enc");
        let heic = std::fs::read(&out).expect("the HEIC");
        let _ = std::fs::remove_file(&out);
        let resp = upload(server.addr, "IMG_0001.HEIC", &heic).await;
        let id = accepted_id(&resp, "a HEIC");
        let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["source"]["format"], "heif", "{job}");
        let small = job["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["preset"] == "small"))
            .expect("small");
        assert_eq!(
            (small["width"].as_u64(), small["height"].as_u64()),
            (Some(400), Some(250))
        );
        return;
    }
    // `ftyp heic`, then a `meta` box whose item properties give a 4032×3024 `ispe`.
    let boxed = |kind: &[u8; 4], body: &[u8]| {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    };
    let ispe = boxed(b"ispe", &[0, 0, 0, 0, 0, 0, 0x0f, 0xc0, 0, 0, 0x0b, 0xd0]);
    let meta = [&[0u8; 4][..], &boxed(b"iprp", &boxed(b"ipco", &ispe))].concat();
    let heic = [
        boxed(b"ftyp", b"heic\0\0\0\0mif1heic"),
        boxed(b"meta", &meta),
        boxed(b"mdat", &[0; 64]),
    ]
    .concat();
    let resp = upload(server.addr, "IMG_0001.HEIC", &heic).await;
    let detail = unsupported_detail(&resp);
    assert!(
        detail.contains("HEIF") && detail.contains("native-codecs build reads HEIC"),
        "{detail}"
    );
}
