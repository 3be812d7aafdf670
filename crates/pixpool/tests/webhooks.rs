//! Completion webhooks on the real binary (issue 14): a Python receiver
//! (`tests/webhooks/receiver.py`) checks every signature with its own HMAC, answers as
//! told, and records what it got. Signed, retried with the same `webhook-id`, stopped
//! by 410, durable through `kill -9` of the whole tree, and per-upload callbacks held
//! to their prefixes and to public addresses, at the door and at delivery.
//!
//! With `PIXPOOL_TEST_BACKEND=distributed` every server runs on a NATS cluster and a
//! bucket of the test's own: the outbox is then the KV bucket, and the courier reads
//! the records from JetStream (CI runs the file both ways).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use pixpool_testkit::*;
use serde_json::Value;

/// The Standard Webhooks reference secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running `receiver.py` and its directory.
struct Receiver {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Receiver {
    /// Starts a receiver answering with `plan` (see the script).
    fn start(name: &str, plan: &str) -> Receiver {
        let dir =
            std::env::temp_dir().join(format!("pixpool-webhook-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("receiver dir");
        std::fs::write(dir.join("plan"), plan).expect("plan");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks/receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(&dir)
            .arg(SECRET)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs the receiver");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("port")) {
                break text.trim().parse().expect("a port");
            }
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Receiver { child, dir, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set_plan(&self, plan: &str) {
        std::fs::write(self.dir.join("plan"), plan).expect("plan");
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a logged request"))
            .collect()
    }

    /// Waits until `done` holds for what was received.
    async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: received {got:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn photo() -> Vec<u8> {
    std::fs::read(test_photo("04-fallenleaf.jpg")).expect("test photo")
}

/// Where a test's servers keep their state: the uploads directory alone, or also a
/// NATS cluster and a bucket that outlive a killed tree, for its restart.
struct Harness {
    services: Option<Services>,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let services = match Backend::from_env() {
            Backend::Embedded => None,
            Backend::Distributed => Some(
                Services::start(&format!("webhooks-{name}"))
                    .expect("PIXPOOL_TEST_BACKEND=distributed needs nats-server and moto_server"),
            ),
        };
        Harness { services }
    }

    fn server(&self, uploads: PathBuf, args: &[&str]) -> Server {
        let env = [("PIXPOOL_WEBHOOK_SECRET", SECRET)];
        match &self.services {
            Some(services) => services.tree_env(uploads, 1, 1, args, &env),
            None => Server::start_env(uploads, 1, 1, args, &env),
        }
    }

    /// Whether the outbox is the uploads directory's (else NATS KV).
    fn local_outbox(&self) -> bool {
        self.services.is_none()
    }
}

async fn upload(server: &Server, path: &str, extra: &[(&str, Option<&str>, &[u8])]) -> Resp {
    let bytes = unique_jpeg(&photo(), rand_tag());
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("image", Some("leaf.jpg"), &bytes)];
    parts.extend_from_slice(extra);
    Conn::open(server.addr)
        .await
        .expect("connect")
        .upload_to(path, &parts)
        .await
        .expect("upload")
}

fn rand_tag() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::process::id() as usize * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

/// Every request was signed as the scheme says, recently, as JSON.
fn assert_signed(got: &[Value]) {
    for r in got {
        assert_eq!(r["signature_ok"], true, "{r}");
        assert_eq!(r["fresh"], true, "{r}");
        assert_eq!(r["content_type"], "application/json", "{r}");
    }
}

async fn wait_webhook_state(server: &Server, id: &str, state: &str) -> Value {
    // Past a lease that a courier killed mid-delivery held (its 10-s timeout + 30 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    loop {
        let job = conn.get(&format!("/jobs/{id}")).await.expect("job").json();
        if job["webhook"]["state"] == state {
            return job;
        }
        assert!(Instant::now() < deadline, "webhook never {state}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_job_is_posted_signed_and_retried_with_the_same_id_until_accepted() {
    let harness = Harness::new("a_done_job_is_posted_sig");
    let receiver = Receiver::start("retried", "500,500,500,200");
    let hook = receiver.url("/hook");
    let server = harness.server(
        fresh_uploads(),
        &[
            "--webhook-url",
            &hook,
            "--webhook-retry-base-ms",
            "100",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let id = accepted_id(&upload(&server, "/upload", &[]).await, "upload");
    let got = receiver
        .wait_until("four attempts", Duration::from_secs(30), |g| g.len() >= 4)
        .await;
    assert_eq!(got.len(), 4, "nothing after the 200: {got:#?}");
    assert_signed(&got);
    let ids: Vec<&str> = got.iter().map(|r| r["id"].as_str().unwrap_or("")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one webhook-id across retries: {ids:?}"
    );
    assert_eq!(ids[0], format!("msg_{id}_done"));
    let statuses: Vec<u64> = got
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    // The body is the event, fixed at the first attempt: the job as the API shows it.
    let body = &got[3]["body"];
    assert_eq!(body, &got[0]["body"], "every retry sends the same body");
    assert_eq!(body["type"], "job.done", "{body}");
    assert!(body["timestamp"].is_string(), "{body}");
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["state"], "done", "{body}");
    assert_eq!(body["data"]["status_url"], format!("/jobs/{id}"), "{body}");
    assert!(!body["data"]["outputs"]
        .as_array()
        .expect("outputs")
        .is_empty());
    let job = wait_webhook_state(&server, &id, "delivered").await;
    assert_eq!(job["webhook"]["attempts"], 4, "{job}");
    assert_eq!(job["webhook"]["last_status"], 200, "{job}");
    // Counted by outcome, and timed.
    let text = scrape_until(server.admin_addr(), "the attempts counted", |t| {
        metric(
            t,
            r#"pixpool_webhook_deliveries_total{outcome="delivered"}"#,
        ) == 1.0
            && metric(t, r#"pixpool_webhook_deliveries_total{outcome="retry"}"#) == 3.0
    })
    .await;
    assert_eq!(
        metric(&text, "pixpool_webhook_delivery_seconds_count"),
        4.0,
        "{text}"
    );
    // Nothing is owed any more.
    if harness.local_outbox() {
        // (The courier's spare files, which entries are swapped with, stay while it runs.)
        let owed: Vec<_> = dir_entries(&server.uploads.join("outbox"))
            .into_iter()
            .filter(|n| !n.starts_with(".spare."))
            .collect();
        assert!(owed.is_empty(), "still owed: {owed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_posted_and_410_stops_the_deliveries() {
    let harness = Harness::new("a_failed_job_is_posted_a");
    let receiver = Receiver::start("gone", "410");
    let hook = receiver.url("/hook");
    // A time limit no decode meets: the job fails.
    let server = harness.server(
        fresh_uploads(),
        &[
            "--webhook-url",
            &hook,
            "--webhook-retry-base-ms",
            "100",
            "--job-timeout-secs",
            "0.001",
        ],
    );
    let id = accepted_id(&upload(&server, "/upload", &[]).await, "upload");
    let job = wait_webhook_state(&server, &id, "failed").await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    assert_eq!(job["webhook"]["last_status"], 410, "{job}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "410 means no more: {got:#?}");
    assert_signed(&got);
    assert_eq!(got[0]["body"]["type"], "job.failed");
    assert_eq!(got[0]["id"], format!("msg_{id}_failed"));
    let problem = &got[0]["body"]["data"]["error"];
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("processing-timeout"),
        "the body carries the job's problem: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_survive_kill_9_of_the_tree() {
    let harness = Harness::new("undelivered_events_survi");
    let receiver = Receiver::start("durable", "503");
    let hook = receiver.url("/hook");
    let args = [
        "--webhook-url",
        hook.as_str(),
        "--webhook-retry-base-ms",
        "100",
    ];
    let server = harness.server(fresh_uploads(), &args);
    let id = accepted_id(&upload(&server, "/upload", &[]).await, "upload");
    receiver
        .wait_until("a refused attempt", Duration::from_secs(30), |g| {
            !g.is_empty()
        })
        .await;
    let (uploads, _) = server.kill_tree();
    if harness.local_outbox() {
        assert!(
            dir_entries(&uploads.join("outbox"))
                .iter()
                .any(|n| n.ends_with(".json")),
            "the event is still owed after the kill"
        );
    }
    receiver.set_plan("200");
    let server = harness.server(uploads, &args);
    let got = receiver
        .wait_until("delivery after the restart", Duration::from_secs(30), |g| {
            g.iter().any(|r| r["status"] == 200)
        })
        .await;
    assert_signed(&got);
    assert!(
        got.iter().all(|r| r["id"] == format!("msg_{id}_done")),
        "{got:#?}"
    );
    let job = wait_webhook_state(&server, &id, "delivered").await;
    assert_eq!(job["webhook"]["last_status"], 200, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_are_held_to_their_prefixes_and_to_public_addresses() {
    let harness = Harness::new("callback_urls_are_held_t");
    let receiver = Receiver::start("door", "200");
    let allowed = receiver.url("/cb/");
    // No prefix allowed: uploads name no callback.
    let closed = harness.server(fresh_uploads(), &["--webhook-url", &receiver.url("/op")]);
    let resp = upload(
        &closed,
        "/upload",
        &[("callback_url", None, allowed.as_bytes())],
    )
    .await;
    assert_problem(&resp, StatusCode::BAD_REQUEST, "callbacks not enabled");
    assert!(resp.json()["type"]
        .as_str()
        .unwrap_or("")
        .ends_with("bad-callback"));
    drop(closed);

    let server = harness.server(fresh_uploads(), &["--webhook-allow", &allowed]);
    for (what, url) in [
        ("outside the prefix", receiver.url("/other")),
        (
            "a look-alike host",
            format!("http://127.0.0.1.nip.io:{}/cb/x", receiver.port),
        ),
        (
            "credentials",
            format!("http://me:pw@127.0.0.1:{}/cb/x", receiver.port),
        ),
        ("not http", "file:///etc/passwd".to_string()),
        // Allowed by prefix, but on loopback, which callbacks may not reach.
        ("loopback", format!("{allowed}x")),
    ] {
        let form = upload(
            &server,
            "/upload",
            &[("callback_url", None, url.as_bytes())],
        )
        .await;
        assert_problem(&form, StatusCode::BAD_REQUEST, what);
        let query = format!(
            "/upload?callback_url={}",
            url.replace('%', "%25")
                .replace('&', "%26")
                .replace('?', "%3F")
        );
        // Refused before the body is read: a small body, all sent before the answer.
        let query = Conn::open(server.addr)
            .await
            .expect("connect")
            .upload_to(&query, &[("image", Some("x.jpg"), b"not read")])
            .await
            .expect("upload");
        assert_problem(&query, StatusCode::BAD_REQUEST, what);
    }
    let detail = upload(
        &server,
        "/upload",
        &[("callback_url", None, format!("{allowed}x").as_bytes())],
    )
    .await
    .json();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap_or("")
            .contains("127.0.0.1"),
        "the refusal names the address: {detail}"
    );
    assert!(receiver.requests().is_empty(), "nothing was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_gets_the_event_beside_the_operator_and_is_checked_again_at_delivery() {
    let harness = Harness::new("a_callback_gets_the_even");
    let operator = Receiver::start("operator", "200");
    let callback = Receiver::start("callback", "500");
    let allowed = callback.url("/cb/");
    let op = operator.url("/op");
    let private = [
        "--webhook-url",
        op.as_str(),
        "--webhook-allow",
        allowed.as_str(),
        "--webhook-allow-private",
        "--webhook-retry-base-ms",
        "100",
    ];
    let server = harness.server(fresh_uploads(), &private);
    let target = format!("{allowed}job?x=1");
    let resp = upload(
        &server,
        "/upload",
        &[("callback_url", None, target.as_bytes())],
    )
    .await;
    let id = accepted_id(&resp, "upload with a callback");
    let got = callback
        .wait_until(
            "the callback's first attempt",
            Duration::from_secs(30),
            |g| !g.is_empty(),
        )
        .await;
    assert_signed(&got);
    assert_eq!(got[0]["path"], "/cb/job?x=1");
    let op_got = operator
        .wait_until("the operator's copy", Duration::from_secs(30), |g| {
            !g.is_empty()
        })
        .await;
    assert_signed(&op_got);
    assert_eq!(
        op_got[0]["id"], got[0]["id"],
        "one event, one id, two destinations"
    );
    // Pending while the callback is still owed, whatever the operator answered.
    let job = Conn::open(server.addr)
        .await
        .expect("connect")
        .get(&format!("/jobs/{id}"))
        .await
        .expect("job")
        .json();
    assert_eq!(job["webhook"]["state"], "pending", "{job}");

    // Restarted without --webhook-allow-private: the callback still owed is now to a
    // forbidden address, and is refused at delivery, never sent.
    let (uploads, _) = server.kill_tree();
    let before = callback.requests().len();
    callback.set_plan("200");
    let strict = [
        "--webhook-url",
        op.as_str(),
        "--webhook-allow",
        allowed.as_str(),
        "--webhook-retry-base-ms",
        "100",
    ];
    let server = harness.server(uploads, &strict);
    let job = wait_webhook_state(&server, &id, "failed").await;
    assert_eq!(
        callback.requests().len(),
        before,
        "nothing reached the forbidden address"
    );
    assert!(
        server
            .log_lines_with(&["webhook failed for good", "refused"])
            .len()
            == 1,
        "{}",
        server.log_text()
    );
    assert!(job["webhook"]["attempts"].as_u64() >= Some(2), "{job}");
}

#[test]
fn a_webhook_destination_without_a_secret_is_a_configuration_error() {
    let uploads = fresh_uploads();
    let out = Command::new(pixpool_bin())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--uploads",
        ])
        .arg(&uploads)
        .args(["--webhook-url", "http://127.0.0.1:9/hook"])
        .env_remove("PIXPOOL_WEBHOOK_SECRET")
        .env_remove("PIXPOOL_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run pixpool");
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PIXPOOL_WEBHOOK_SECRET"), "{stderr}");
    for bad in ["not-a-secret", "whsec_c2hvcnQ="] {
        let out = Command::new(pixpool_bin())
            .args(["check-config", "--webhook-url", "http://127.0.0.1:9/hook"])
            .env("PIXPOOL_WEBHOOK_SECRET", bad)
            .env_remove("PIXPOOL_CONFIG")
            .output()
            .expect("run pixpool");
        assert!(!out.status.success(), "{bad}: {out:?}");
    }
    // The secret is never printed.
    let out = Command::new(pixpool_bin())
        .args(["check-config", "--webhook-url", "http://127.0.0.1:9/hook"])
        .env("PIXPOOL_WEBHOOK_SECRET", SECRET)
        .env_remove("PIXPOOL_CONFIG")
        .output()
        .expect("run pixpool");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("webhook_secret = \"<redacted>\""),
        "{stdout}"
    );
    assert!(!stdout.contains(&SECRET[6..]), "{stdout}");
    let _ = std::fs::remove_dir_all(uploads);
}
