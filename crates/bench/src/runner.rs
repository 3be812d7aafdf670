//! One run: start a server, warm it up, upload the burst while sampling, wait until
//! every job is finished, optionally time each photo alone, stop the server.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::corpus::{self, Corpus};
use crate::http::{self, Conn, ConnPool, FilePart, BOUNDARY};
use crate::outputs::OutputWatch;
use crate::sample::{CpuUse, HealthProber, ResourceSampler, RssPeaks};
use crate::server::{Launch, PeerStats, Server, ServerKind};
use crate::stats::Dist;

/// Every upload, to both servers: only the `medium` preset (800 px wide, JPEG q80),
/// the peer's one and only output. The peer ignores the query string.
pub const UPLOAD_PATH: &str = "/upload?presets=medium";

/// The preset asked for, and the width it may not exceed.
const PRESET: &str = "medium";
const PRESET_WIDTH: u64 = 800;

/// An upload not answered within this is an error.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// A 503 (every worker queue full) is retried after its `Retry-After`, capped here so
/// that a retry is not late by whole seconds.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Attempts per upload (503s and dropped connections), the first included.
const MAX_ATTEMPTS: u32 = 50;

/// pixpool's long-poll: `?wait=` seconds, and the client's own limit on one poll.
const LONG_POLL_SECS: u32 = 30;
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(40);

/// A job is given up (and counted as not done) after this many failed polls in a
/// row: the server is gone.
const MAX_POLL_FAILURES: u32 = 30;

/// The peer's `/stats` is polled this often while outputs are still missing.
const STATS_POLL: Duration = Duration::from_millis(100);

/// Once every output file is closed, `/stats` is polled this often until the master
/// has counted them all.
const STATS_POLL_FAST: Duration = Duration::from_millis(2);

/// How one run is made.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Corpus uploads per run.
    pub rounds: u32,
    /// Uploaders, one connection each.
    pub concurrency: u32,
    /// Unmeasured uploads before the burst.
    pub warmup: u32,
    /// Sampling period of `/health` and RSS.
    pub sample_every: Duration,
    /// Limit on waiting for a run's jobs.
    pub job_timeout: Duration,
    /// Time every photo alone after the burst.
    pub per_image: bool,
}

/// One upload of the burst, as observed.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// The photo's file name.
    pub photo: String,
    /// Round (0-based).
    pub round: u32,
    /// Upload start → 202, if accepted.
    pub accept_ms: Option<f64>,
    /// Upload start → observed finished, if it was.
    pub ttp_ms: Option<f64>,
    /// `done`, or what went wrong.
    pub state: String,
}

/// One photo uploaded alone (`--per-image`).
#[derive(Debug, Clone, Serialize)]
pub struct SoloRecord {
    /// The photo's file name.
    pub photo: String,
    /// Upload start → 202.
    pub accept_ms: Option<f64>,
    /// Upload start → observed finished.
    pub ttp_ms: Option<f64>,
    /// `done`, or what went wrong.
    pub state: String,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Which server.
    pub server: ServerKind,
    /// Repetition (1-based).
    pub rep: u32,
    /// 1 if this server went first in its repetition, 2 if second.
    pub position: usize,
    /// Uploads sent in the burst.
    pub uploads: usize,
    /// Of which answered 202.
    pub accepted: usize,
    /// 503s retried.
    pub retries_503: usize,
    /// Jobs finished `done`.
    pub done: usize,
    /// First upload start → last job finished, seconds.
    pub wall_s: f64,
    /// `done / wall_s`.
    pub images_per_s: f64,
    /// 202 latency.
    pub accept_ms: Dist,
    /// Time-to-processed of the jobs that ended done.
    pub ttp_ms: Dist,
    /// `/health` latency during the burst.
    pub health_ms: Dist,
    /// `/health` probes that failed or timed out.
    pub health_errors: usize,
    /// Peak RSS per role during the burst.
    pub rss: RssPeaks,
    /// CPU time during the burst: the server's, this benchmark's, everyone else's.
    pub cpu: CpuUse,
    /// Why this run does not count (empty = valid).
    pub problems: Vec<String>,
    /// Each upload of the burst.
    pub jobs: Vec<JobRecord>,
    /// Each photo alone (`--per-image`).
    pub solo: Vec<SoloRecord>,
    /// CPU time during the per-image pass (`--per-image`).
    pub solo_cpu: Option<CpuUse>,
}

