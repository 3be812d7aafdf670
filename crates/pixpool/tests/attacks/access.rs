//! Tokens, caching, origins and dedup as seen by someone without the right token.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};

use pixpool_testkit::*;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
const PASSPHRASE: &str = "correct horse battery staple";

fn write_config(path: &Path, tokens: &[&str]) {
    let list: Vec<String> = tokens.iter().map(|t| format!("{t:?}")).collect();
    std::fs::write(path, format!("api_tokens = [{}]\n", list.join(", "))).expect("write config");
}

fn config_file(uploads: &Path) -> std::path::PathBuf {
    let dir = uploads.with_extension("etc");
    std::fs::create_dir_all(&dir).expect("config dir");
    dir.join("pixpool.toml")
}

fn get(server: &Server, path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", server.addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Full::new(Bytes::new())).expect("request")
}

async fn status_of(server: &Server, path: &str, token: Option<&str>) -> StatusCode {
    let mut c = Conn::open(server.addr).await.expect("connect");
    c.send(get(server, path, token)).await.expect("send").status
}

fn upload_as(
    server: &Server,
    query: &str,
    bytes: &[u8],
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut req = multipart_request(
        server.addr,
        &format!("/upload{query}"),
        &[("image", Some("a.jpg"), bytes)],
    );
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    req
}

async fn send(server: &Server, req: Request<Full<Bytes>>) -> Resp {
    let mut c = Conn::open(server.addr).await.expect("connect");
    c.send(req).await.expect("send")
}

/// Waits until the log shows `needle` `count` times.
async fn wait_log(server: &Server, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.log_text().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression: the supervisor copied the file's tokens into its own
/// `PIXPOOL_API_TOKENS`, which then overrode the file on every SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_from_the_file_stops_working_after_sighup() {
    let uploads = fresh_uploads();
    let config = config_file(&uploads);
    write_config(&config, &[ALICE, BOB]);
    let server = Server::start_env(
        uploads,
        2,
        1,
        &["--config", config.to_str().expect("utf-8 path")],
        &[],
    );
    let missing = "/jobs/0193a5b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    assert_eq!(
        status_of(&server, missing, Some(BOB)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&server, missing, Some(ALICE)).await,
        StatusCode::NOT_FOUND
    );

    write_config(&config, &[ALICE]);
    server.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&server, "rolling restart complete", 1).await;
    assert!(
        !server.log_text().contains("reload refused"),
        "{}",
        server.log_text()
    );
    // Every front is new by now: ask each of them (many connections land on both).
    for _ in 0..8 {
        assert_eq!(
            status_of(&server, missing, Some(BOB)).await,
            StatusCode::UNAUTHORIZED,
            "a revoked token still works"
        );
        assert_eq!(
            status_of(&server, missing, Some(ALICE)).await,
            StatusCode::NOT_FOUND
        );
    }
}

