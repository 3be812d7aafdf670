//! `--rate-limit` on the real binary (issue 14): a token bucket per client (its token,
//! else its address), shared by every front of the tree and kept through a front's
//! restart; over it, 429 with `Retry-After` and the IETF `RateLimit-Policy` /
//! `RateLimit` headers; probes and reads never limited.

use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::StatusCode;
use pixpool_testkit::*;

/// A small, valid, unique JPEG: a refusal sent before the body is read still lets
/// the client read it.
fn small_jpeg(n: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 15, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    unique_jpeg(&out.into_inner(), n)
}

async fn upload_as(
    conn: &mut Conn,
    addr: std::net::SocketAddr,
    token: Option<&str>,
    n: usize,
) -> Resp {
    let bytes = small_jpeg(n);
    let mut req = multipart_request(addr, "/upload", &[("image", Some("s.jpg"), &bytes)]);
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        req.headers_mut().insert("authorization", value);
    }
    conn.send(req).await.expect("upload")
}

fn header<'a>(resp: &'a Resp, name: &str) -> &'a str {
    resp.header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", resp.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_on_every_front_and_others_do_not() {
    let (a, b) = ("client-a-token-0123456789", "client-b-token-0123456789");
    let server = Server::start_env(
        fresh_uploads(),
        2,
        1,
        &["--rate-limit", "12/min", "--rate-burst", "3"],
        &[("PIXPOOL_API_TOKENS", &format!("{a},{b}"))],
    );
    let mut fronts = conn_per_front(server.addr, 2).await;
    // The burst, spread over both fronts: one budget.
    for (n, remaining) in [(0usize, 2), (1, 1), (2, 0)] {
        let conn = &mut fronts[n % 2];
        let resp = upload_as(conn, server.addr, Some(a), n).await;
        accepted_id(&resp, "within the burst");
        assert_eq!(header(&resp, "ratelimit-policy"), "\"default\";q=3;w=15");
        assert!(
            header(&resp, "ratelimit").starts_with(&format!("\"default\";r={remaining};t=")),
            "{:?}",
            resp.headers
        );
    }
    for n in 3..5 {
        let conn = &mut fronts[n % 2];
        let resp = upload_as(conn, server.addr, Some(a), n).await;
        assert_problem(&resp, StatusCode::TOO_MANY_REQUESTS, "over the rate");
        assert!(resp.json()["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("rate-limited"));
        let retry: u64 = header(&resp, "retry-after").parse().expect("seconds");
        assert!((1..=5).contains(&retry), "{retry}");
        assert!(header(&resp, "ratelimit").starts_with("\"default\";r=0;t="));
        fronts = conn_per_front(server.addr, 2).await;
    }
    // Another client, on either front, is unaffected.
    for (n, conn) in fronts.iter_mut().enumerate() {
        let resp = upload_as(conn, server.addr, Some(b), 100 + n).await;
        accepted_id(&resp, "another client");
    }
    // Reads and probes are never limited, even for the limited client.
    let bearer = format!("Bearer {a}");
    for _ in 0..10 {
        let health = fronts[0].get("/health").await.expect("health");
        assert_eq!(health.status, StatusCode::OK);
        let stats = fronts[1]
            .request(hyper::Method::GET, "/stats", &[("authorization", &bearer)])
            .await
            .expect("stats");
        assert_ne!(stats.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(stats.header("ratelimit").is_none());
    }
    // A deletion counts as well.
    let resp = fronts[0]
        .request(
            hyper::Method::DELETE,
            "/jobs/0123456789abcdef0123456789abcdef01234567",
            &[("authorization", &bearer)],
        )
        .await
        .expect("DELETE");
    assert_problem(
        &resp,
        StatusCode::TOO_MANY_REQUESTS,
        "a deletion over the rate",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_outlives_a_front_restart() {
    // An open API: the client is its address.
    let server = Server::start(1, 1, &["--rate-limit", "12/min", "--rate-burst", "2"]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    for n in 0..2 {
        accepted_id(
            &upload_as(&mut conn, server.addr, None, n).await,
            "within the burst",
        );
    }
    let resp = upload_as(&mut conn, server.addr, None, 2).await;
    assert_problem(&resp, StatusCode::TOO_MANY_REQUESTS, "over the rate");
    let front = server.child_pid("front", 0).expect("front 0");
    kill9(front);
    server
        .wait_respawn("front", 0, front, Duration::from_secs(20))
        .await;
    server.wait_ready(Duration::from_secs(20));
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let resp = upload_as(&mut conn, server.addr, None, 3).await;
    assert_problem(
        &resp,
        StatusCode::TOO_MANY_REQUESTS,
        "the restarted front still knows the client's budget",
    );
}