impl RunResult {
    /// Every upload accepted and every job done.
    pub fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Starts `kind`, measures it as the plan says, stops it.
pub async fn run_once(
    kind: ServerKind,
    launch: &Launch,
    plan: &Plan,
    corpus: &Arc<Corpus>,
    rep: u32,
    position: usize,
) -> anyhow::Result<RunResult> {
    let tag = format!("{rep}-{}", kind.name());
    let mut server = Server::start(kind, launch, &tag)
        .await
        .with_context(|| format!("could not start {}", kind.name()))?;
    let mut tracker = Tracker::new(&server)?;
    warm_up(&server, &mut tracker, corpus, plan, &tag)
        .await
        .with_context(|| format!("{} failed its warm-up", kind.name()))?;
    let mut result = burst(&server, &mut tracker, corpus, plan, &tag, rep, position)
        .await
        .with_context(|| {
            format!(
                "the burst on {} failed; its last output:\n{}",
                kind.name(),
                server.log_tail()
            )
        })?;
    if plan.per_image {
        // Sampled too, for its "others' CPU" (noise) figure.
        let sampler = ResourceSampler::start(kind, server.pid, plan.sample_every)?;
        result.solo = solo(&server, &mut tracker, corpus, plan, &tag)
            .await
            .with_context(|| format!("the per-image pass on {} failed", kind.name()))?;
        result.solo_cpu = Some(sampler.finish()?.cpu);
        let bad = result.solo.iter().filter(|s| s.state != "done").count();
        if bad > 0 {
            result
                .problems
                .push(format!("{bad} per-image upload(s) did not end done"));
        }
    }
    if !result.valid() {
        eprintln!(
            "pixpool-bench: {} rep {rep} had problems; its last output:\n{}",
            kind.name(),
            server.log_tail()
        );
    }
    drop(tracker);
    server.stop();
    Ok(result)
}

/// How jobs are followed to the end on each server.
enum Tracker {
    /// Long-polls on pooled connections.
    Pixpool { pool: ConnPool },
    /// Output files closed, plus `/stats`.
    Peer {
        watch: OutputWatch,
        /// 202s received from this server so far (its `accepted` must reach it).
        accepted_total: u64,
        /// The counters after the previous phase.
        baseline: PeerStats,
    },
}

impl Tracker {
    fn new(server: &Server) -> anyhow::Result<Tracker> {
        Ok(match server.kind {
            ServerKind::Peer => Tracker::Peer {
                watch: OutputWatch::start(&peer_outputs(server.uploads())?)?,
                accepted_total: 0,
                baseline: PeerStats::default(),
            },
            _ => Tracker::Pixpool {
                pool: ConnPool::new(server.addr),
            },
        })
    }
}

/// The peer's outputs directory under its `uploads`. The peer keeps them where pixpool
/// does (its `config.processedDir`), and pixpool-store alone names pixpool's layout; so
/// the name is asked of the store, and checked against the directories the peer made
/// at start-up: were the store to rename it, the watch would otherwise wait on an empty
/// directory until the job timeout.
fn peer_outputs(uploads: &Path) -> anyhow::Result<PathBuf> {
    let made_by_peer: Vec<OsString> = std::fs::read_dir(uploads)
        .with_context(|| format!("could not list {}", uploads.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .collect();
    // Opening also creates pixpool's other (empty) directories: the peer ignores them.
    let outputs = pixpool_store::Store::open(uploads, None)
        .context("could not ask pixpool-store for its outputs directory")?
        .processed_dir();
    anyhow::ensure!(
        outputs
            .file_name()
            .is_some_and(|name| made_by_peer.iter().any(|m| m == name)),
        "the peer made no {} (it made {made_by_peer:?}): its outputs are no longer where pixpool-store keeps pixpool's",
        outputs.display()
    );
    Ok(outputs)
}

/// A 202.
#[derive(Debug, Clone)]
struct Accepted {
    /// Index into the phase's list of uploads.
    index: usize,
    id: String,
    start: Instant,
    accepted: Instant,
}

/// What the uploaders met besides 202s.
#[derive(Debug, Default)]
struct UploadTally {
    /// `(index, error)` of uploads that got no 202.
    errors: Vec<(usize, String)>,
    retries_503: usize,
}

/// How a job ended, as observed.
#[derive(Debug, Clone)]
struct Finish {
    at: Option<Instant>,
    state: String,
}

/// One upload to make: which photo, and its unique trailer.
#[derive(Debug, Clone)]
struct Item {
    photo: usize,
    round: u32,
    tag: String,
}

impl Item {
    fn body(&self, corpus: &Corpus) -> Bytes {
        let photo = &corpus.photos[self.photo];
        let trailer = corpus::trailer(&self.tag);
        Bytes::from(http::multipart_body(
            BOUNDARY,
            &FilePart {
                field: "image",
                file_name: &photo.name,
                content_type: photo.content_type,
                data: &photo.bytes,
                trailer: &trailer,
            },
        ))
    }
}

async fn warm_up(
    server: &Server,
    tracker: &mut Tracker,
    corpus: &Arc<Corpus>,
    plan: &Plan,
    tag: &str,
) -> anyhow::Result<()> {
    let n = corpus.photos.len();
    let items: Vec<Item> = (0..plan.warmup as usize)
        .map(|i| Item {
            photo: i % n,
            round: 0,
            tag: format!("{tag}-warmup-{i}"),
        })
        .collect();
    let mut conn = None;
    let mut tally = UploadTally::default();
    let mut accepted = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match upload(&mut conn, server.addr, item.body(corpus), &mut tally).await {
            Ok((id, start, at)) => accepted.push(Accepted {
                index,
                id,
                start,
                accepted: at,
            }),
            Err(err) => bail!("warm-up upload {index}: {err}"),
        }
    }
    let deadline = Instant::now() + plan.job_timeout;
    let (finishes, _) = finish_all(server, tracker, &accepted, deadline).await?;
    for (i, f) in finishes.iter().enumerate() {
        anyhow::ensure!(f.state == "done", "warm-up job {i} ended {}", f.state);
    }
    Ok(())
}

async fn burst(
    server: &Server,
    tracker: &mut Tracker,
    corpus: &Arc<Corpus>,
    plan: &Plan,
    tag: &str,
    rep: u32,
    position: usize,
) -> anyhow::Result<RunResult> {
    let items: Arc<Vec<Item>> = Arc::new(
        (0..plan.rounds)
            .flat_map(|round| (0..corpus.photos.len()).map(move |photo| (round, photo)))
            .enumerate()
            .map(|(n, (round, photo))| Item {
                photo,
                round,
                tag: format!("{tag}-{round}-{n}"),
            })
            .collect(),
    );
    // Connections first: the clock starts with every uploader connected.
    let mut conns = Vec::new();
    for _ in 0..plan.concurrency {
        conns.push(Conn::open(server.addr).await?);
    }
    let resources = ResourceSampler::start(server.kind, server.pid, plan.sample_every)?;
    let health = HealthProber::start(server.addr, plan.sample_every)?;

    let t0 = Instant::now();
    let cursor = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut uploaders = JoinSet::new();
    for conn in conns {
        uploaders.spawn(uploader(
            conn,
            corpus.clone(),
            items.clone(),
            cursor.clone(),
            tx.clone(),
        ));
    }
    drop(tx);
    let deadline = t0 + plan.job_timeout;
    // pixpool: each 202 starts its long-poll at once.
    let mut waiters = JoinSet::new();
    let mut accepted = Vec::new();
    while let Some(acc) = rx.recv().await {
        if let Tracker::Pixpool { pool } = tracker {
            let (pool, id, index) = (pool.clone(), acc.id.clone(), acc.index);
            waiters.spawn(async move { (index, wait_job(&pool, &id, deadline).await) });
        }
        accepted.push(acc);
    }
    let mut tally = UploadTally::default();
    while let Some(done) = uploaders.join_next().await {
        let t = done.context("an uploader task failed")?;
        tally.errors.extend(t.errors);
        tally.retries_503 += t.retries_503;
    }

    let mut finishes: HashMap<usize, Finish> = HashMap::new();
    let mut problems = Vec::new();
    let t_end = match tracker {
        Tracker::Pixpool { .. } => {
            while let Some(done) = waiters.join_next().await {
                let (index, finish) = done.context("a job waiter task failed")?;
                finishes.insert(index, finish);
            }
            finishes.values().filter_map(|f| f.at).max()
        }
        Tracker::Peer { .. } => {
            let (per_job, end) = finish_all(server, tracker, &accepted, deadline).await?;
            for (acc, finish) in accepted.iter().zip(per_job) {
                finishes.insert(acc.index, finish);
            }
            if let Some(failed) = end.failed {
                problems.push(format!("{failed} job(s) failed (peer /stats)"));
            }
            Some(end.at)
        }
    };
    let health_samples = health.finish().await?;
    let resources = resources.finish()?;

    let t_first = accepted.iter().map(|a| a.start).min().unwrap_or(t0);
    let t_end = t_end.unwrap_or_else(Instant::now);
    let wall = t_end.saturating_duration_since(t_first);

    let errors: HashMap<usize, String> = tally.errors.into_iter().collect();
    let by_index: HashMap<usize, &Accepted> = accepted.iter().map(|a| (a.index, a)).collect();
    let mut jobs = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let acc = by_index.get(&index);
        let finish = finishes.get(&index);
        let state = match (acc, finish) {
            (Some(_), Some(f)) => f.state.clone(),
            (Some(_), None) => "not observed".to_string(),
            (None, _) => errors
                .get(&index)
                .cloned()
                .unwrap_or_else(|| "not sent".into()),
        };
        jobs.push(JobRecord {
            photo: corpus.photos[item.photo].name.clone(),
            round: item.round,
            accept_ms: acc.map(|a| ms(a.accepted - a.start)),
            ttp_ms: acc.and_then(|a| finish.and_then(|f| f.at).map(|at| ms(at - a.start))),
            state,
        });
    }
    let done = jobs.iter().filter(|j| j.state == "done").count();
    let not_accepted = items.len() - accepted.len();
    if not_accepted > 0 {
        let first = errors.values().next().cloned().unwrap_or_default();
        problems.push(format!(
            "{not_accepted} upload(s) got no 202 (first: {first})"
        ));
    }
    let not_done: Vec<&JobRecord> = jobs
        .iter()
        .filter(|j| j.accept_ms.is_some() && j.state != "done")
        .collect();
    if let Some(first) = not_done.first() {
        problems.push(format!(
            "{} accepted job(s) did not end done (first: {} round {}: {})",
            not_done.len(),
            first.photo,
            first.round,
            first.state
        ));
    }
    let accept: Vec<f64> = jobs.iter().filter_map(|j| j.accept_ms).collect();
    // Time-to-processed of the jobs that were processed: a failure is not a result.
    let ttp: Vec<f64> = jobs
        .iter()
        .filter(|j| j.state == "done")
        .filter_map(|j| j.ttp_ms)
        .collect();
    let in_window: Vec<_> = health_samples
        .iter()
        .filter(|s| s.at >= t_first && s.at <= t_end)
        .collect();
    let health_ms: Vec<f64> = in_window.iter().map(|s| ms(s.latency)).collect();
    let wall_s = wall.as_secs_f64();
    Ok(RunResult {
        server: server.kind,
        rep,
        position,
        uploads: items.len(),
        accepted: accepted.len(),
        retries_503: tally.retries_503,
        done,
        wall_s,
        images_per_s: if wall_s > 0.0 {
            done as f64 / wall_s
        } else {
            0.0
        },
        accept_ms: Dist::of(&accept),
        ttp_ms: Dist::of(&ttp),
        health_ms: Dist::of(&health_ms),
        health_errors: in_window.iter().filter(|s| !s.ok).count(),
        rss: resources.rss,
        cpu: resources.cpu,
        problems,
        jobs,
        solo: Vec::new(),
        solo_cpu: None,
    })
}

/// What a batch of uploads came to.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Uploads sent.
    pub uploads: usize,
    /// Jobs that ended done.
    pub done: usize,
    /// What went wrong, if anything: uploads without a 202, jobs not done.
    pub problems: Vec<String>,
}

