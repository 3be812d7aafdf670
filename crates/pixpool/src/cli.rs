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
}

/// Options of the supervisor.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PIXPOOL_BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,
    /// The uploads directory: originals, outputs, job records, sockets.
    #[arg(long, env = "PIXPOOL_UPLOADS", default_value = "./uploads")]
    pub uploads: PathBuf,
    /// Number of HTTP front processes [default: half the CPUs, 1 to 4].
    #[arg(long, env = "PIXPOOL_FRONTS", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub fronts: Option<u32>,
    /// Number of image-worker processes [default: one per CPU].
    #[arg(long, env = "PIXPOOL_WORKERS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
    /// Seconds children get to drain after SIGTERM before they are killed.
    #[arg(long, env = "PIXPOOL_GRACE_SECS", default_value_t = 30)]
    pub grace_secs: u64,
    /// Upload size limit in bytes.
    #[arg(long, env = "PIXPOOL_MAX_UPLOAD_BYTES", default_value_t = pixpool_front::DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// Jobs a worker queues before it refuses more.
    #[arg(long, env = "PIXPOOL_QUEUE_DEPTH", default_value_t = pixpool_worker::DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: usize,
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
    /// Largest image accepted, in pixels (width × height), checked on the header.
    #[arg(long, env = "PIXPOOL_MAX_PIXELS", default_value_t = 50_000_000)]
    pub max_pixels: u64,
    /// Largest width or height accepted.
    #[arg(long, env = "PIXPOOL_MAX_SIDE", default_value_t = 16_384)]
    pub max_side: u32,
    /// Refuse uploads (507) when less than this many MiB are free on the uploads disk.
    #[arg(long, env = "PIXPOOL_MIN_FREE_DISK_MB", default_value_t = 512)]
    pub min_free_disk_mb: u64,
    /// Connections one front serves at once.
    #[arg(long, env = "PIXPOOL_MAX_CONNECTIONS", default_value_t = pixpool_front::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a request body may stall before the request is cut off (408).
    #[arg(long, env = "PIXPOOL_BODY_IDLE_SECS", default_value_t = 30)]
    pub body_idle_secs: u64,
    /// Seconds one job may take before it fails and its worker is replaced.
    #[arg(long, env = "PIXPOOL_JOB_TIMEOUT_SECS", default_value_t = 30.0)]
    pub job_timeout_secs: f64,
    /// Replace a worker process after this many jobs (0: never).
    #[arg(long, env = "PIXPOOL_RECYCLE_AFTER_JOBS", default_value_t = 0)]
    pub recycle_after_jobs: u64,
    /// Replace a worker process once its RSS exceeds this many MiB after a job (0: never).
    #[arg(long, env = "PIXPOOL_RECYCLE_RSS_MB", default_value_t = 1024)]
    pub recycle_rss_mb: u64,
    /// Address-space limit of each worker process in MiB (RLIMIT_AS; 0: none):
    /// a decoder that runs away fails that job instead of the machine.
    #[arg(long, env = "PIXPOOL_WORKER_MEMORY_MB", default_value_t = 4096)]
    pub worker_memory_mb: u64,
}

impl ServeArgs {
    /// Fronts to run.
    pub fn fronts(&self) -> u32 {
        self.fronts.unwrap_or_else(|| (cpus() / 2).clamp(1, 4))
    }
    /// Workers to run.
    pub fn workers(&self) -> u32 {
        self.workers.unwrap_or_else(cpus)
    }
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Options every child receives from the supervisor.
#[derive(Debug, Clone, Args)]
pub struct ChildArgs {
    /// This child's slot.
    #[arg(long)]
    pub slot: u32,
    /// Number of worker slots.
    #[arg(long)]
    pub workers: u32,
    /// The uploads directory (absolute).
    #[arg(long)]
    pub uploads: PathBuf,
    /// Drain grace in seconds.
    #[arg(long)]
    pub grace_secs: u64,
    /// The presets (specifications, as validated by the supervisor).
    #[arg(long = "preset", required = true)]
    pub presets: Vec<pixpool_imaging::Preset>,
    /// Largest image in pixels.
    #[arg(long)]
    pub max_pixels: u64,
    /// Largest side.
    #[arg(long)]
    pub max_side: u32,
}

impl ChildArgs {
    /// The image limits.
    pub fn limits(&self) -> pixpool_imaging::Limits {
        pixpool_imaging::Limits {
            max_width: self.max_side,
            max_height: self.max_side,
            max_pixels: self.max_pixels,
            ..pixpool_imaging::Limits::default()
        }
    }
}

/// Options of a front.
#[derive(Debug, Args)]
pub struct FrontArgs {
    /// Common child options.
    #[command(flatten)]
    pub child: ChildArgs,
    /// The inherited listening socket.
    #[arg(long)]
    pub listen_fd: i32,
    /// Upload size limit in bytes.
    #[arg(long)]
    pub max_upload_bytes: u64,
    /// Free-disk floor in MiB.
    #[arg(long)]
    pub min_free_disk_mb: u64,
    /// Connection limit.
    #[arg(long)]
    pub max_connections: usize,
    /// Body idle timeout in seconds.
    #[arg(long)]
    pub body_idle_secs: u64,
}

/// Options of a worker.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Common child options.
    #[command(flatten)]
    pub child: ChildArgs,
    /// Queue bound.
    #[arg(long)]
    pub queue_depth: usize,
    /// Per-job time limit in seconds.
    #[arg(long)]
    pub job_timeout_secs: f64,
    /// Jobs before recycling (0: never).
    #[arg(long)]
    pub recycle_after_jobs: u64,
    /// RSS high-water mark in MiB (0: none).
    #[arg(long)]
    pub recycle_rss_mb: u64,
    /// RLIMIT_AS in MiB (0: none).
    #[arg(long)]
    pub memory_mb: u64,
}
