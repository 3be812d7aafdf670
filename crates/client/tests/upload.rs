//! `pixpool upload` against the real server: the `pixpool` binary of this
//! workspace on port 0 in a temp uploads directory, fed the photos of
//! `test-data/` (the testkit's [`Server`]). A stand-in server (a few lines of hyper) covers what the real
//! one will not do on demand: answering 503 with `Retry-After`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pixpool_client::report::Report;
use pixpool_client::server::{Connection, ServerUrl};
use pixpool_client::{upload, UploadArgs, MAX_BUSY_RETRIES};
use pixpool_testkit::{fresh_uploads, Server};

/// The repository's `test-data/`: a few photos, and licence texts that are
/// not images.
fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-data")
}

/// How many photos `test-data/` holds, counted by name (the client sniffs content;
/// the names there are honest).
fn test_data_photos() -> usize {
    std::fs::read_dir(test_data())
        .expect("read test-data")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            [".jpg", ".jpeg", ".png", ".gif", ".webp"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
        .count()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pixpool-client-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pixpool serve` (one front, two workers): the testkit's, so the
/// client meets exactly the server the other suites test.
fn start_server(envs: &[(&str, &str)]) -> Option<Server> {
    Some(Server::start_env(fresh_uploads(), 1, 2, &[], envs))
}

fn url(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// The number on the summary line that starts with `label`.
fn summary_count(text: &str, label: &str) -> usize {
    text.lines()
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix(label)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {label:?} line in the summary:\n{text}"))
}

fn args(server: &str, paths: Vec<PathBuf>) -> UploadArgs {
    let mut args = UploadArgs::new(server, paths);
    args.concurrency = 3;
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_test_data_then_finds_it_deduplicated() {
    let Some(server) = start_server(&[]) else {
        return;
    };
    let extra = TempDir::new("files");
    let readme = extra.0.join("README.md");
    std::fs::write(&readme, "# Not an image\n\nJust text.\n").expect("write README");
    let args = args(&url(&server), vec![test_data(), readme.clone()]);

    let photos = test_data_photos();
    assert!(photos >= 4, "test-data/ has {photos} photos");
    let first = upload(&args).await.expect("first run");
    let text = first.to_string();
    println!("{text}");
    let c = first.counts();
    assert_eq!(c.images, photos, "{text}");
    assert_eq!(
        (c.done, c.failed, c.refused, c.deduplicated),
        (photos, 0, 0, 0),
        "{text}"
    );
    assert!(
        first.skipped.iter().any(|s| s.path == readme),
        "the README is skipped: {:?}",
        first.skipped
    );
    assert_eq!(first.exit_code(), ExitCode::SUCCESS);
    assert_eq!(summary_count(&text, "done"), photos);
    assert_eq!(summary_count(&text, "failed"), 0);
    assert_eq!(summary_count(&text, "deduplicated"), 0);
    assert_eq!(summary_count(&text, "refused"), 0);
    assert_eq!(summary_count(&text, "skipped"), c.skipped);
    assert!(text.contains("images/s"), "{text}");
    assert!(!text.contains("failures:"), "{text}");

    let second = upload(&args).await.expect("second run");
    let text = second.to_string();
    println!("{text}");
    let c = second.counts();
    assert_eq!(
        (c.done, c.failed, c.refused, c.deduplicated),
        (photos, 0, 0, photos),
        "{text}"
    );
    assert_eq!(summary_count(&text, "deduplicated"), photos);
    assert_eq!(second.exit_code(), ExitCode::SUCCESS);

    // `run` prints the same and exits 0.
    let code = pixpool_client::run(args).await.expect("run");
    assert_eq!(code, ExitCode::SUCCESS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_are_passed_on() {
    let Some(server) = start_server(&[]) else {
        return;
    };
    let photo = test_data().join("06-grey-grayscale.jpg");
    let mut args = args(&url(&server), vec![photo]);
    args.presets = vec!["thumb".into(), "small".into()];
    let report = upload(&args).await.expect("run");
    let id = done_ids(&report).pop().expect("one job done");

    let mut conn = Connection::new(ServerUrl::parse(&url(&server)).expect("url"));
    let job = conn
        .get_json(&format!("/jobs/{id}"), None)
        .await
        .expect("job");
    assert_eq!(
        job["presets"],
        serde_json::json!(["thumb", "small"]),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_listed_and_make_the_exit_code_non_zero() {
    let Some(server) = start_server(&[]) else {
        return;
    };
    let dir = TempDir::new("broken");
    // A real JPEG cut short: its header is fine, its pixels are not there.
    let photo = std::fs::read(test_data().join("04-fallenleaf.jpg")).expect("read photo");
    let broken = dir.0.join("broken.jpg");
    std::fs::write(&broken, &photo[..20_000]).expect("write truncated JPEG");
    let good = dir.0.join("good.jpg");
    std::fs::write(&good, &photo).expect("copy photo");

    let args = args(&url(&server), vec![dir.0.clone()]);
    let report = upload(&args).await.expect("run");
    let text = report.to_string();
    println!("{text}");
    let c = report.counts();
    assert_eq!(c.images, 2, "{text}");
    assert_eq!(c.done, 1, "{text}");
    assert_eq!(c.failed + c.refused, 1, "{text}");
    assert_eq!(report.exit_code(), ExitCode::FAILURE);
    let failure = text
        .lines()
        .skip_while(|l| *l != "failures:")
        .find(|l| l.contains("broken.jpg"))
        .unwrap_or_else(|| panic!("broken.jpg listed under failures:\n{text}"));
    assert!(
        failure.contains("422"),
        "the problem's status is shown: {failure}"
    );

    // An unknown preset: the server refuses every upload with a 400.
    let mut args = args.clone();
    args.paths = vec![good];
    args.presets = vec!["no-such-preset".into()];
    let report = upload(&args).await.expect("run");
    let text = report.to_string();
    assert_eq!(report.counts().refused, 1, "{text}");
    assert!(text.contains("refused: 400"), "{text}");
    assert_eq!(
        pixpool_client::run(args).await.expect("run"),
        ExitCode::FAILURE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_as_a_bearer() {
    let Some(server) = start_server(&[("PIXPOOL_API_TOKENS", "s3cret-token-0123456789")]) else {
        return;
    };
    let photo = test_data().join("06-grey-grayscale.jpg");
    let mut args = args(&url(&server), vec![photo]);
    let report = upload(&args).await.expect("run");
    assert_eq!(report.counts().refused, 1, "{report}");
    assert!(report.to_string().contains("refused: 401"), "{report}");

    args.token = Some("s3cret-token-0123456789".parse().expect("token"));
    assert!(
        !format!("{args:?}").contains("s3cret"),
        "Debug hides the token"
    );
    let report = upload(&args).await.expect("run");
    assert_eq!(report.counts().done, 1, "{report}");
}

#[tokio::test]
async fn missing_paths_are_failures() {
    let args = args(
        "http://127.0.0.1:9",
        vec![PathBuf::from("/no/such/photo.jpg")],
    );
    let report = upload(&args)
        .await
        .expect("nothing to upload, no server needed");
    assert_eq!(report.counts().unreadable, 1);
    assert_eq!(report.exit_code(), ExitCode::FAILURE);
    assert!(report
        .to_string()
        .contains("/no/such/photo.jpg: unreadable"));
}

#[tokio::test]
async fn an_unreachable_server_is_one_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let args = args(&format!("http://127.0.0.1:{port}"), vec![test_data()]);
    let err = upload(&args).await.expect_err("no server");
    assert!(
        format!("{err:#}").contains("could not reach the pixpool server"),
        "{err:#}"
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_before_any_upload() {
    let mut a = args("https://127.0.0.1:1", vec![test_data()]);
    assert!(upload(&a).await.is_err(), "https is refused");
    a.server = "http://127.0.0.1:1".into();
    a.presets = vec!["thumb;rm".into()];
    assert!(
        upload(&a).await.is_err(),
        "a preset name with odd characters"
    );
}

// ---- a stand-in server for 503 / Retry-After ----

/// Answers `busy` uploads with 503 `Retry-After: retry_after`, then 202; any
/// job is done at once.
async fn stand_in(busy: u32, retry_after: &'static str) -> (String, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let uploads = Arc::new(AtomicU32::new(0));
    let count = uploads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let count = count.clone();
                    async move { Ok::<_, Infallible>(answer(req, &count, busy, retry_after).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), uploads)
}

async fn answer(
    req: Request<Incoming>,
    uploads: &AtomicU32,
    busy: u32,
    retry_after: &'static str,
) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: &str| {
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::POST, "/upload") => {
            // Read the whole upload, as the real server would.
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            assert!(
                body.is_ok_and(|b| b.starts_with(b"--pixpool-")),
                "a multipart body"
            );
            let n = uploads.fetch_add(1, Ordering::Relaxed);
            if n < busy {
                let mut resp = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"type":"urn:pixpool:problem:overloaded","title":"Overloaded","status":503,"detail":"every worker queue is full"}"#,
                );
                resp.headers_mut()
                    .insert("retry-after", retry_after.parse().expect("header"));
                resp
            } else {
                json(
                    StatusCode::ACCEPTED,
                    r#"{"id":"job-1","state":"queued","status_url":"/jobs/job-1","deduplicated":false}"#,
                )
            }
        }
        (&Method::GET, "/jobs/job-1") => {
            assert_eq!(req.uri().query(), Some("wait=30"));
            json(
                StatusCode::OK,
                r#"{"id":"job-1","state":"done","error":null}"#,
            )
        }
        _ => json(StatusCode::NOT_FOUND, "{}"),
    }
}

#[tokio::test]
async fn a_503_is_retried_after_the_delay_given() {
    let (url, uploads) = stand_in(2, "1").await;
    let photo = test_data().join("06-grey-grayscale.jpg");
    let started = Instant::now();
    let report = upload(&args(&url, vec![photo])).await.expect("run");
    assert_eq!(report.counts().done, 1, "{report}");
    assert_eq!(uploads.load(Ordering::Relaxed), 3, "two 503s, then 202");
    assert_eq!(report.busy_retries, 2);
    assert_eq!(summary_count(&report.to_string(), "503 retries"), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_stays_busy_refuses_after_bounded_retries() {
    let (url, uploads) = stand_in(u32::MAX, "0").await;
    let photo = test_data().join("06-grey-grayscale.jpg");
    let report = upload(&args(&url, vec![photo])).await.expect("run");
    let text = report.to_string();
    assert_eq!(report.counts().refused, 1, "{text}");
    assert_eq!(uploads.load(Ordering::Relaxed), MAX_BUSY_RETRIES + 1);
    assert!(
        text.contains(&format!(
            "503 Overloaded: every worker queue is full (after {MAX_BUSY_RETRIES} retries)"
        )),
        "{text}"
    );
    assert_eq!(report.exit_code(), ExitCode::FAILURE);
}

fn done_ids(report: &Report) -> Vec<String> {
    report
        .outcomes
        .iter()
        .filter_map(|o| match o {
            pixpool_client::report::Outcome::Done { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}
