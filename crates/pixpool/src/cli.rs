//! Command-line interface. Every server flag is also read from a `PIXPOOL_*`
//! environment variable; a flag given on the command line wins.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// pixpool: a multi-process image-processing server.
#[derive(Debug, Parser)]
#[command(name = "pixpool", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: the supervisor, which starts the fronts and workers.
    Serve(ServeArgs),
    /// An HTTP front (started by the supervisor).
    #[command(hide = true)]
    Front(FrontArgs),
    /// An image worker (started by the supervisor).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// The metrics aggregator (started by the supervisor).
    #[command(hide = true)]
    Admin(AdminArgs),
    /// The webhook courier (started by the supervisor when webhooks are configured).
    #[command(hide = true)]
    Courier(BackgroundArgs),
    /// The retention sweeper (started by the supervisor when `--retain` is set).
    #[command(hide = true)]
    Sweeper(BackgroundArgs),
    /// Upload images (files or folders) and wait until every one is processed;
    /// exits non-zero if any failed.
    Upload(pixpool_client::UploadArgs),
    /// Validate the configuration (file, environment, flags) and print the
    /// effective result; exits non-zero if it is invalid.
    CheckConfig(CheckConfigArgs),
}

/// Options of `check-config`.
#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// The file to check (the same as `serve --config FILE`).
    pub file: Option<PathBuf>,
    /// Every other `serve` option, to see its effect.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Options of the supervisor. Each overrides the configuration file and has