/// Uploads `count` photos (the corpus in order, over again as needed, each with its
/// unique trailer) over `concurrency` connections, and waits until every job is
/// finished. Not measured: for passes that count what the server does, not how fast.
pub async fn upload_batch(
    server: &Server,
    corpus: &Arc<Corpus>,
    count: usize,
    concurrency: u32,
    tag: &str,
    timeout: Duration,
) -> anyhow::Result<Batch> {
    let n = corpus.photos.len();
    anyhow::ensure!(n > 0, "the corpus has no photos");
    let items: Arc<Vec<Item>> = Arc::new(
        (0..count)
            .map(|i| Item {
                photo: i % n,
                round: u32::try_from(i / n).unwrap_or(u32::MAX),
                tag: format!("{tag}-{i}"),
            })
            .collect(),
    );
    let mut tracker = Tracker::new(server)?;
    let deadline = Instant::now() + timeout;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut uploaders = JoinSet::new();
    for _ in 0..count.min(concurrency as usize) {
        uploaders.spawn(uploader(
            Conn::open(server.addr).await?,
            corpus.clone(),
            items.clone(),
            cursor.clone(),
            tx.clone(),
        ));
    }
    drop(tx);
    let mut accepted = Vec::new();
    while let Some(acc) = rx.recv().await {
        accepted.push(acc);
    }
    let mut errors = Vec::new();
    while let Some(done) = uploaders.join_next().await {
        errors.extend(done.context("an uploader task failed")?.errors);
    }
    let (finishes, end) = finish_all(server, &mut tracker, &accepted, deadline).await?;
    let mut problems = Vec::new();
    if let Some((_, first)) = errors.first() {
        problems.push(format!(
            "{} upload(s) got no 202 (first: {first})",
            errors.len()
        ));
    }
    let not_done: Vec<&Finish> = finishes.iter().filter(|f| f.state != "done").collect();
    if let Some(first) = not_done.first() {
        problems.push(format!(
            "{} job(s) did not end done (first: {})",
            not_done.len(),
            first.state
        ));
    }
    if let Some(failed) = end.failed {
        problems.push(format!("{failed} job(s) failed (peer /stats)"));
    }
    Ok(Batch {
        uploads: count,
        done: finishes.len() - not_done.len(),
        problems,
    })
}