/// Regression: children split the tokens on whitespace, so a passphrase
/// became four short tokens, and every later SIGHUP failed validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_spaces_reaches_the_fronts_whole() {
    let uploads = fresh_uploads();
    let config = config_file(&uploads);
    write_config(&config, &[PASSPHRASE]);
    let server = Server::start_env(
        uploads,
        1,
        1,
        &["--config", config.to_str().expect("utf-8 path")],
        &[],
    );
    let missing = "/jobs/0193a5b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    for part in ["horse", "correct", "battery staple", "correct horse"] {
        assert_eq!(
            status_of(&server, missing, Some(part)).await,
            StatusCode::UNAUTHORIZED,
            "{part:?} is not a token"
        );
    }
    assert_eq!(
        status_of(&server, missing, Some(PASSPHRASE)).await,
        StatusCode::NOT_FOUND
    );
    server.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&server, "rolling restart complete", 1).await;
    assert_eq!(
        status_of(&server, missing, Some(PASSPHRASE)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&server, missing, Some("horse")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_images_are_private_and_stats_need_a_token_and_dedup_is_per_client() {
    let server = Server::start_env(
        fresh_uploads(),
        1,
        1,
        &[],
        &[("PIXPOOL_API_TOKENS", &format!("{ALICE},{BOB}"))],
    );
    // The probes and the page stay open; /stats does not.
    assert_eq!(status_of(&server, "/health", None).await, StatusCode::OK);
    assert_eq!(status_of(&server, "/", None).await, StatusCode::OK);
    assert_eq!(
        status_of(&server, "/stats", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&server, "//stats", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&server, "/stats", Some(ALICE)).await,
        StatusCode::OK
    );

    let jpeg = unique_jpeg(
        &std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo"),
        7_000_001,
    );
    let first = send(
        &server,
        upload_as(&server, "?presets=thumb", &jpeg, Some(ALICE)),
    )
    .await;
    let alice_id = accepted_id(&first, "alice's upload");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = Conn::open(server.addr).await.expect("connect");
        let path = format!("/jobs/{alice_id}?wait=5");
        let job = c
            .send(get(&server, &path, Some(ALICE)))
            .await
            .expect("send")
            .json();
        if job["state"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "{job}");
    }

    // Bob uploads the same bytes: he must not learn that Alice has them.
    let second = send(
        &server,
        upload_as(&server, "?presets=thumb", &jpeg, Some(BOB)),
    )
    .await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{:?}", second.body);
    let body = second.json();
    assert_eq!(body["deduplicated"], false, "{body}");
    assert_ne!(body["id"].as_str(), Some(alice_id.as_str()));
    // Alice again: her own job.
    let third = send(
        &server,
        upload_as(&server, "?presets=thumb", &jpeg, Some(ALICE)),
    )
    .await;
    assert_eq!(third.status, StatusCode::OK, "{:?}", third.body);
    assert_eq!(third.json()["id"].as_str(), Some(alice_id.as_str()));

    let mut c = Conn::open(server.addr).await.expect("connect");
    let image = c
        .send(get(
            &server,
            &format!("/images/{alice_id}/thumb"),
            Some(ALICE),
        ))
        .await
        .expect("send");
    assert_eq!(image.status, StatusCode::OK);
    let cache = image.header("cache-control").unwrap_or_default();
    assert!(cache.starts_with("private"), "Cache-Control: {cache}");
    assert!(!cache.contains("public"), "Cache-Control: {cache}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_refuses_posts_from_other_origins() {
    let server = Server::start(1, 1, &["--allowed-origin", "https://app.example.com"]);
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let host = server.addr.to_string();
    let with = |origin: Option<&str>, host: &str, n: usize| {
        let mut req = upload_as(
            &server,
            "?presets=thumb",
            &unique_jpeg(&jpeg, 7_100_000 + n),
            None,
        );
        req.headers_mut()
            .insert("host", host.parse().expect("host"));
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("origin"));
        }
        req
    };
    // A page of another site, a sandboxed page (`null`), and a DNS name rebound to
    // this address (same-origin by name, but not this server's to vouch for).
    for (n, (origin, host)) in [
        ("https://evil.example", host.as_str()),
        ("null", host.as_str()),
        ("http://rebound.example:3000", "rebound.example:3000"),
    ]
    .into_iter()
    .enumerate()
    {
        let resp = send(&server, with(Some(origin), host, n)).await;
        assert_problem(&resp, StatusCode::FORBIDDEN, origin);
    }
    // curl and Postman send no Origin; the dashboard's own origin; a listed one.
    let own = format!("http://{}", server.addr);
    for (n, origin) in [None, Some(own.as_str()), Some("https://app.example.com")]
        .into_iter()
        .enumerate()
    {
        let resp = send(&server, with(origin, &host, 10 + n)).await;
        assert_eq!(
            resp.status,
            StatusCode::ACCEPTED,
            "{origin:?}: {:?}",
            resp.body
        );
    }
    // Reads stay open to any page (nothing changes).
    let mut c = Conn::open(server.addr).await.expect("connect");
    let mut req = get(&server, "/health", None);
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().expect("origin"));
    assert_eq!(c.send(req).await.expect("send").status, StatusCode::OK);
}

/// Bytes before the first boundary are bounded: multer kept them all and
/// rescanned them on every read (40 MiB took a front from 8 to 43 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_boundary_is_refused_after_a_few_kib() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(1, 1, &[]);
    let front = server.child_pid("front", 0).expect("front");
    let before = rss_bytes(front);
    let junk = vec![b'x'; 1024 * 1024];
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /upload HTTP/1.1\r\nhost: {}\r\ncontent-type: multipart/form-data; boundary=B\r\ncontent-length: {}\r\n\r\n",
            server.addr,
            40 * 1024 * 1024
        );
        s.write_all(head.as_bytes()).await.expect("head");
        streams.push(s);
    }
    let mut answers = Vec::new();
    for mut s in streams {
        let mut sent = 0usize;
        // The front answers and closes long before 40 MiB: stop at the first error.
        while sent < 40 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_secs(5), s.write_all(&junk)).await {
                Ok(Ok(())) => sent += junk.len(),
                _ => break,
            }
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        answers.push((sent, String::from_utf8_lossy(&answer).into_owned()));
    }
    for (sent, answer) in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "after {sent} bytes: {answer:?}"
        );
        assert!(answer.contains("boundary"), "{answer:?}");
        assert!(*sent < 40 * 1024 * 1024, "the front read all of it");
    }
    let after = rss_bytes(front);
    assert!(
        after < before + 16 * 1024 * 1024,
        "front RSS grew from {before} to {after}"
    );
    assert_eq!(
        server.child_pid("front", 0),
        Some(front),
        "the front kept running"
    );
    assert!(
        dir_entries(&server.uploads.join("tmp/0")).is_empty(),
        "spool files left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_part_headers_are_refused() {
    let server = Server::start(1, 1, &[]);
    let mut body =
        b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n".to_vec();
    for i in 0..20_000 {
        body.extend_from_slice(format!("X-Pad-{i}: aaaaaaaaaaaaaaaa\r\n").as_bytes());
    }
    let req = Request::post("/upload")
        .header("host", server.addr.to_string())
        .header("content-type", "multipart/form-data; boundary=B")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let mut c = Conn::open(server.addr).await.expect("connect");
    let resp = c.send(req).await.expect("send");
    assert_problem(&resp, StatusCode::BAD_REQUEST, "part headers");
    assert_eq!(resp.header("connection"), Some("close"));
    let detail = resp.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("headers"), "{detail}");
}