/// an environment variable; unset ones come from the file, then the defaults
/// (`pixpool check-config` prints the result).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML) [default: /etc/pixpool/pixpool.toml if it exists].
    #[arg(long, env = "PIXPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:3000].
    #[arg(long, env = "PIXPOOL_BIND")]
    pub bind: Option<SocketAddr>,
    /// The uploads directory: originals, outputs, job records, sockets [default: ./uploads].
    #[arg(long, env = "PIXPOOL_UPLOADS")]
    pub uploads: Option<PathBuf>,
    /// Number of HTTP front processes [default: half the CPUs, 1 to 4].
    #[arg(long, env = "PIXPOOL_FRONTS")]
    pub fronts: Option<u32>,
    /// Number of image-worker processes [default: one per CPU].
    #[arg(long, env = "PIXPOOL_WORKERS")]
    pub workers: Option<u32>,
    /// Seconds children get to drain after SIGTERM before they are killed [default: 30].
    #[arg(long, env = "PIXPOOL_GRACE_SECS")]
    pub grace_secs: Option<u64>,
    /// Upload size limit in bytes [default: 52428800].
    #[arg(long, env = "PIXPOOL_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Jobs a worker queues before it refuses more [default: 64].
    #[arg(long, env = "PIXPOOL_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// An output preset, NAME:WIDTH[xHEIGHT][:inside|cover][:jpeg|png|webp][:qQUALITY][:alpha=png|webp];
    /// repeat for several. Replaces the built-in set (thumb:200x200:cover,
    /// small:480, medium:800, large:1600). PIXPOOL_PRESETS takes a `;`-separated list.
    #[arg(
        long = "preset",
        env = "PIXPOOL_PRESETS",
        value_delimiter = ';',
        value_name = "SPEC"
    )]
    pub presets: Vec<pixpool_imaging::Preset>,
    /// Largest image accepted, in pixels (width × height), checked on the header [default: 50000000].
    #[arg(long, env = "PIXPOOL_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Largest width or height accepted [default: 16384].
    #[arg(long, env = "PIXPOOL_MAX_SIDE")]
    pub max_side: Option<u32>,
    /// Most frames an animation may have [default: 1000].
    #[arg(long, env = "PIXPOOL_MAX_FRAMES")]
    pub max_frames: Option<u32>,
    /// Refuse uploads (507) when less than this many MiB are free on the uploads disk [default: 512].
    #[arg(long, env = "PIXPOOL_MIN_FREE_DISK_MB")]
    pub min_free_disk_mb: Option<u64>,
    /// Connections one front serves at once [default: 1024].
    #[arg(long, env = "PIXPOOL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a request body may stall before the request is cut off (408) [default: 30].
    #[arg(long, env = "PIXPOOL_BODY_IDLE_SECS")]
    pub body_idle_secs: Option<u64>,
    /// Slowest request body accepted, in bytes per second averaged over 10 s;
    /// slower is cut off (408); 0: no minimum [default: 16384].
    #[arg(long, env = "PIXPOOL_MIN_UPLOAD_BYTES_PER_SEC")]
    pub min_upload_bytes_per_sec: Option<u64>,
    /// Event streams (SSE and long-polls) one front keeps open at once, apart
    /// from --max-connections; more get 503 [default: 256].
    #[arg(long, env = "PIXPOOL_MAX_EVENT_STREAMS")]
    pub max_event_streams: Option<usize>,
    /// Seconds one job may take before it fails and its worker is replaced [default: 30].
    #[arg(long, env = "PIXPOOL_JOB_TIMEOUT_SECS")]
    pub job_timeout_secs: Option<f64>,
    /// Replace a worker process after this many jobs; 0: never [default: 0].
    #[arg(long, env = "PIXPOOL_RECYCLE_AFTER_JOBS")]
    pub recycle_after_jobs: Option<u64>,
    /// Replace a worker process once its RSS exceeds this many MiB after a job; 0: never [default: 1024].
    #[arg(long, env = "PIXPOOL_RECYCLE_RSS_MB")]
    pub recycle_rss_mb: Option<u64>,
    /// Address-space limit of each worker process in MiB (RLIMIT_AS; 0: none):
    /// a decoder that runs away fails that job instead of the machine [default: 4096].
    #[arg(long, env = "PIXPOOL_WORKER_MEMORY_MB")]
    pub worker_memory_mb: Option<u64>,
    /// Niceness of the worker processes, 0 to 19: higher lets the fronts (and
    /// /health) preempt saturated workers [default: 10].
    #[arg(long, env = "PIXPOOL_WORKER_NICE")]
    pub worker_nice: Option<i32>,
    /// Whether an idle worker takes queued jobs from a busy sibling (true or
    /// false; routing stays round-robin either way) [default: true].
    #[arg(long, env = "PIXPOOL_WORK_STEALING", value_name = "BOOL")]
    pub work_stealing: Option<bool>,
    /// Admin listener serving Prometheus `/metrics`, or `off` [default: 127.0.0.1:9464].
    #[arg(long, env = "PIXPOOL_ADMIN")]
    pub admin: Option<String>,
    /// File-creation mask of every process, in octal: what the uploads tree
    /// withholds (0027: directories 0750, files 0640) [default: 0027, or
    /// stricter when the inherited umask is].
    #[arg(long, env = "PIXPOOL_UMASK", value_name = "OCTAL")]
    pub umask: Option<crate::umask::Umask>,
    /// An origin (`https://app.example.com`) whose pages may post to an open
    /// API (no tokens), besides the server's own; repeat for several.
    /// PIXPOOL_ALLOWED_ORIGINS takes a comma-separated list.
    #[arg(
        long = "allowed-origin",
        env = "PIXPOOL_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Vec<String>,
    /// Log format: text (journald-friendly, colours only on a terminal) or json [default: text].
    #[arg(long, env = "PIXPOOL_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// The distributed mode's job queue: NATS JetStream servers, comma-separated
    /// `nats://host:port` [default: none, the embedded queue].
    #[arg(long, env = "PIXPOOL_QUEUE", value_name = "URLS")]
    pub queue: Option<String>,
    /// Copies of the queue's streams and buckets kept by the NATS cluster: 3 for a
    /// cluster, 1 for a single server [default: 3].
    #[arg(long, env = "PIXPOOL_QUEUE_REPLICAS", value_name = "N")]
    pub queue_replicas: Option<usize>,
    /// How long a job pulled by a worker that stopped answering (dead, frozen, cut
    /// off) waits before another worker gets it; a running job's heartbeat renews it
    /// [default: 30].
    #[arg(long, env = "PIXPOOL_QUEUE_ACK_WAIT_SECS", value_name = "SECS")]
    pub queue_ack_wait_secs: Option<u64>,
    /// Where originals and variants live: `s3://BUCKET[/PREFIX]`, with the AWS_*
    /// variables (AWS_ENDPOINT_URL, AWS_REGION, ...) [default: none, the uploads
    /// directory].
    #[arg(long, env = "PIXPOOL_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The operator's webhook endpoint: every job's `job.done` and `job.failed`
    /// are POSTed there, signed with PIXPOOL_WEBHOOK_SECRET [default: none].
    #[arg(long, env = "PIXPOOL_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// A prefix an upload's `callback_url` may start with (`https://hooks.example.com/`);
    /// repeat for several. PIXPOOL_WEBHOOK_ALLOW takes a comma-separated list
    /// [default: none, uploads name no callback].
    #[arg(
        long = "webhook-allow",
        env = "PIXPOOL_WEBHOOK_ALLOW",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    pub webhook_allow: Vec<String>,
    /// Let callbacks reach loopback, private, link-local and multicast addresses
    /// [default: false].
    #[arg(
        long,
        env = "PIXPOOL_WEBHOOK_ALLOW_PRIVATE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub webhook_allow_private: Option<bool>,
    /// Delivery attempts per event and destination before it is failed [default: 12].
    #[arg(long, env = "PIXPOOL_WEBHOOK_MAX_ATTEMPTS", value_name = "N")]
    pub webhook_max_attempts: Option<u32>,
    /// Milliseconds before the first retry of a webhook; each later pause is four
    /// times longer (up to 6 h) [default: 1000].
    #[arg(long, env = "PIXPOOL_WEBHOOK_RETRY_BASE_MS", value_name = "MS")]
    pub webhook_retry_base_ms: Option<u64>,
    /// Delete jobs finished longer ago than this (`30d`, `12h`, `90s`), as DELETE
    /// does, and what crashes left behind; empty: keep forever [default: keep forever].
    #[arg(long, env = "PIXPOOL_RETAIN", value_name = "DURATION")]
    pub retain: Option<String>,
    /// Seconds between two sweeps of --retain [default: a quarter of the retention,
    /// 1 to 600].
    #[arg(long, env = "PIXPOOL_SWEEP_INTERVAL_SECS", value_name = "SECS")]
    pub sweep_interval_secs: Option<u64>,
    /// Uploads and deletions allowed per client (its token, else its address):
    /// `5/s`, `300/min`, `1000/h`; more get 429 [default: unlimited].
    #[arg(long, env = "PIXPOOL_RATE_LIMIT", value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Requests a client may make at once after a pause [default: twice the rate per
    /// second, at least 1].
    #[arg(long, env = "PIXPOOL_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,
}

