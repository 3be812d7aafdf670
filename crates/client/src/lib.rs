//! Client tooling for a pixpool server: the bulk `pixpool upload` command.
//!
//! `pixpool upload PATHS…` walks files and directories, skips (with a one-line
//! note) every file that is not a JPEG, PNG, GIF or WebP by its first bytes,
//! streams the rest to `POST /upload` over a few keep-alive connections, follows
//! each job with `GET /jobs/<id>?wait=30` long-polls until it is `done` or
//! `failed`, and prints a summary. The exit code is non-zero when any image
//! failed or was refused, so a script can trust it.
//!
//! ```text
//! $ pixpool upload --presets thumb,medium photos/
//! skipping photos/README.md: not an image (JPEG, PNG, GIF or WebP)
//!  uploaded [========================================]    42/42       9s
//! processed [========================================]    42/42      10s 1 failed
//!
//! pixpool upload: 42 images
//!   done                41   processed, every variant ready
//!   failed               1   accepted, then the job failed
//!   deduplicated         3   already on the server (counted in done/failed)
//!   refused              0   at upload
//!   skipped              1   not an image
//!   total time     10.12 s
//!   images/s          4.15
//!
//! failures:
//!   photos/cut.jpg: failed (job 01a2…): 422 The image could not be processed: …
//! ```
//!
//! The binary wires [`UploadArgs`] in as a clap subcommand and calls [`run`]
//! inside a tokio runtime (time and I/O drivers enabled).
//!
//! # Layout
//! - [`files`]: walking the paths given and sniffing each file's magic bytes.
//! - [`server`]: the server's base URL and one keep-alive HTTP/1.1 connection.
//! - [`multipart`]: a `multipart/form-data` body streamed from a file on disk.
//! - [`job`]: one image's trip: upload (retrying 503s), then follow the job.
//! - [`progress`]: the two progress bars on stderr (hidden off a terminal).
//! - [`report`]: outcomes, the summary table and the exit code.
//! - this file: the command's arguments and the pipeline that joins them —
//!   `concurrency` upload tasks feed accepted jobs to `concurrency` follow tasks.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod files;
pub mod job;
pub mod multipart;
pub mod progress;
pub mod report;
pub mod server;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::files::Image;
use crate::job::{Accepted, Uploader};
use crate::progress::Progress;
use crate::report::{Outcome, Report};
use crate::server::{Connection, ServerUrl};

pub use crate::job::MAX_BUSY_RETRIES;

/// Upload images to a pixpool server and wait until every one is processed.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// The server's base URL (http only).
    #[arg(
        long,
        env = "PIXPOOL_SERVER",
        default_value = "http://127.0.0.1:3000",
        value_name = "URL"
    )]
    pub server: String,

    /// Presets to produce, comma-separated (default: every preset of the server).
    #[arg(long, value_delimiter = ',', value_name = "NAME,…")]
    pub presets: Vec<String>,

    /// How many uploads are in flight at once (and as many jobs followed at once).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = parse_concurrency)]
    pub concurrency: usize,

    /// Bearer token, for a server with `PIXPOOL_API_TOKENS` set. Prefer the
    /// environment variable: a command line is visible to every user.
    #[arg(long, env = "PIXPOOL_TOKEN", hide_env_values = true, value_name = "T")]
    pub token: Option<Token>,

    /// Image files and directories (walked recursively; other files are skipped).
    #[arg(required = true, value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
}

impl UploadArgs {
    /// Arguments for `paths` with every other setting at its default
    /// (`http://127.0.0.1:3000`, all presets, concurrency 4, no token).
    pub fn new(server: impl Into<String>, paths: Vec<PathBuf>) -> UploadArgs {
        UploadArgs {
            server: server.into(),
            presets: Vec::new(),
            concurrency: 4,
            token: None,
            paths,
        }
    }
}

/// The most uploads in flight that `--concurrency` accepts: each one holds a
/// connection and a front's attention, and the server has a few fronts.
const MAX_CONCURRENCY: usize = 256;

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_CONCURRENCY}")),
    }
}

/// A bearer token; its `Debug` never shows it, so logging the arguments is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into())
    }

    /// The `Authorization` header's value: `Bearer <token>`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Token, String> {
        if s.is_empty() || s.bytes().any(|b| b.is_ascii_control()) {
            return Err("a token must be non-empty, without control characters".into());
        }
        Ok(Token(s.to_string()))
    }
}

/// Runs `pixpool upload`: uploads, waits, prints the summary on stdout.
/// `ExitCode::FAILURE` when an image failed, was refused or could not be read;
/// an `Err` only when nothing could be attempted (bad URL, server unreachable).
pub async fn run(args: UploadArgs) -> anyhow::Result<ExitCode> {
    let report = upload(&args).await?;
    print!("{report}");
    Ok(report.exit_code())
}