/// Each photo alone: upload, wait until finished, next.
async fn solo(
    server: &Server,
    tracker: &mut Tracker,
    corpus: &Arc<Corpus>,
    plan: &Plan,
    tag: &str,
) -> anyhow::Result<Vec<SoloRecord>> {
    let mut conn = None;
    let mut records = Vec::new();
    let mut tally = UploadTally::default();
    for (index, photo) in corpus.photos.iter().enumerate() {
        let item = Item {
            photo: index,
            round: 0,
            tag: format!("{tag}-solo-{index}"),
        };
        let deadline = Instant::now() + plan.job_timeout;
        let record = match upload(&mut conn, server.addr, item.body(corpus), &mut tally).await {
            Err(err) => SoloRecord {
                photo: photo.name.clone(),
                accept_ms: None,
                ttp_ms: None,
                state: err,
            },
            Ok((id, start, at)) => {
                let finish = match tracker {
                    Tracker::Pixpool { pool } => wait_job(pool, &id, deadline).await,
                    Tracker::Peer {
                        watch,
                        accepted_total,
                        ..
                    } => {
                        *accepted_total += 1;
                        peer_solo_finish(server.addr, watch, &id, *accepted_total, deadline).await
                    }
                };
                SoloRecord {
                    photo: photo.name.clone(),
                    accept_ms: Some(ms(at - start)),
                    ttp_ms: finish.at.map(|f| ms(f - start)),
                    state: finish.state,
                }
            }
        };
        records.push(record);
    }
    // Let the peer's counters settle (its failures are in the records' states).
    if let Tracker::Peer { .. } = tracker {
        peer_settle(server.addr, tracker, &[], Instant::now() + plan.job_timeout).await?;
    }
    Ok(records)
}