/// What every child gets on its command line: which one it is, and the rest
/// of its settings in one argument (see [`crate::settings`]).
#[derive(Debug, Clone, Args)]
pub struct ChildArgs {
    /// This child's slot.
    #[arg(long)]
    pub slot: u32,
    /// The control channel to the supervisor (readiness, heartbeats).
    #[arg(long)]
    pub control_fd: Option<i32>,
    /// The role's settings, as JSON (no secrets: a command line is public).
    #[arg(long, value_name = "JSON")]
    pub settings: String,
}

/// Options of a front.
#[derive(Debug, Args)]
pub struct FrontArgs {
    /// Slot, control channel and settings.
    #[command(flatten)]
    pub child: ChildArgs,
    /// The inherited listening socket.
    #[arg(long)]
    pub listen_fd: i32,
}

/// Options of a worker.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Slot, control channel and settings.
    #[command(flatten)]
    pub child: ChildArgs,
}

/// Options of a background child: the courier, the sweeper (one each per host,
/// without a slot).
#[derive(Debug, Args)]
pub struct BackgroundArgs {
    /// The control channel to the supervisor.
    #[arg(long)]
    pub control_fd: Option<i32>,
    /// The role's settings, as JSON (no secrets: the courier's signing secret comes
    /// in the environment).
    #[arg(long, value_name = "JSON")]
    pub settings: String,
}

/// Options of the admin process (one, without a slot).
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The inherited admin listener.
    #[arg(long)]
    pub listen_fd: i32,
    /// The control channel to the supervisor.
    #[arg(long)]
    pub control_fd: Option<i32>,
    /// The admin settings, as JSON.
    #[arg(long, value_name = "JSON")]
    pub settings: String,
}
