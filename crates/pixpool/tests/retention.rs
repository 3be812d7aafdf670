//! `--retain` on the real binary (issue 14): jobs finished longer ago are deleted as
//! `DELETE` deletes them, by the sweeper child, which also removes old orphans a
//! crash leaves in the uploads directory, and counts what it gave back. The expiry
//! test runs in both modes (`PIXPOOL_TEST_BACKEND=distributed`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use pixpool_model::JobId;
use pixpool_testkit::*;

fn photo() -> Vec<u8> {
    std::fs::read(test_photo("04-fallenleaf.jpg")).expect("test photo")
}

/// Sets `path`'s modification time to two hours ago (`touch -h`: a link itself).
fn age(path: &Path) {
    let status = Command::new("touch")
        .args(["-h", "-d", "2 hours ago"])
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success(), "touch {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finished_longer_ago_than_the_retention_are_deleted() {
    let server = Server::start(1, 1, &["--retain", "3s", "--admin", "127.0.0.1:0"]);
    assert!(
        server
            .children()
            .iter()
            .any(|(_, c)| c.starts_with("pixpool sweeper")),
        "{:?}",
        server.children()
    );
    let resp = upload(server.addr, "leaf.jpg", &unique_jpeg(&photo(), 1)).await;
    let id = accepted_id(&resp, "upload");
    let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
    let hash = job["content_hash"].as_str().expect("hash").to_string();
    let mut conn = Conn::open(server.addr).await.expect("connect");
    // Kept while within the retention.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = conn.get(&format!("/jobs/{id}")).await.expect("GET");
    assert_eq!(kept.status, StatusCode::OK, "swept too early");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = Conn::open(server.addr)
            .await
            .expect("connect")
            .get(&format!("/jobs/{id}"))
            .await
            .expect("GET");
        if resp.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never swept:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The record goes first; the files follow within the same removal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(server.names(&id).is_empty() && server.names(&hash).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "still named: {:?} {:?}",
            server.names(&id),
            server.names(&hash)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = scrape_until(server.admin_addr(), "the sweep counted", |t| {
        metric(t, r#"pixpool_sweep_removed_total{kind="expired"}"#) >= 1.0
            && metric(t, "pixpool_sweep_reclaimed_bytes_total") > 0.0
    })
    .await;
    assert!(
        metric(&text, "pixpool_sweep_reclaimed_bytes_total") >= 500_000.0,
        "{text}"
    );
    assert!(
        !server
            .log_lines_with(&["sweep done", "expired=1"])
            .is_empty(),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_orphans_are_swept_and_young_files_and_live_jobs_kept() {
    // Files live in the uploads directory only with the embedded backend.
    let args = ["--retain", "30d", "--sweep-interval-secs", "1"];
    let server = Server::start_env(fresh_uploads(), 1, 1, &args, &[]);
    let resp = upload(server.addr, "leaf.jpg", &unique_jpeg(&photo(), 2)).await;
    let live = accepted_id(&resp, "upload");
    wait_final(server.addr, &live, Duration::from_secs(60)).await;
    let up = &server.uploads;
    // A live job's files, aged: kept, since its record names them.
    for file in server.names(&live) {
        age(&up.join(file));
    }
    let (gone, young) = (JobId::generate(), JobId::generate());
    let old: Vec<std::path::PathBuf> = vec![
        up.join(format!("raw/{gone}.jpg")),
        up.join(format!("processed/{gone}-thumb.jpg")),
        up.join(format!("processed/{gone}-medium.avif")),
        up.join("jobs/.stale.json.123.tmp"),
        up.join("outbox/.stale.json.123.tmp"),
        up.join(format!("tmp/0/{gone}.part")),
    ];
    for path in &old {
        std::fs::write(path, vec![7u8; 1000]).expect("plant");
        age(path);
    }
    let link = up.join("dedup/stale-dedup-entry");
    std::os::unix::fs::symlink(gone.as_str(), &link).expect("plant a link");
    age(&link);
    // Young orphans: perhaps still being written; kept.
    let fresh = [
        up.join(format!("raw/{young}.jpg")),
        up.join(format!("tmp/0/{young}.part")),
    ];
    for path in &fresh {
        std::fs::write(path, b"young").expect("plant");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.iter().any(|p| p.exists()) || link.symlink_metadata().is_ok() {
        assert!(
            Instant::now() < deadline,
            "left: {:?}\n{}",
            old.iter().filter(|p| p.exists()).collect::<Vec<_>>(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another sweep or two, for what it might wrongly take.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for path in &fresh {
        assert!(path.exists(), "a young file was swept: {}", path.display());
    }
    for path in ["jobs", "images"] {
        let url = match path {
            "jobs" => format!("/jobs/{live}"),
            _ => format!("/images/{live}/thumb"),
        };
        let resp = Conn::open(server.addr)
            .await
            .expect("connect")
            .get(&url)
            .await
            .expect("GET");
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "{url}: the live job was touched"
        );
    }
    assert!(
        !server
            .log_lines_with(&["sweep done", "orphans=7"])
            .is_empty(),
        "{}",
        server.log_text()
    );
}