/// Does the work of [`run`] and returns the [`Report`] instead of printing it.
/// Notes about skipped files, and the progress bars, go to stderr.
pub async fn upload(args: &UploadArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let url = ServerUrl::parse(&args.server)?;
    let presets = validate_presets(&args.presets)?;

    let paths = args.paths.clone();
    let walk = tokio::task::spawn_blocking(move || files::walk(&paths))
        .await
        .context("the file walk panicked")?;
    for skipped in &walk.skipped {
        eprintln!("skipping {}: {}", skipped.path.display(), skipped.reason);
    }
    for (path, err) in &walk.unreadable {
        eprintln!("cannot read {}: {err}", path.display());
    }

    let (outcomes, busy_retries) = if walk.images.is_empty() {
        (Vec::new(), 0)
    } else {
        // One cheap request first, so an unreachable server is one clear error
        // rather than one refusal per image. Any answer will do (a proxy in
        // front may not route /health): only getting none is fatal.
        let mut probe = Connection::new(url.clone());
        match probe.get_json("/health", None).await {
            Ok(_) | Err(server::ServerError::Status { .. }) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("could not reach the pixpool server at {url}")))
            }
        }
        let uploader = Arc::new(Uploader::new(url, presets, args.token.clone()));
        let outcomes = pipeline(uploader.clone(), &walk.images, args.concurrency).await?;
        (outcomes, uploader.busy_retries())
    };

    Ok(Report {
        images: walk.images,
        outcomes,
        skipped: walk.skipped,
        unreadable: walk.unreadable,
        busy_retries,
        elapsed: started.elapsed(),
    })
}

/// Checks preset names locally so a typo is one error, not one 400 per image.
fn validate_presets(presets: &[String]) -> anyhow::Result<Option<String>> {
    let names: Vec<&str> = presets.iter().map(|p| p.trim()).collect();
    if names.is_empty() {
        return Ok(None);
    }
    for name in &names {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "invalid preset name {name:?} (letters, digits, '-' and '_' only)"
        );
    }
    Ok(Some(names.join(",")))
}

/// Uploads every image with `concurrency` tasks (one keep-alive connection
/// each) and follows the accepted jobs with as many more; returns one outcome
/// per image, in the order of `images`.
async fn pipeline(
    uploader: Arc<Uploader>,
    images: &[Image],
    concurrency: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let images: Arc<[Image]> = images.into();
    let progress = Progress::new(images.len() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    // Unbounded is fine: at most one entry per image, and each is small.
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel::<(usize, Accepted)>();
    let accepted_rx = Arc::new(Mutex::new(accepted_rx));

    let mut tasks: JoinSet<Vec<(usize, Outcome)>> = JoinSet::new();
    for _ in 0..concurrency.min(images.len()) {
        let (images, uploader, next, tx, progress) = (
            images.clone(),
            uploader.clone(),
            next.clone(),
            accepted_tx.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let mut conn = Connection::new(uploader.url.clone());
            let mut finished = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(image) = images.get(i) else { break };
                match uploader.upload(&mut conn, image, &progress).await {
                    Ok(accepted) => {
                        progress.uploaded();
                        if let Some(outcome) = accepted.final_outcome() {
                            progress.processed(&outcome);
                            finished.push((i, outcome));
                        } else if tx.send((i, accepted)).is_err() {
                            break; // the followers are gone: the run is being torn down
                        }
                    }
                    Err(problem) => {
                        progress.refused(&image.path, &problem);
                        finished.push((i, Outcome::Refused { problem }));
                    }
                }
            }
            finished
        });
    }
    // The followers stop once every upload task has dropped its sender.
    drop(accepted_tx);
    for _ in 0..concurrency.min(images.len()) {
        let (uploader, rx, progress) = (uploader.clone(), accepted_rx.clone(), progress.clone());
        tasks.spawn(async move {
            let mut conn = Connection::new(uploader.url.clone());
            let mut finished = Vec::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, accepted)) = next else { break };
                let outcome = uploader.follow(&mut conn, accepted).await;
                progress.processed(&outcome);
                finished.push((i, outcome));
            }
            finished
        });
    }

    let mut outcomes: Vec<Option<Outcome>> = vec![None; images.len()];
    while let Some(done) = tasks.join_next().await {
        for (i, outcome) in done.context("an upload task panicked")? {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(outcome);
            }
        }
    }
    progress.finish();
    outcomes
        .into_iter()
        .map(|o| o.context("an image was neither uploaded nor refused"))
        .collect()
}