/// Waits for every job of `accepted` (their uploads' order); returns how each ended
/// and, for the peer, when `/stats` showed them all finished.
async fn finish_all(
    server: &Server,
    tracker: &mut Tracker,
    accepted: &[Accepted],
    deadline: Instant,
) -> anyhow::Result<(Vec<Finish>, PeerEnd)> {
    match tracker {
        Tracker::Pixpool { pool } => {
            let mut waiters = JoinSet::new();
            for (i, acc) in accepted.iter().enumerate() {
                let (pool, id) = (pool.clone(), acc.id.clone());
                waiters.spawn(async move { (i, wait_job(&pool, &id, deadline).await) });
            }
            let mut out = vec![
                Finish {
                    at: None,
                    state: "not observed".into()
                };
                accepted.len()
            ];
            while let Some(done) = waiters.join_next().await {
                let (i, finish) = done.context("a job waiter task failed")?;
                out[i] = finish;
            }
            Ok((
                out,
                PeerEnd {
                    at: Instant::now(),
                    failed: None,
                },
            ))
        }
        Tracker::Peer { accepted_total, .. } => {
            *accepted_total += accepted.len() as u64;
            let names: Vec<String> = accepted.iter().map(|a| output_name(&a.id)).collect();
            let end = peer_settle(server.addr, tracker, &names, deadline).await?;
            let Tracker::Peer { watch, .. } = &*tracker else {
                bail!("the tracker changed kind");
            };
            let rewritten = names
                .iter()
                .filter(|n| watch.closed(n).is_some_and(|c| c.count > 1))
                .count();
            if rewritten > 0 {
                // The last close is used; say so, since it should not happen.
                eprintln!("pixpool-bench: note: {rewritten} peer output(s) were closed after writing more than once");
            }
            let finishes = names
                .iter()
                .map(|name| match watch.closed(name) {
                    Some(closed) => Finish {
                        at: Some(closed.last),
                        state: "done".into(),
                    },
                    // Failed (counted by /stats) or its file was never closed.
                    None => Finish {
                        at: None,
                        state: "no output".into(),
                    },
                })
                .collect();
            Ok((finishes, end))
        }
    }
}

