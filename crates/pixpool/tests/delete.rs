//! `DELETE /jobs/<id>` on the real binary (issue 14): a job and everything that names
//! it go; originals are per job, so another job with the same bytes keeps its own; a
//! queued or running job is cancelled and leaves nothing behind; deleting twice is 404.
//! Run in both modes (`PIXPOOL_TEST_BACKEND=distributed`: records in NATS KV, files in
//! the bucket).

use std::time::Duration;

use hyper::{Method, StatusCode};
use pixpool_testkit::*;

fn photo() -> Vec<u8> {
    std::fs::read(test_photo("04-fallenleaf.jpg")).expect("test photo")
}

async fn delete(server: &Server, id: &str) -> Resp {
    Conn::open(server.addr)
        .await
        .expect("connect")
        .request(Method::DELETE, &format!("/jobs/{id}"), &[])
        .await
        .expect("DELETE")
}

async fn upload_to(server: &Server, path: &str, bytes: &[u8]) -> Resp {
    Conn::open(server.addr)
        .await
        .expect("connect")
        .upload_to(path, &[("image", Some("leaf.jpg"), bytes)])
        .await
        .expect("upload")
}

async fn done(server: &Server, path: &str, bytes: &[u8]) -> (String, serde_json::Value) {
    let id = accepted_id(&upload_to(server, path, bytes).await, path);
    let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
    (id, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_and_everything_naming_it_are_gone() {
    let server = Server::start(1, 1, &[]);
    let bytes = unique_jpeg(&photo(), 1);
    let (id, job) = done(&server, "/upload", &bytes).await;
    let hash = job["content_hash"]
        .as_str()
        .expect("content hash")
        .to_string();
    assert!(!server.names(&id).is_empty(), "the job is stored somewhere");

    let resp = delete(&server, &id).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{:?}", resp.body);
    assert!(resp.body.is_empty());
    assert_eq!(
        server.names(&id),
        Vec::<String>::new(),
        "nothing names the job"
    );
    assert_eq!(
        server.names(&hash),
        Vec::<String>::new(),
        "nothing names its content"
    );
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let gone = conn.get(&format!("/jobs/{id}")).await.expect("GET");
    assert_problem(&gone, StatusCode::NOT_FOUND, "the job after DELETE");
    let image = conn.get(&format!("/images/{id}/thumb")).await.expect("GET");
    assert_problem(&image, StatusCode::NOT_FOUND, "a variant after DELETE");
    assert_problem(
        &delete(&server, &id).await,
        StatusCode::NOT_FOUND,
        "deleting twice",
    );
    assert_problem(
        &delete(&server, "not-a-job-id").await,
        StatusCode::NOT_FOUND,
        "a malformed id",
    );

    // The same bytes again make a new job, processed anew (no dedup hit on the old one).
    let again = upload_to(&server, "/upload", &bytes).await;
    let new_id = accepted_id(&again, "the same bytes after the delete");
    assert_ne!(new_id, id);
    let job = wait_final(server.addr, &new_id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_of_the_same_bytes_keep_their_own_original() {
    let server = Server::start(1, 1, &[]);
    let bytes = unique_jpeg(&photo(), 2);
    // Two preset sets: two jobs of one content.
    let (first, _) = done(&server, "/upload?presets=thumb", &bytes).await;
    let (second, job) = done(&server, "/upload?presets=small", &bytes).await;
    assert_ne!(first, second);
    let hash = job["content_hash"].as_str().expect("hash").to_string();

    assert_eq!(delete(&server, &first).await.status, StatusCode::NO_CONTENT);
    assert!(
        server.names(&first).is_empty(),
        "{:?}",
        server.names(&first)
    );
    // The other job is whole: its record, its original, its variant.
    let rec = server.record(&second).expect("the second record");
    let original = rec["source"]["path"].as_str().expect("path");
    assert!(!server.stored(original).is_empty(), "its original is kept");
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let small = conn
        .get(&format!("/images/{second}/small"))
        .await
        .expect("GET");
    assert_eq!(small.status, StatusCode::OK);
    // And an identical upload still finds it (its dedup entry is its own).
    let dup = upload_to(&server, "/upload?presets=small", &bytes).await;
    assert_eq!(dup.json()["id"], second.as_str(), "{:?}", dup.body);

    assert_eq!(
        delete(&server, &second).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        server.names(&second).is_empty(),
        "{:?}",
        server.names(&second)
    );
    assert!(server.names(&hash).is_empty(), "{:?}", server.names(&hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_deleted_is_cancelled_and_leaves_nothing() {
    let server = Server::start(1, 1, &[]);
    let bytes = unique_jpeg(&photo(), 3);
    let (id, worker) = stalled_job(&server, "cancelled.jpg", &bytes, "").await;
    assert_eq!(delete(&server, &id).await.status, StatusCode::NO_CONTENT);
    resume_process(worker);
    // The worker reaches it, finds it gone and drops it; nothing it held stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let names = server.names(&id);
        if names.is_empty() && !server.log_lines_with(&[&id]).is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still named: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker goes on with the next job.
    let (next, _) = done(&server, "/upload", &unique_jpeg(&photo(), 4)).await;
    assert!(server.record(&next).is_some());
    assert!(server.names(&id).is_empty(), "{:?}", server.names(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_needs_a_token_when_tokens_are_set() {
    let token = "correct-horse-battery-staple";
    let server = Server::start_env(fresh_uploads(), 1, 1, &[], &[("PIXPOOL_API_TOKENS", token)]);
    let bearer = format!("Bearer {token}");
    let no_job = "/jobs/0123456789abcdef0123456789abcdef01234567";
    // A fresh connection each: a refusal closes one whose body it did not read.
    let resp = Conn::open(server.addr)
        .await
        .expect("connect")
        .request(Method::DELETE, no_job, &[])
        .await
        .expect("DELETE");
    assert_problem(
        &resp,
        StatusCode::UNAUTHORIZED,
        "a delete without the token",
    );
    let resp = Conn::open(server.addr)
        .await
        .expect("connect")
        .request(Method::DELETE, no_job, &[("authorization", &bearer)])
        .await
        .expect("DELETE");
    assert_problem(
        &resp,
        StatusCode::NOT_FOUND,
        "a delete of no job, with the token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_deleted_stops_at_its_next_stage_and_removes_what_it_stored() {
    let server = Server::start(1, 1, &[]);
    let worker = server.child_pid("worker", 0).expect("worker 0");
    // Caught while it runs: the worker is stopped with the job `processing`, deleted,
    // then let go. A job that ended before the stop is tried again with another.
    let mut caught = None;
    for n in 0..5 {
        let (name, bytes) = slow_photo(&format!("running-{n}"));
        let id = accepted_id(&upload_to(&server, "/upload", &bytes).await, &name);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while server.record(&id).is_some_and(|r| r["state"] == "queued") {
            assert!(std::time::Instant::now() < deadline, "never started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        pause_process(worker);
        if server
            .record(&id)
            .is_some_and(|r| r["state"] == "processing")
        {
            caught = Some(id);
            break;
        }
        resume_process(worker);
        wait_final(server.addr, &id, Duration::from_secs(60)).await;
    }
    let id = caught.expect("a job caught running in five tries");
    assert_eq!(delete(&server, &id).await.status, StatusCode::NO_CONTENT);
    resume_process(worker);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The worker drops it at its next stage (or, the distributed queue having given
    // it to another pull meanwhile, finds it gone at the start): nothing stays.
    while !server.names(&id).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never noticed:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.names(&id), Vec::<String>::new(), "nothing stays");
    let (next, _) = done(&server, "/upload", &unique_jpeg(&photo(), 5)).await;
    assert!(server.record(&next).is_some());
}
