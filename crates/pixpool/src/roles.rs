//! The child roles. Each builds its own tokio runtime after exec; nothing
//! async ever exists in the supervisor that forked it.

use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pixpool_metrics::Recorder;
use pixpool_store::Store;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{FrontArgs, WorkerArgs};
use crate::exit::ConfigError;
use crate::settings::{self, AdminSettings, FrontSettings, WorkerSettings};

/// Whether `fd` is a socket: an inherited listener, not a stray number.
fn is_socket(fd: i32) -> bool {
    // SAFETY: fstat only reads the fd's metadata; any fd number is safe to ask about.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One event loop per process, as in nginx: the process is the unit of
    // parallelism. CPU and file work goes to the blocking pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// Resolves when the supervisor asks this child to drain (SIGTERM).
async fn terminated() {
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::error!(cause = %e, "cannot watch SIGTERM; only SIGKILL will stop this process");
            std::future::pending::<()>().await;
        }
    }
}

/// `pixpool front`.
pub fn front(args: FrontArgs) -> anyhow::Result<ExitCode> {
    let slot = args.child.slot;
    let settings: FrontSettings = settings::decode(&args.child.settings, "front")?;
    crate::logging::init("front", Some(slot), settings.common.log_format);
    settings.common.check()?;
    let fd = args.listen_fd;
    if !is_socket(fd) {
        return Err(ConfigError::ListenFd(fd, "front").into());
    }
    let api_tokens = child_api_tokens()?;
    // SAFETY: the supervisor passed this fd to us as our listener, and nothing
    // else in this process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let store = Store::open(&settings.common.uploads, None).map_err(ConfigError::Uploads)?;
    let metrics = Recorder::new("front", slot);
    let report = Reporter::new(
        "front",
        slot,
        args.child.control_fd,
        metrics.clone(),
        settings.common.metrics_socket.clone(),
    );
    let backend = settings.common.backend.clone();
    let callbacks = settings.common.webhooks.policy()?;
    let rate_limit = match &settings.rate_limit {
        Some(r) => Some(Arc::new(pixpool_front::RateLimit {
            table: pixpool_limiter::Table::open(&r.table)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            rate: pixpool_limiter::Rate {
                per_second: r.per_second,
                burst: r.burst,
            },
        })),
        None => None,
    };
    let mut config = front_config(settings, slot, store, api_tokens, metrics);
    config.callbacks = callbacks;
    config.rate_limit = rate_limit;
    runtime()?.block_on(async {
        // Alive while it connects: a cluster still electing its leaders takes seconds.
        tokio::spawn(report.clone().heartbeat(None));
        let connected = crate::backend::connect(&backend, &config.store, &config.metrics).await?;
        if let Some(shared) = connected {
            config.shared = Some(shared.front());
        }
        pixpool_front::run(listener, config, terminated(), || report.ready())
            .await
            .context("front failed")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A front's configuration: its settings, plus what only its own process
/// holds (slot, store, tokens, recorder).
fn front_config(
    s: FrontSettings,
    slot: u32,
    store: Store,
    api_tokens: Vec<String>,
    metrics: Recorder,
) -> pixpool_front::FrontConfig {
    let names: Vec<String> = s.common.presets.iter().map(|p| p.name.clone()).collect();
    pixpool_front::FrontConfig {
        slot,
        store,
        workers: s.common.workers,
        known_presets: names.clone(),
        default_presets: names,
        max_upload_bytes: s.max_upload_bytes,
        drain_grace: s.common.grace,
        limits: s.common.limits(),
        min_free_bytes: s.min_free_bytes,
        max_connections: s.max_connections,
        body_idle_timeout: s.body_idle_timeout,
        min_upload_bytes_per_sec: s.min_upload_bytes_per_sec,
        max_event_streams: s.max_event_streams,
        // Tokens come from the environment only: a command line is visible to
        // every user of the machine (`ps`).
        api_tokens,
        preset_specs: s
            .common
            .presets
            .iter()
            .map(|p| (p.name.clone(), p.to_string()))
            .collect(),
        allowed_origins: s.allowed_origins,
        // The front sets these from its settings (which can fail).
        callbacks: pixpool_webhook::CallbackPolicy::default(),
        rate_limit: None,
        metrics,
        shared: None,
    }
}

/// `pixpool worker`.
pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    pixpool_worker::alloc::tune();
    let slot = args.child.slot;
    let settings: WorkerSettings = settings::decode(&args.child.settings, "worker")?;
    crate::logging::init("worker", Some(slot), settings.common.log_format);
    // A worker needs no token: drop them before anything else can read them.
    child_api_tokens()?;
    settings.common.check()?;
    let store = Store::open(&settings.common.uploads, None).map_err(ConfigError::Uploads)?;
    if settings.memory_limit_bytes > 0 {
        limit_address_space(settings.memory_limit_bytes)?;
    }
    if settings.nice != 0 {
        lower_priority(settings.nice);
    }
    let metrics = Recorder::new("worker", slot);
    let report = Reporter::new(
        "worker",
        slot,
        args.child.control_fd,
        metrics.clone(),
        settings.common.metrics_socket.clone(),
    );
    let backend = settings.common.backend.clone();
    let mut config = worker_config(settings, slot, store, metrics);
    let queued = config.queued.clone();
    // Held in a variable, never dropped as a temporary: dropping a runtime waits for its
    // blocking threads, and the thread of a job over its time limit may be stuck in a
    // decoder for minutes.
    let runtime = runtime()?;
    let exit = runtime.block_on(async {
        tokio::spawn(report.clone().heartbeat(Some(queued)));
        let connected = crate::backend::connect(&backend, &config.store, &config.metrics).await?;
        if let Some(shared) = connected {
            config.shared = Some(shared.worker(config.webhooks.as_ref()).await?);
        }
        pixpool_worker::run(config, terminated(), || report.ready())
            .await
            .map_err(anyhow::Error::from)
    });
    if matches!(exit, Ok(pixpool_worker::WorkerExit::Replace)) {
        // Leave now, with the stuck thread if there is one: its job is already failed,
        // and the replacement takes the jobs still claimed. Exit 0 from a running child
        // means "planned": respawned at once.
        pixpool_store::fsutil::remove_spares();
        std::process::exit(0);
    }
    runtime.shutdown_timeout(BLOCKING_THREADS_GRACE);
    exit.context("worker failed")?;
    Ok(ExitCode::SUCCESS)
}

/// A worker's configuration: its settings, plus what only its own process
/// holds. The memory limit and niceness are applied to the process instead.
fn worker_config(
    s: WorkerSettings,
    slot: u32,
    store: Store,
    metrics: Recorder,
) -> pixpool_worker::WorkerConfig {
    pixpool_worker::WorkerConfig {
        slot,
        workers: s.common.workers,
        store,
        queue_depth: s.queue_depth,
        limits: s.common.limits(),
        presets: s.common.presets,
        job_timeout: s.job_timeout,
        recycle_after_jobs: s.recycle_after_jobs,
        recycle_rss_bytes: s.recycle_rss_bytes,
        steal: s.steal,
        queued: Default::default(),
        metrics,
        shared: None,
        webhooks: s
            .common
            .webhooks
            .enabled()
            .then(|| pixpool_worker::WebhookConfig {
                operator_url: s.common.webhooks.url.clone(),
            }),
    }
}

/// How long a drained worker waits for its blocking threads (a commit's fsyncs)
/// before it exits anyway; none should be left once the job in hand is finished.
const BLOCKING_THREADS_GRACE: Duration = Duration::from_secs(1);

/// The bearer tokens the supervisor handed this child (a JSON array, so a
/// token reaches it whole), removed from the environment once read so that
/// nothing this process starts inherits them. The operator's own
/// `PIXPOOL_API_TOKENS` is the supervisor's input, never a child's.
pub fn child_api_tokens() -> Result<Vec<String>, ConfigError> {
    let raw = std::env::var(crate::serve::CHILD_TOKENS_VAR).ok();
    // Called before this process starts any other thread.
    std::env::remove_var(crate::serve::CHILD_TOKENS_VAR);
    std::env::remove_var("PIXPOOL_API_TOKENS");
    // Only the courier signs; it has taken the secret before this.
    let _ = child_webhook_secret();
    match raw {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(&json).map_err(ConfigError::Tokens),
    }
}

/// The webhook signing secret the supervisor passed, taken out of the environment
/// (the operator's variable too) so that nothing this process runs can read it.
fn child_webhook_secret() -> Option<String> {
    let secret = std::env::var(crate::serve::CHILD_WEBHOOK_SECRET_VAR).ok();
    // Called before this process starts any other thread.
    std::env::remove_var(crate::serve::CHILD_WEBHOOK_SECRET_VAR);
    std::env::remove_var("PIXPOOL_WEBHOOK_SECRET");
    secret
}

/// `pixpool courier`: delivers the webhook outbox until told to stop.
pub fn courier(args: crate::cli::BackgroundArgs) -> anyhow::Result<ExitCode> {
    let settings: crate::settings::CourierSettings = settings::decode(&args.settings, "courier")?;
    let common = settings.common;
    crate::logging::init("courier", Some(0), common.log_format);
    let secret = child_webhook_secret().unwrap_or_default();
    let secret = pixpool_webhook::Secret::parse(&secret).map_err(ConfigError::WebhookSecret)?;
    child_api_tokens()?;
    let policy = common.webhooks.policy()?;
    let store = Store::open(&common.uploads, None).map_err(ConfigError::Uploads)?;
    let metrics = Recorder::new("courier", 0);
    let report = Reporter::new(
        "courier",
        0,
        args.control_fd,
        metrics.clone(),
        common.metrics_socket.clone(),
    );
    let config = pixpool_webhook::CourierConfig {
        max_attempts: common.webhooks.max_attempts.max(1),
        retry_base: common.webhooks.retry_base,
        ..pixpool_webhook::CourierConfig::new(policy)
    };
    runtime()?
        .block_on(async {
            tokio::spawn(report.clone().heartbeat(None));
            let connected = crate::backend::connect(&common.backend, &store, &metrics).await?;
            let (records, outbox) = match &connected {
                Some(shared) => shared.courier(),
                None => (
                    Arc::new(pixpool_store::embedded::FileRecords::new(store.clone()))
                        as Arc<dyn pixpool_store::backend::Records>,
                    Arc::new(pixpool_store::embedded::FileOutbox::new(store.clone()))
                        as Arc<dyn pixpool_store::backend::Outbox>,
                ),
            };
            let courier = Arc::new(pixpool_webhook::Courier::new(
                outbox,
                records,
                secret,
                config,
                metrics.clone(),
            )?);
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let run = tokio::spawn(courier.run(stopped));
            report.ready();
            tracing::info!("courier ready");
            terminated().await;
            let _ = stop.send(true);
            run.await.context("the courier's task failed")
        })
        .context("courier failed")?;
    Ok(ExitCode::SUCCESS)
}

/// How long a file no job names is left alone before the sweep removes it: longer
/// than any upload may take to stream in (the front's minimum rate) or a job to run.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// `pixpool sweeper`: removes jobs past `--retain` and old orphans, over and over.
pub fn sweeper(args: crate::cli::BackgroundArgs) -> anyhow::Result<ExitCode> {
    use pixpool_metrics::{Counter, Label};
    let settings: crate::settings::SweeperSettings = settings::decode(&args.settings, "sweeper")?;
    let common = settings.common;
    crate::logging::init("sweeper", Some(0), common.log_format);
    child_api_tokens()?;
    let store = Store::open(&common.uploads, None).map_err(ConfigError::Uploads)?;
    let metrics = Recorder::new("sweeper", 0);
    let report = Reporter::new(
        "sweeper",
        0,
        args.control_fd,
        metrics.clone(),
        common.metrics_socket.clone(),
    );
    let every = settings.every;
    runtime()?
        .block_on(async {
            tokio::spawn(report.clone().heartbeat(None));
            let connected = crate::backend::connect(&common.backend, &store, &metrics).await?;
            let parts_owned: (
                Arc<dyn pixpool_store::backend::Records>,
                Arc<dyn pixpool_store::backend::Blobs>,
                Arc<dyn pixpool_store::backend::Outbox>,
            ) = match &connected {
                Some(shared) => shared.sweeper(),
                None => (
                    Arc::new(pixpool_store::embedded::FileRecords::new(store.clone())),
                    Arc::new(pixpool_store::embedded::FileBlobs::new(store.clone())),
                    Arc::new(pixpool_store::embedded::FileOutbox::new(store.clone())),
                ),
            };
            let (records, blobs, outbox) = &parts_owned;
            let parts = pixpool_store::remove::JobParts {
                records: &**records,
                blobs: &**blobs,
                outbox: Some(&**outbox),
            };
            report.ready();
            tracing::info!(retain = ?settings.retain, every = ?every, "sweeper ready");
            let mut cursor = None;
            let stop = terminated();
            tokio::pin!(stop);
            loop {
                let started = std::time::Instant::now();
                let sweep = async {
                    let pace = pixpool_store::sweep::Pace::default();
                    let mut got =
                        pixpool_store::sweep::sweep_expired(parts, settings.retain, pace).await;
                    got +=
                        pixpool_store::sweep::sweep_orphans(&store, &**records, ORPHAN_AGE).await;
                    got += pixpool_store::sweep::sweep_blobs(
                        &**blobs,
                        &**records,
                        ORPHAN_AGE,
                        &mut cursor,
                        pace,
                    )
                    .await;
                    got
                };
                let got = tokio::select! {
                    got = sweep => got,
                    () = &mut stop => break,
                };
                for (kind, n) in [("expired", got.jobs), ("orphan", got.orphans)] {
                    if n > 0 {
                        metrics.add(
                            Counter::SweepRemoved {
                                kind: Label::from(kind),
                            },
                            n,
                        );
                    }
                }
                if got.bytes > 0 {
                    metrics.add(Counter::SweepReclaimedBytes, got.bytes);
                }
                if got != pixpool_store::sweep::Reclaimed::default() {
                    tracing::info!(
                        expired = got.jobs,
                        orphans = got.orphans,
                        bytes = got.bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "sweep done"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = &mut stop => break,
                }
            }
            anyhow::Ok(())
        })
        .context("sweeper failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Adds `increment` to this process's niceness (all its threads: it is done
/// before any other starts). Failure is not fatal: the worker runs, only at the
/// fronts' priority.
fn lower_priority(increment: i32) {
    // SAFETY: nice changes this process's scheduling weight; no memory is shared.
    // -1 is a valid result, so errno tells failure apart.
    let failed = unsafe {
        *libc::__errno_location() = 0;
        libc::nice(increment) == -1 && *libc::__errno_location() != 0
    };
    if failed {
        tracing::warn!(cause = %std::io::Error::last_os_error(), increment, "could not lower the worker's priority");
    }
}

/// Caps this process's address space: an allocation past it fails (and the
/// process aborts) instead of pushing the machine into swap or the OOM killer.
fn limit_address_space(bytes: u64) -> anyhow::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is shared.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("could not set the worker memory limit");
    }
    Ok(())
}

/// Reports to the supervisor over the inherited control channel: readiness
/// once, then a heartbeat every second from this process's event loop.
#[derive(Debug, Clone)]
struct Reporter {
    sock: Option<std::sync::Arc<std::os::unix::net::UnixDatagram>>,
    role: &'static str,
    slot: u32,
    /// This process's recorder: its snapshot goes to the admin process with
    /// each heartbeat.
    metrics: Recorder,
    /// An unbound socket, and the admin process's socket to send to.
    admin: Option<(
        std::sync::Arc<std::os::unix::net::UnixDatagram>,
        std::path::PathBuf,
    )>,
}

impl Reporter {
    fn new(
        role: &'static str,
        slot: u32,
        fd: Option<i32>,
        metrics: Recorder,
        metrics_socket: Option<std::path::PathBuf>,
    ) -> Reporter {
        let admin = metrics_socket.and_then(|p| {
            let s = std::os::unix::net::UnixDatagram::unbound().ok()?;
            s.set_nonblocking(true).ok()?;
            Some((std::sync::Arc::new(s), p))
        });
        let sock = fd.map(|fd| {
            // SAFETY: the supervisor placed the control channel at this fd for
            // us; nothing else in this process owns it.
            let s = unsafe { std::os::unix::net::UnixDatagram::from_raw_fd(fd) };
            // Never block the event loop on a busy supervisor.
            let _ = s.set_nonblocking(true);
            std::sync::Arc::new(s)
        });
        Reporter {
            sock,
            role,
            slot,
            metrics,
            admin,
        }
    }

    fn send(&self, line: &str) {
        if let Some(s) = &self.sock {
            let _ = s.send(line.as_bytes());
        }
    }

    fn ready(&self) {
        self.send(&pixpool_supervisor::notify::ready_line(
            self.role, self.slot,
        ));
    }

    async fn heartbeat(self, queued: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>) {
        let mut tick = tokio::time::interval(pixpool_supervisor::notify::HEARTBEAT);
        loop {
            tick.tick().await;
            let q = queued
                .as_ref()
                .map_or(0, |q| q.load(std::sync::atomic::Ordering::Relaxed));
            self.send(&pixpool_supervisor::notify::alive_line(
                self.role, self.slot, q,
            ));
            if let Some((sock, path)) = &self.admin {
                if let Ok(bytes) = pixpool_protocol::frame::encode(&self.metrics.snapshot()) {
                    // The admin process may be restarting: a lost snapshot is harmless.
                    let _ = sock.send_to(&bytes, path);
                }
            }
        }
    }
}

/// `pixpool admin`.
pub fn admin(args: crate::cli::AdminArgs) -> anyhow::Result<ExitCode> {
    let settings: AdminSettings = settings::decode(&args.settings, "admin")?;
    crate::logging::init("admin", Some(0), settings.log_format);
    child_api_tokens()?;
    let fd = args.listen_fd;
    if !is_socket(fd) {
        return Err(ConfigError::ListenFd(fd, "admin").into());
    }
    // SAFETY: the supervisor passed this fd to us as the admin listener, and
    // nothing else in this process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // The admin process records nothing of its own; its recorder is never sent.
    let report = Reporter::new("admin", 0, args.control_fd, Recorder::new("admin", 0), None);
    runtime()?
        .block_on(async {
            tokio::spawn(report.clone().heartbeat(None));
            pixpool_admin::run(listener, &settings.metrics_socket, terminated(), || {
                report.ready()
            })
            .await
        })
        .context("admin failed")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::settings::ChildPaths;
    use pixpool_imaging::{Limits, Preset};

    /// A store in a directory of its own, removed by the caller.
    fn temp_store(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("pixpool-roles-{}-{name}", std::process::id()));
        Store::open(&dir, None).expect("open a store in a temporary directory")
    }

    /// What a child reads from the default configuration, through the
    /// argument as it travels.
    fn from_defaults<T>(store: &Store, make: fn(&Settings, &ChildPaths) -> anyhow::Result<T>) -> T
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let paths = ChildPaths {
            uploads: store.root().to_path_buf(),
            metrics_socket: None,
            rate_table: store.run_dir().join(crate::serve::RATE_TABLE),
        };
        let built = make(&Settings::default(), &paths).expect("settings");
        settings::decode(&settings::encode(&built).expect("encode"), "test").expect("decode")
    }

    #[test]
    fn default_settings_give_a_front_its_defaults() {
        let store = temp_store("front");
        let c = front_config(
            from_defaults(&store, FrontSettings::new),
            2,
            store.clone(),
            Vec::new(),
            Recorder::new("front", 2),
        );
        let builtin = Preset::builtin();
        let names: Vec<String> = builtin.iter().map(|p| p.name.clone()).collect();
        assert_eq!((c.slot, c.workers), (2, Settings::default().workers));
        assert_eq!(c.store.root(), store.root());
        assert_eq!(c.known_presets, names);
        assert_eq!(c.default_presets, names);
        assert_eq!(
            c.preset_specs,
            builtin
                .iter()
                .map(|p| (p.name.clone(), p.to_string()))
                .collect()
        );
        assert_eq!(c.max_upload_bytes, pixpool_front::DEFAULT_MAX_UPLOAD_BYTES);
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.min_free_bytes, pixpool_front::DEFAULT_MIN_FREE_BYTES);
        assert_eq!(c.max_connections, pixpool_front::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            c.body_idle_timeout,
            pixpool_front::DEFAULT_BODY_IDLE_TIMEOUT
        );
        assert_eq!(
            c.min_upload_bytes_per_sec,
            pixpool_front::DEFAULT_MIN_UPLOAD_BYTES_PER_SEC
        );
        assert_eq!(
            c.max_event_streams,
            pixpool_front::DEFAULT_MAX_EVENT_STREAMS
        );
        assert!(c.api_tokens.is_empty() && c.allowed_origins.is_empty());
        let _ = std::fs::remove_dir_all(store.root());
    }

    #[test]
    fn default_settings_give_a_worker_its_defaults() {
        let store = temp_store("worker");
        let s: WorkerSettings = from_defaults(&store, WorkerSettings::new);
        // Applied to the process, not part of its configuration.
        assert_eq!(s.memory_limit_bytes, 4096 * 1024 * 1024);
        assert_eq!(s.nice, crate::config::DEFAULT_WORKER_NICE);
        let c = worker_config(s, 1, store.clone(), Recorder::new("worker", 1));
        assert_eq!((c.slot, c.workers), (1, Settings::default().workers));
        assert_eq!(c.store.root(), store.root());
        assert_eq!(c.queue_depth, pixpool_worker::DEFAULT_QUEUE_DEPTH);
        assert_eq!(c.presets, Preset::builtin());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.job_timeout, pixpool_worker::DEFAULT_JOB_TIMEOUT);
        assert_eq!(c.recycle_after_jobs, 0);
        assert_eq!(c.recycle_rss_bytes, 1024 * 1024 * 1024);
        assert!(c.steal);
        let _ = std::fs::remove_dir_all(store.root());
    }
}