/// The peer's end of a phase.
#[derive(Debug, Clone, Copy)]
struct PeerEnd {
    /// When `/stats` first showed every accepted job finished.
    at: Instant,
    /// Jobs counted failed during the phase, if any.
    failed: Option<u64>,
}

/// Polls the peer's `/stats` until `accepted` = every 202 received and `pending` = 0
/// (at once and then every [`STATS_POLL_FAST`] once all `names` are closed,
/// every [`STATS_POLL`] before); moves the tracker's baseline to the new counters.
async fn peer_settle(
    addr: SocketAddr,
    tracker: &mut Tracker,
    names: &[String],
    deadline: Instant,
) -> anyhow::Result<PeerEnd> {
    let Tracker::Peer {
        watch,
        accepted_total,
        baseline,
    } = tracker
    else {
        bail!("not the peer");
    };
    let mut conn = None;
    let mut changes = watch.subscribe();
    let mut last_poll: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        let all_closed = watch.count(names) == names.len();
        if all_closed || last_poll.is_none_or(|t| t.elapsed() >= STATS_POLL) {
            let stats = peer_stats(&mut conn, addr).await?;
            let now = Instant::now();
            last_poll = Some(now);
            if stats.accepted >= *accepted_total && stats.pending == 0 {
                let failed = stats.failed.saturating_sub(baseline.failed);
                *baseline = stats;
                return Ok(PeerEnd {
                    at: now,
                    failed: (failed > 0).then_some(failed),
                });
            }
            if now >= deadline {
                bail!(
                    "jobs still pending at the deadline: {stats:?}, {} of {} outputs closed",
                    watch.count(names),
                    names.len()
                );
            }
            if all_closed {
                tokio::time::sleep(STATS_POLL_FAST).await;
                continue;
            }
        }
        let next = last_poll.map_or_else(Instant::now, |t| t + STATS_POLL);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// One `GET /stats` (reconnecting once if the keep-alive connection was dropped).
async fn peer_stats(conn: &mut Option<Conn>, addr: SocketAddr) -> anyhow::Result<PeerStats> {
    let mut last_err = None;
    for _ in 0..3 {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Conn::open(addr).await?),
        };
        match c.get("/stats").await {
            Ok(resp) if resp.status == StatusCode::OK => {
                return resp.parse().context("/stats is not the expected JSON")
            }
            // 504: the master did not answer the web worker within 2 s: ask again.
            Ok(resp) => last_err = Some(anyhow::anyhow!("/stats answered {}", resp.status)),
            Err(err) => {
                *conn = None;
                last_err = Some(err.into());
            }
        }
    }
    Err(last_err
        .unwrap_or_else(|| anyhow::anyhow!("/stats failed"))
        .context("could not read the peer's /stats"))
}

