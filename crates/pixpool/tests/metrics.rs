//! Prometheus metrics from the admin process, aggregated over every process.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use pixpool_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_every_process_and_survive_a_worker_restart() {
    let server = Server::start(2, 2, &["--admin", "127.0.0.1:0"]);
    let admin = server.admin_addr();
    assert!(server
        .children()
        .iter()
        .any(|(_, c)| c.starts_with("pixpool admin")));

    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let mut ids = Vec::new();
    for n in 0..3 {
        let resp = upload(server.addr, "g.jpg", &unique_jpeg(&jpeg, n)).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED);
        ids.push(resp.json()["id"].as_str().expect("id").to_string());
    }
    let bad = upload(server.addr, "x.jpg", b"definitely not an image").await;
    assert_eq!(bad.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for id in &ids {
        wait_final(server.addr, id, Duration::from_secs(30)).await;
    }
    let accepted = "pixpool_http_requests_total{route=\"upload\",code=\"202\"}";
    let done = "pixpool_jobs_total{outcome=\"done\"}";
    let text = scrape_until(admin, "3 uploads and 3 jobs", |t| {
        metric(t, accepted) >= 3.0 && metric(t, done) >= 3.0
    })
    .await;
    assert!(
        metric(
            &text,
            "pixpool_rejections_total{reason=\"unsupported-format\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "pixpool_upload_bytes_total") >= 3.0 * jpeg.len() as f64,
        "{text}"
    );
    assert!(
        metric(&text, "pixpool_job_duration_seconds_count") >= 3.0,
        "{text}"
    );
    assert!(
        text.contains("pixpool_job_stage_seconds_bucket{stage=\"decode\",le=\"+Inf\"}"),
        "{text}"
    );
    assert!(text.contains("pixpool_queue_depth{worker=\"1\"}"), "{text}");
    for role in ["front", "worker", "supervisor", "admin"] {
        assert!(
            text.contains(&format!("pixpool_process_rss_bytes{{role=\"{role}\"")),
            "rss of {role}: {text}"
        );
    }

    // A worker dies: the restart is counted and no counter goes backwards.
    let victim = server.child_pid("worker", 0).expect("worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let before = metric(&text, done);
    let text = scrape_until(admin, "a worker restart", |t| {
        metric(t, "pixpool_restarts_total{role=\"worker\"}") >= 1.0
    })
    .await;
    assert!(metric(&text, done) >= before, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_one_self_contained_page_and_stats_are_live() {
    let server = Server::start(1, 1, &["--admin", "127.0.0.1:0"]);
    let mut c = Conn::open(server.addr).await.expect("connect");
    let page = c.get("/").await.expect("page");
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("default-src 'self'")));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains("/jobs/") && html.contains("/events") && html.contains("/upload"),
        "uses the API"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN or external resource"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = c.get("/stats").await.expect("stats").json();
        if stats["workers"] == 1 {
            assert!(
                stats["rss_bytes"]["worker"].as_u64().is_some_and(|b| b > 0),
                "{stats}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no live stats: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
