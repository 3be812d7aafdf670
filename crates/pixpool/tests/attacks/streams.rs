//! Slow bodies and followers: a minimum upload rate, event streams bounded
//! apart from connections and ended by a drain, a `Last-Event-ID` past the
//! end, and a preset list that names nothing.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pixpool_testkit::*;

fn grey(tag: &str) -> Vec<u8> {
    let bytes = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("test photo");
    tagged_jpeg(&bytes, tag)
}

/// Spool files (`tmp/<slot>/<id>.part`) of the server.
fn parts(server: &Server) -> Vec<String> {
    files_below(&server.uploads.join("tmp"))
        .into_iter()
        .filter(|f| f.ends_with(".part"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_is_cut_off_at_the_minimum_rate_and_leaves_no_spool_file() {
    // Set as an operator would, through the environment: 4 KiB/s.
    let server = Server::start_env(
        fresh_uploads(),
        1,
        1,
        &[],
        &[("PIXPOOL_MIN_UPLOAD_BYTES_PER_SEC", "4096")],
    );
    let boundary = "trickle-7d3f9a";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"slow.jpg\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&grey("trickle"));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    // 200 bytes a second: never idle for the 30 s idle limit, 20 times under
    // the minimum; the whole body would take 20 minutes.
    let writer = tokio::spawn(async move {
        for chunk in body.chunks(200) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = Instant::now();
    poll_until(
        Duration::from_secs(5),
        || "no spool file while the body trickles in".into(),
        || (!parts(&server).is_empty()).then_some(()),
    )
    .await;

    let mut answer = Vec::new();
    // The server closes with the client's bytes unread: the read may end in a
    // reset after the answer; what was read is what counts.
    let read = tokio::time::timeout(Duration::from_secs(25), rd.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    writer.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() || !answer.is_empty(),
        "a 200 B/s upload was not cut off within 25 s"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.contains("too-slow") && answer.contains("4096 bytes/s"),
        "the problem names the minimum: {answer}"
    );
    assert!(
        took < Duration::from_secs(15),
        "cut off after {took:?}: the rate is averaged over 10 s"
    );
    poll_until(
        Duration::from_secs(5),
        || format!("spool files left: {:?}", parts(&server)),
        || parts(&server).is_empty().then_some(()),
    )
    .await;
    assert!(dir_entries(&server.uploads.join("jobs")).is_empty());
    // The front serves on, and a normal upload is not too slow.
    let resp = upload(server.addr, "fast.jpg", &grey("fast")).await;
    accepted_id(&resp, "an upload at full speed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_do_not_take_the_connections_uploads_need() {
    let server = Server::start(1, 1, &["--max-connections", "4"]);
    let addr = server.addr;
    let (id, worker) = stalled_job(&server, "followed.jpg", &grey("followed"), "").await;
    let events = format!("/jobs/{id}/events");

    // Twice as many followers as the front has connections, SSE and long-polls.
    let mut streams = Vec::new();
    for n in 0..6 {
        let mut conn = Conn::open(addr).await.expect("connect");
        let stream = tokio::time::timeout(Duration::from_secs(5), conn.events(&events, None))
            .await
            .unwrap_or_else(|_| panic!("follower {n} was not answered within 5 s"))
            .expect("events");
        assert_eq!(stream.status, StatusCode::OK);
        streams.push((conn, stream));
    }
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let path = format!("/jobs/{id}?wait=30");
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await.expect("connect");
                conn.get(&path).await.expect("long poll")
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new client is served at once, and its upload goes through.
    let mut conn = Conn::open(addr).await.expect("connect");
    let health = tokio::time::timeout(Duration::from_secs(3), conn.get("/health"))
        .await
        .expect("answered while 8 followers wait on the front")
        .expect("health");
    assert_eq!(health.status, StatusCode::OK);
    resume_process(worker);
    let resp = conn
        .upload("other.jpg", &grey("after-followers"))
        .await
        .expect("upload");
    accepted_id(&resp, "upload beside the followers");

    // Every follower sees the job end, and its connection serves on (it took
    // its place under the connection limit again: with 4 places for 8
    // followers, each waits for one, freed as the others hang up).
    let followers: Vec<_> = streams
        .into_iter()
        .map(|(mut conn, mut stream)| {
            tokio::spawn(async move {
                let seen = stream.all(Duration::from_secs(60)).await;
                assert_eq!(
                    seen.last().map(|e| e.event.as_str()),
                    Some("done"),
                    "{seen:#?}"
                );
                let health = conn.get("/health").await.expect("the connection serves on");
                assert_eq!(health.status, StatusCode::OK);
            })
        })
        .collect();
    drop(conn);
    for follower in followers {
        follower.await.expect("follower");
    }
    for poll in polls {
        let resp = poll.await.expect("poll task");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.json()["state"], "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_have_their_own_bound_and_a_leaving_follower_frees_its_place() {
    let server = Server::start(1, 1, &["--max-event-streams", "2"]);
    let addr = server.addr;
    let (id, worker) = stalled_job(&server, "bounded.jpg", &grey("bounded"), "").await;
    let events = format!("/jobs/{id}/events");
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut conn = Conn::open(addr).await.expect("connect");
        let stream = conn.events(&events, None).await.expect("events");
        assert_eq!(stream.status, StatusCode::OK);
        streams.push((conn, stream));
    }

    // Over the bound: SSE and long-polls get 503 with Retry-After.
    let mut conn = Conn::open(addr).await.expect("connect");
    for path in [events.clone(), format!("/jobs/{id}?wait=5")] {
        let resp = conn.get(&path).await.expect("get");
        assert_problem(&resp, StatusCode::SERVICE_UNAVAILABLE, &path);
        assert!(resp.header("retry-after").is_some(), "{path}");
    }
    // A plain status read is not an event stream; the front serves on.
    let resp = conn.get(&format!("/jobs/{id}")).await.expect("get");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        conn.get("/health").await.expect("health").status,
        StatusCode::OK
    );

    // A follower that hangs up gives its place back.
    drop(streams.pop());
    let started = Instant::now();
    let (_conn, mut again) = loop {
        let mut c = Conn::open(addr).await.expect("connect");
        let s = c.events(&events, None).await.expect("events");
        if s.status == StatusCode::OK {
            break (c, s);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the place of a follower that left was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    resume_process(worker);
    let seen = again.all(Duration::from_secs(60)).await;
    assert_eq!(seen.last().map(|e| e.event.as_str()), Some("done"));
    for (_conn, mut stream) in streams {
        stream.all(Duration::from_secs(10)).await;
    }
    // Once they end, their places are free again.
    let mut conn = Conn::open(addr).await.expect("connect");
    let mut replay = conn.events(&events, None).await.expect("events");
    assert_eq!(replay.status, StatusCode::OK);
    replay.all(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_event_streams_and_long_polls_at_once() {
    let mut server = Server::start(1, 1, &["--grace-secs", "20"]);
    let addr = server.addr;
    let (id, worker) = stalled_job(&server, "drained.jpg", &grey("drained"), "").await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut conn = Conn::open(addr).await.expect("connect");
        let stream = conn
            .events(&format!("/jobs/{id}/events"), None)
            .await
            .expect("events");
        assert_eq!(stream.status, StatusCode::OK);
        streams.push((conn, stream));
    }
    let path = format!("/jobs/{id}?wait=60");
    let poll = tokio::spawn(async move {
        let mut conn = Conn::open(addr).await.expect("connect");
        conn.get(&path).await.expect("long poll")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let front = server.child_pid("front", 0).expect("front 0");

    let stopping = Instant::now();
    server.signal(Signal::SIGTERM);
    for (_conn, mut stream) in streams {
        // Panics unless the server ends the stream (cleanly) within 5 s.
        let seen = stream.all(Duration::from_secs(5)).await;
        assert!(
            seen.iter()
                .all(|e| e.event != "done" && e.event != "failed"),
            "the job cannot have ended (its worker is stopped): {seen:#?}"
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll answered at once")
        .expect("poll task");
    assert_eq!(resp.status, StatusCode::OK);
    let state = resp.json()["state"].as_str().unwrap_or("").to_string();
    assert!(state == "queued" || state == "processing", "{state}");
    poll_until(
        Duration::from_secs(5),
        || {
            format!(
                "front {front} still draining after {:?}",
                stopping.elapsed()
            )
        },
        || is_gone(front).then_some(()),
    )
    .await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the front took {:?} of its 20 s grace",
        stopping.elapsed()
    );

    // The worker, stopped until now, drains in its turn; nothing waits for the grace.
    resume_process(worker);
    let status = server
        .wait_exit(Duration::from_secs(18))
        .expect("the server exits before the grace period ends");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_past_the_end_still_sees_the_job_end() {
    let server = Server::start(1, 1, &[]);
    let addr = server.addr;
    let (id, worker) = stalled_job(&server, "resumed.jpg", &grey("resumed"), "").await;
    let events = format!("/jobs/{id}/events");
    let mut conn = Conn::open(addr).await.expect("connect");
    let mut stream = conn.events(&events, Some(u64::MAX)).await.expect("events");
    assert_eq!(stream.status, StatusCode::OK);
    resume_process(worker);
    // An id the server never issued: the job is replayed, and the stream ends with it.
    let seen = stream.all(Duration::from_secs(60)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{seen:#?}");
    assert_eq!(names.last(), Some(&"done"), "{seen:#?}");

    // On the finished job: at once.
    for last in ["18446744073709551615", "18446744073709551616", "-1"] {
        let asked = Instant::now();
        let resp = Conn::open(addr)
            .await
            .expect("connect")
            .request(hyper::Method::GET, &events, &[("last-event-id", last)])
            .await
            .expect("events");
        assert_eq!(resp.status, StatusCode::OK, "{last}");
        let text = String::from_utf8_lossy(&resp.body);
        assert!(text.contains("event: done"), "{last}: {text}");
        assert!(asked.elapsed() < Duration::from_secs(3), "{last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_list_that_names_no_preset_is_refused() {
    let server = Server::start(1, 1, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let image = grey("no-presets");
    let cases: [(&str, Option<&[u8]>); 4] = [
        ("/upload?presets=,", None),
        ("/upload?presets=%2C%2C", None),
        ("/upload", Some(b",")),
        ("/upload", Some(b" , ,")),
    ];
    for (path, field) in cases {
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = Vec::new();
        if let Some(list) = field {
            parts.push(("presets", None, list));
        }
        parts.push(("image", Some("a.jpg"), &image));
        let resp = conn.upload_to(path, &parts).await.expect("upload");
        let what = format!("{path} {field:?}");
        assert_problem(&resp, StatusCode::BAD_REQUEST, &what);
        let kind = resp.json()["type"].as_str().unwrap_or("").to_string();
        assert!(kind.ends_with("unknown-preset"), "{what}: {kind}");
    }
    assert!(dir_entries(&server.uploads.join("jobs")).is_empty());
    assert!(dir_entries(&server.uploads.join("raw")).is_empty());

    // An empty list still means the default set.
    let resp = conn
        .upload_to(
            "/upload",
            &[("presets", None, b""), ("image", Some("a.jpg"), &image)],
        )
        .await
        .expect("upload");
    let id = accepted_id(&resp, "empty list");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["outputs"].as_array().map(Vec::len), Some(4), "{job}");
}