/// The peer's output file name for job `id`.
fn output_name(id: &str) -> String {
    format!("{id}.jpg")
}

/// Waits for the peer's one job in flight, `id`: done when its output is closed;
/// failed when `/stats` shows nothing pending (every one of `accepted_total` counted)
/// and still no output.
async fn peer_solo_finish(
    addr: SocketAddr,
    watch: &OutputWatch,
    id: &str,
    accepted_total: u64,
    deadline: Instant,
) -> Finish {
    let name = output_name(id);
    let mut conn = None;
    loop {
        let until = (Instant::now() + STATS_POLL).min(deadline);
        if let Some(closed) = watch.wait_for(&name, until).await {
            return Finish {
                at: Some(closed.last),
                state: "done".into(),
            };
        }
        if Instant::now() >= deadline {
            return Finish {
                at: None,
                state: "no output before the deadline".into(),
            };
        }
        match peer_stats(&mut conn, addr).await {
            Ok(stats) if stats.accepted >= accepted_total && stats.pending == 0 => {
                // Counted finished: one last look, since the count follows the close.
                return match watch.closed(&name) {
                    Some(closed) => Finish {
                        at: Some(closed.last),
                        state: "done".into(),
                    },
                    None => Finish {
                        at: None,
                        state: "failed (peer /stats)".into(),
                    },
                };
            }
            Ok(_) => {}
            Err(err) => {
                return Finish {
                    at: None,
                    state: format!("{err:#}"),
                }
            }
        }
    }
}

