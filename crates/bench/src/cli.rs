//! The command line, and the defaults that depend on where the workspace is.

use std::path::{Path, PathBuf};

use clap::Parser;

/// Compare pixpool with its Node.js peer (express + multer + sharp): throughput,
/// latency, /health under load and memory, on the same photos and worker counts.
/// (WORKSPACE below: the workspace this benchmark was built in.)
#[derive(Debug, Parser)]
#[command(name = "pixpool-bench", version, about)]
pub struct Cli {
    /// The peer's source folder (read-only is fine: it is copied to --peer-cache).
    /// Default: WORKSPACE/../shared/peers/node-sharp.
    #[arg(long, value_name = "DIR", env = "PIXPOOL_PEER")]
    pub peer: Option<PathBuf>,

    /// Benchmark pixpool only (--peer is then ignored).
    #[arg(long)]
    pub no_peer: bool,

    /// Compare the distributed mode with the embedded one, on this host: a 3-node
    /// NATS cluster and an S3 server (moto) are started for it (`nats-server` and
    /// `moto_server` from PIXPOOL_NATS_SERVER / PIXPOOL_MOTO_SERVER, else PATH), the
    /// same fronts and workers for both. No peer, no syscall pass.
    #[arg(long, conflicts_with_all = ["scaling", "syscalls_only"])]
    pub distributed: bool,

    /// The distributed mode's scaling: a front-only tree plus one worker-only tree of
    /// one worker pinned to CPU 0 (`taskset`), against the same plus a second one
    /// pinned to CPU 1. Needs what --distributed needs.
    #[arg(long, conflicts_with = "syscalls_only")]
    pub scaling: bool,

    /// Measure what each output format (JPEG, WebP, AVIF) costs to encode per 800-px
    /// variant, and its size, on the corpus in this process (no server, no peer), then
    /// exit. Uses --reps.
    #[arg(long, conflicts_with_all = ["distributed", "scaling", "syscalls_only"])]
    pub format_cost: bool,

    /// Skip the syscall-accounting pass: pixpool alone under `strace -f`, counting
    /// the files each job creates, renames and unlinks and the fsyncs it issues. It
    /// runs (once, before the reps) whenever `strace` is on PATH.
    #[arg(long, conflicts_with = "syscalls_only")]
    pub no_syscalls: bool,

    /// Run the syscall-accounting pass and nothing else (no peer, no reps).
    #[arg(long)]
    pub syscalls_only: bool,

    /// Uploads of the syscall-accounting pass, sent at --concurrency. 40 = every
    /// photo of the 20-photo corpus twice: enough for the start-up's one-off calls
    /// (kept apart anyway) not to blur the per-job figures.
    #[arg(long, value_name = "N", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub syscalls_jobs: u32,

    /// Keep the syscall pass's strace log at this path (by default it is written in
    /// the work directory and removed with it), to check its counts by hand.
    #[arg(long, value_name = "PATH")]
    pub syscalls_log: Option<PathBuf>,

    /// Image workers of each server (pixpool --workers, peer IMAGE_WORKERS).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,

    /// HTTP processes of each server (pixpool --fronts, peer WEB_WORKERS).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub fronts: u32,

    /// How many times the whole corpus is uploaded in one run.
    /// 5 rounds = 100 uploads: a few seconds of work per run for two workers, enough
    /// for stable medians, and within pixpool's default queues (64 per worker).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,

    /// Uploads in flight at once (one keep-alive connection each). 8 keeps every
    /// front / web worker busy receiving (4 each with the default 2) without making
    /// the client itself the bottleneck of a small machine.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Repetitions of each server, alternating which one goes first; the report gives
    /// the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reps: u32,

    /// The photo folder. Default: WORKSPACE/../shared/corpus.
    #[arg(long, value_name = "DIR", env = "PIXPOOL_CORPUS")]
    pub corpus: Option<PathBuf>,

    /// The pixpool executable. Default: WORKSPACE/target/release/pixpool.
    #[arg(long, value_name = "PATH")]
    pub pixpool_bin: Option<PathBuf>,

    /// Also write every run's results and the summary to this JSON file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// After each burst, upload every photo alone and report per-photo
    /// time-to-processed (not part of the burst's metrics).
    #[arg(long)]
    pub per_image: bool,

    /// Unmeasured uploads before the burst (default: one per worker).
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,

    /// Sampling period of /health probes and RSS, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..=10_000))]
    pub sample_ms: u64,

    /// Before each run, wait up to this many seconds for the machine to be quiet
    /// (under 10 % busy over one second: nobody else compiling or testing); then go
    /// on regardless. 0: do not wait. Each run reports how much CPU others took.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub quiet_wait: u64,

    /// Give up on a run whose jobs are not all finished after this many seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub job_timeout_secs: u64,

    /// The Node.js executable for the peer.
    #[arg(long, value_name = "PATH", default_value = "node")]
    pub node: PathBuf,

    /// Where the peer is copied and `npm ci` installs its modules (kept between runs).
    /// Default: WORKSPACE/target/bench-peer.
    #[arg(long, value_name = "DIR")]
    pub peer_cache: Option<PathBuf>,

    /// Parent of the servers' temporary uploads directories. Default: the system's
    /// temp directory.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// The workspace this crate was built in (`crates/bench/../..`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

impl Cli {
    /// `--corpus`, `$PIXPOOL_CORPUS`, or `WORKSPACE/../shared/corpus`.
    pub fn corpus_dir(&self, workspace: &Path) -> PathBuf {
        self.corpus
            .clone()
            .unwrap_or_else(|| workspace.join("../shared/corpus"))
    }

    /// `--pixpool-bin` or `WORKSPACE/target/release/pixpool`.
    pub fn pixpool_bin(&self, workspace: &Path) -> PathBuf {
        self.pixpool_bin
            .clone()
            .unwrap_or_else(|| workspace.join("target/release/pixpool"))
    }

    /// `--peer` or `WORKSPACE/../shared/peers/node-sharp`.
    pub fn peer_source(&self, workspace: &Path) -> PathBuf {
        self.peer
            .clone()
            .unwrap_or_else(|| workspace.join("../shared/peers/node-sharp"))
    }

    /// `--peer-cache` or `WORKSPACE/target/bench-peer`.
    pub fn peer_cache(&self, workspace: &Path) -> PathBuf {
        self.peer_cache
            .clone()
            .unwrap_or_else(|| workspace.join("target/bench-peer"))
    }

    /// `--work-dir` or the system's temp directory.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from(["pixpool-bench"]).expect("defaults parse");
        assert_eq!((cli.workers, cli.fronts, cli.reps), (2, 2, 3));
        assert_eq!((cli.rounds, cli.concurrency), (5, 8));
        assert!(!cli.no_peer);
        assert!(!cli.no_syscalls && !cli.syscalls_only);
        assert_eq!(cli.syscalls_jobs, 40);
    }

    #[test]
    fn syscalls_only_and_no_syscalls_conflict() {
        let both = ["pixpool-bench", "--syscalls-only", "--no-syscalls"];
        assert!(Cli::try_parse_from(both).is_err());
    }

    #[test]
    fn zero_workers_is_refused() {
        assert!(Cli::try_parse_from(["pixpool-bench", "--workers", "0"]).is_err());
    }
}