/// Follows pixpool job `id` with long-polls until it is `done` or `failed`.
async fn wait_job(pool: &ConnPool, id: &str, deadline: Instant) -> Finish {
    let path = format!("/jobs/{id}?wait={LONG_POLL_SECS}");
    let mut failures = 0;
    loop {
        if Instant::now() >= deadline {
            return Finish {
                at: None,
                state: "not finished before the deadline".into(),
            };
        }
        if failures >= MAX_POLL_FAILURES {
            return Finish {
                at: None,
                state: format!("GET /jobs failed {failures} times in a row"),
            };
        }
        let Ok(mut conn) = pool.take().await else {
            failures += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(Ok(resp)) = tokio::time::timeout(LONG_POLL_TIMEOUT, conn.get(&path)).await else {
            // Dropped or stuck connection: poll again on another.
            failures += 1;
            continue;
        };
        failures = 0;
        let at = Instant::now();
        pool.give_back(conn).await;
        if resp.status != StatusCode::OK {
            return Finish {
                at: None,
                state: format!("GET /jobs answered {}", resp.status),
            };
        }
        let job: serde_json::Value = match resp.parse() {
            Ok(job) => job,
            Err(err) => {
                return Finish {
                    at: None,
                    state: format!("{err:#}"),
                }
            }
        };
        match job["state"].as_str() {
            Some("done") => {
                let state = if has_preset_output(&job) {
                    "done".to_string()
                } else {
                    format!("done without a {PRESET} output of at most {PRESET_WIDTH} px")
                };
                return Finish {
                    at: Some(at),
                    state,
                };
            }
            Some("failed") => {
                let why = job["error"]["detail"]
                    .as_str()
                    .or_else(|| job["error"]["title"].as_str())
                    .unwrap_or("no detail");
                return Finish {
                    at: Some(at),
                    state: format!("failed: {why}"),
                };
            }
            _ => {}
        }
    }
}

/// The job has the preset's output, at most the preset's width.
fn has_preset_output(job: &serde_json::Value) -> bool {
    job["outputs"].as_array().is_some_and(|outputs| {
        outputs.iter().any(|o| {
            o["preset"] == PRESET
                && o["width"]
                    .as_u64()
                    .is_some_and(|w| (1..=PRESET_WIDTH).contains(&w))
        })
    })
}

/// Takes uploads off the shared queue until it is empty; reports each 202 at once.
async fn uploader(
    conn: Conn,
    corpus: Arc<Corpus>,
    items: Arc<Vec<Item>>,
    cursor: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Accepted>,
) -> UploadTally {
    let addr = conn.addr();
    let mut conn = Some(conn);
    let mut tally = UploadTally::default();
    loop {
        let index = cursor.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(index) else {
            return tally;
        };
        let body = item.body(&corpus);
        match upload(&mut conn, addr, body, &mut tally).await {
            Ok((id, start, accepted)) => {
                let _ = tx.send(Accepted {
                    index,
                    id,
                    start,
                    accepted,
                });
            }
            Err(err) => tally.errors.push((index, err)),
        }
    }
}

/// Sends one upload (reconnecting and retrying 503s); on a 202 returns the job id,
/// when the request started and when the 202 arrived.
async fn upload(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    body: Bytes,
    tally: &mut UploadTally,
) -> Result<(String, Instant, Instant), String> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let c = match conn {
            Some(c) => c,
            None => match Conn::open(addr).await {
                Ok(c) => conn.insert(c),
                Err(_) if attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(err) => return Err(format!("{err:#}")),
            },
        };
        let req =
            http::upload_request(addr, UPLOAD_PATH, body.clone()).map_err(|e| format!("{e:#}"))?;
        let resp = match tokio::time::timeout(UPLOAD_TIMEOUT, c.send(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => {
                *conn = None;
                if attempt < 3 {
                    continue;
                }
                return Err(format!("{err:#}"));
            }
            Err(_) => {
                *conn = None;
                return Err(format!("no answer within {UPLOAD_TIMEOUT:?}"));
            }
        };
        let answered = Instant::now();
        if resp.status == StatusCode::ACCEPTED {
            let body: serde_json::Value = resp.parse().map_err(|e| format!("{e:#}"))?;
            if body["deduplicated"].as_bool() == Some(true) {
                return Err("202 deduplicated: the upload's bytes were not unique".into());
            }
            let id = body["id"]
                .as_str()
                .ok_or_else(|| format!("202 without an id: {}", resp.body_snippet()))?;
            return Ok((id.to_string(), start, answered));
        }
        if resp.status == StatusCode::SERVICE_UNAVAILABLE && attempt < MAX_ATTEMPTS {
            tally.retries_503 += 1;
            let wait = resp
                .header("retry-after")
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(Duration::from_millis(100), Duration::from_secs_f64)
                .min(MAX_RETRY_AFTER);
            tokio::time::sleep(wait).await;
            continue;
        }
        return Err(format!("HTTP {}: {}", resp.status, resp.body_snippet()));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_output_check() {
        let job = serde_json::json!({"state": "done", "outputs": [
            {"preset": "thumb", "width": 200},
            {"preset": "medium", "width": 800},
        ]});
        assert!(has_preset_output(&job));
        let wide = serde_json::json!({"outputs": [{"preset": "medium", "width": 1600}]});
        assert!(!has_preset_output(&wide));
        assert!(!has_preset_output(&serde_json::json!({"outputs": null})));
    }

    #[test]
    fn the_peer_outputs_are_where_the_store_puts_pixpools() {
        let dir = std::env::temp_dir().join(format!("pixpool-bench-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // What the peer's master makes at start-up.
        let store_layout = pixpool_store::Store::open(&dir.join("layout"), None).expect("store");
        let peer = dir.join("peer");
        for made in [store_layout.raw_dir(), store_layout.processed_dir()] {
            let name = made.file_name().expect("a name");
            std::fs::create_dir_all(peer.join(name)).expect("mkdir");
        }
        let outputs = peer_outputs(&peer).expect("outputs");
        assert!(outputs.is_dir() && outputs.starts_with(&peer));
        // A peer that made something else is refused, not watched in vain.
        let other = dir.join("other");
        std::fs::create_dir_all(other.join("elsewhere")).expect("mkdir");
        assert!(peer_outputs(&other).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
