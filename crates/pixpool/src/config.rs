//! The effective configuration: built-in defaults, overridden by a TOML file
//! (`--config`, else `/etc/pixpool/pixpool.toml` when it exists), overridden
//! by `PIXPOOL_*` environment variables, overridden by command-line flags.
//! Unknown keys in the file are errors. `pixpool check-config` prints the
//! result; SIGHUP re-reads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cli::ServeArgs;

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pixpool/pixpool.toml";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable (colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting, resolved. Also the schema of the TOML file (flat; key names
/// are the flags' names with `_`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// The uploads directory.
    pub uploads: PathBuf,
    /// HTTP front processes.
    pub fronts: u32,
    /// Image-worker processes.
    pub workers: u32,
    /// Drain grace period, seconds.
    pub grace_secs: u64,
    /// Upload size limit, bytes.
    pub max_upload_bytes: u64,
    /// Jobs one worker queues before refusing more.
    pub queue_depth: usize,
    /// Output presets, as specifications (`NAME:WIDTH[xHEIGHT][:…]`).
    pub presets: Vec<String>,
    /// Largest image, pixels.
    pub max_pixels: u64,
    /// Largest side, pixels.
    pub max_side: u32,
    /// Most frames of an animation.
    pub max_frames: u32,
    /// Free-disk floor, MiB.
    pub min_free_disk_mb: u64,
    /// Connections per front.
    pub max_connections: usize,
    /// Request body idle timeout, seconds.
    pub body_idle_secs: u64,
    /// Slowest request body accepted, bytes/s over 10 s (0: no minimum).
    pub min_upload_bytes_per_sec: u64,
    /// Event streams (SSE, long-polls) per front, apart from `max_connections`.
    pub max_event_streams: usize,
    /// Per-job time limit, seconds.
    pub job_timeout_secs: f64,
    /// Replace a worker after this many jobs (0: never).
    pub recycle_after_jobs: u64,
    /// Replace a worker whose RSS passed this, MiB (0: never).
    pub recycle_rss_mb: u64,
    /// RLIMIT_AS of each worker, MiB (0: none).
    pub worker_memory_mb: u64,
    /// Scheduling niceness of the workers (0 to 19): above 0 the fronts win the
    /// CPU from saturated workers, so the API stays responsive.
    pub worker_nice: i32,
    /// An idle worker takes queued jobs from a busy sibling (routing stays
    /// round-robin): one long image does not hold the jobs behind it while
    /// another worker has nothing to do.
    pub work_stealing: bool,
    /// Bearer tokens (empty: open). Also `PIXPOOL_API_TOKENS`.
    pub api_tokens: Vec<String>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Address of the admin listener serving `/metrics`, or `off`.
    pub admin: String,
    /// Origins whose pages may post to an open API, besides the server's own.
    pub allowed_origins: Vec<String>,
    /// File-creation mask of the whole tree; unset: 0027, or the inherited
    /// umask where that is stricter (see [`crate::umask::apply`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<crate::umask::Umask>,
    /// NATS servers of the distributed mode's queue, records and events
    /// (comma-separated `nats://host:port`); unset: the embedded queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Replicas of the JetStream stream and KV buckets (3 in a cluster).
    pub queue_replicas: usize,
    /// Seconds a job pulled by an unresponsive worker waits before redelivery.
    pub queue_ack_wait_secs: u64,
    /// Object store of originals and variants, `s3://BUCKET[/PREFIX]`; unset: the
    /// uploads directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The operator's webhook endpoint: every job's `job.done` and `job.failed` go
    /// there. Trusted as configured (it may be on loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Prefixes an upload's `callback_url` must start with; empty: uploads name none.
    pub webhook_allow: Vec<String>,
    /// Whether callbacks may reach loopback, private, link-local and multicast
    /// addresses.
    pub webhook_allow_private: bool,
    /// Delivery attempts per event and destination before it is failed.
    pub webhook_max_attempts: u32,
    /// The pause after a first failed attempt, ms; each later one is four times longer.
    pub webhook_retry_base_ms: u64,
    /// The signing secret, `whsec_<base64>`: this file or `PIXPOOL_WEBHOOK_SECRET`,
    /// never a flag (a command line is public). Redacted by `check-config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Jobs finished longer ago than this (`30d`, `12h`, `90s`) are deleted; unset:
    /// kept forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<String>,
    /// Seconds between two sweeps; unset: a quarter of the retention, 1 to 600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_interval_secs: Option<u64>,
    /// Uploads and deletions per client (`5/s`, `300/min`); unset: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// Requests at once after a pause; unset: twice the rate per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<u32>,
}

/// Shortest API token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The operator's `PIXPOOL_API_TOKENS`: comma- or whitespace-separated (a
/// token with spaces belongs in the file). The supervisor never writes this
/// variable, so a SIGHUP sees what the operator set, not a copy of the file.
pub fn api_tokens_from_env() -> Vec<String> {
    std::env::var("PIXPOOL_API_TOKENS")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Default JetStream replicas: a three-node cluster keeps every job through the loss
/// of one node.
pub const DEFAULT_QUEUE_REPLICAS: usize = 3;

/// Default delivery attempts of a webhook: about a day of retries.
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 12;

/// Default worker niceness: see `worker_nice`.
pub const DEFAULT_WORKER_NICE: i32 = 10;

impl Default for Settings {
    fn default() -> Settings {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let limits = pixpool_imaging::Limits::default();
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            uploads: PathBuf::from("./uploads"),
            fronts: (cpus / 2).clamp(1, 4),
            workers: cpus,
            grace_secs: 30,
            max_upload_bytes: pixpool_front::DEFAULT_MAX_UPLOAD_BYTES,
            queue_depth: pixpool_worker::DEFAULT_QUEUE_DEPTH,
            presets: pixpool_imaging::Preset::builtin()
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_pixels: limits.max_pixels,
            max_side: limits.max_width,
            max_frames: limits.max_frames,
            min_free_disk_mb: 512,
            max_connections: pixpool_front::DEFAULT_MAX_CONNECTIONS,
            body_idle_secs: 30,
            min_upload_bytes_per_sec: pixpool_front::DEFAULT_MIN_UPLOAD_BYTES_PER_SEC,
            max_event_streams: pixpool_front::DEFAULT_MAX_EVENT_STREAMS,
            job_timeout_secs: pixpool_worker::DEFAULT_JOB_TIMEOUT.as_secs_f64(),
            recycle_after_jobs: 0,
            recycle_rss_mb: 1024,
            worker_memory_mb: 4096,
            worker_nice: DEFAULT_WORKER_NICE,
            work_stealing: true,
            api_tokens: Vec::new(),
            log_format: LogFormat::Text,
            admin: "127.0.0.1:9464".to_string(),
            allowed_origins: Vec::new(),
            umask: None,
            queue: None,
            queue_replicas: DEFAULT_QUEUE_REPLICAS,
            queue_ack_wait_secs: 30,
            store: None,
            webhook_url: None,
            webhook_allow: Vec::new(),
            webhook_allow_private: false,
            webhook_max_attempts: DEFAULT_WEBHOOK_MAX_ATTEMPTS,
            webhook_retry_base_ms: 1000,
            webhook_secret: None,
            retain: None,
            sweep_interval_secs: None,
            rate_limit: None,
            rate_burst: None,
        }
    }
}

/// Copies each flag (or environment variable) that was given over the setting.
macro_rules! overlay {
    ($settings:ident, $args:ident; $($field:ident),* $(,)?) => {
        $( if let Some(v) = $args.$field.clone() { $settings.$field = v; } )*
    };
}

impl Settings {
    /// Resolves the configuration for `args`: defaults < file < env < flags.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
        let mut s = match &args.config {
            Some(path) => Settings::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).is_file() => {
                Settings::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Settings::default(),
        };
        overlay!(s, args; bind, uploads, fronts, workers, grace_secs, max_upload_bytes,
            queue_depth, max_pixels, max_side, max_frames, min_free_disk_mb, max_connections,
            body_idle_secs, job_timeout_secs, recycle_after_jobs, recycle_rss_mb,
            worker_memory_mb, worker_nice, work_stealing, log_format, admin);
        overlay!(s, args; min_upload_bytes_per_sec, max_event_streams, queue_replicas,
            queue_ack_wait_secs, webhook_allow_private, webhook_max_attempts,
            webhook_retry_base_ms);
        if let Some(url) = &args.webhook_url {
            s.webhook_url = Some(url.clone()).filter(|u| !u.trim().is_empty());
        }
        if let Some(rate) = &args.rate_limit {
            s.rate_limit = Some(rate.clone()).filter(|r| !r.trim().is_empty());
        }
        if args.rate_burst.is_some() {
            s.rate_burst = args.rate_burst;
        }
        if args.sweep_interval_secs.is_some() {
            s.sweep_interval_secs = args.sweep_interval_secs;
        }
        if let Some(retain) = &args.retain {
            s.retain = Some(retain.clone()).filter(|r| !r.trim().is_empty());
        }
        if !args.webhook_allow.is_empty() {
            s.webhook_allow = args.webhook_allow.clone();
        }
        // The secret never comes from a flag: the environment or the file.
        if let Ok(secret) = std::env::var("PIXPOOL_WEBHOOK_SECRET") {
            s.webhook_secret = Some(secret).filter(|v| !v.trim().is_empty());
        }
        // An empty value unsets (the embedded default), so an environment file can
        // switch a host back without editing the unit.
        if let Some(q) = &args.queue {
            s.queue = Some(q.clone()).filter(|q| !q.trim().is_empty());
        }
        if let Some(url) = &args.store {
            s.store = Some(url.clone()).filter(|u| !u.trim().is_empty());
        }
        if args.umask.is_some() {
            s.umask = args.umask;
        }
        if !args.allowed_origins.is_empty() {
            s.allowed_origins = args.allowed_origins.clone();
        }
        if !args.presets.is_empty() {
            s.presets = args.presets.iter().map(ToString::to_string).collect();
        }
        let env_tokens = api_tokens_from_env();
        if !env_tokens.is_empty() {
            s.api_tokens = env_tokens;
        }
        s.validate()?;
        Ok(s)
    }

    /// Reads a TOML file (unknown keys are errors); unset keys keep their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.fronts > 64 {
            bail!("fronts must be between 1 and 64 (got {})", self.fronts);
        }
        if self.workers > 256 {
            bail!("workers must be between 1 and 256 (got {})", self.workers);
        }
        // A host without fronts or without workers is half of a service: the other
        // half must be elsewhere, which only a shared queue allows.
        match (self.fronts, self.workers) {
            (0, 0) => bail!("fronts and workers cannot both be 0"),
            (0, _) | (_, 0) if self.queue.is_none() => bail!(
                "fronts = 0 or workers = 0 needs a shared queue (`queue`, --queue): \
                 without it no other host can take or run this host's jobs"
            ),
            _ => {}
        }
        if let Some(q) = &self.queue {
            for url in q.split(',').map(str::trim) {
                if !(url.starts_with("nats://") && url.len() > "nats://".len()) {
                    bail!("queue: {url:?} is not a server address like nats://host:4222");
                }
            }
            // A heartbeat every third of it must land even on a loaded machine.
            if !(3..=3600).contains(&self.queue_ack_wait_secs) {
                bail!(
                    "queue_ack_wait_secs must be between 3 and 3600 (got {})",
                    self.queue_ack_wait_secs
                );
            }
            if !(1..=5).contains(&self.queue_replicas) {
                bail!(
                    "queue_replicas must be between 1 and 5 (got {})",
                    self.queue_replicas
                );
            }
        }
        if let Some(url) = &self.store {
            pixpool_store::s3::parse_url(url).with_context(|| format!("store: {url:?}"))?;
            if self.queue.is_none() {
                bail!(
                    "store = {url:?} needs a shared queue (`queue`, --queue): the object \
                     store is the distributed mode's, for several hosts"
                );
            }
        }
        if !(0..=19).contains(&self.worker_nice) {
            bail!(
                "worker_nice must be between 0 and 19 (got {})",
                self.worker_nice
            );
        }
        if self.queue_depth == 0 {
            bail!("queue_depth must be at least 1");
        }
        if self.max_event_streams == 0 {
            bail!("max_event_streams must be at least 1");
        }
        if !(self.job_timeout_secs.is_finite() && self.job_timeout_secs > 0.0) {
            bail!("job_timeout_secs must be a positive number of seconds");
        }
        for (i, t) in self.api_tokens.iter().enumerate() {
            // Checked as given: a token is never split or trimmed on its way to a front.
            if t.len() < MIN_TOKEN_LEN {
                bail!(
                    "API token #{} is shorter than {MIN_TOKEN_LEN} characters",
                    i + 1
                );
            }
            // What an `Authorization` header can carry, and what a front compares
            // after trimming: visible ASCII, inner spaces allowed.
            if !t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) || t.trim() != t {
                bail!(
                    "API token #{} must be printable ASCII without leading or trailing spaces",
                    i + 1
                );
            }
        }
        for origin in &self.allowed_origins {
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .unwrap_or("");
            if authority.is_empty() || authority.trim_end_matches('/').contains('/') {
                bail!("allowed_origins: {origin:?} is not an origin like https://app.example.com");
            }
        }
        if let Some(umask) = self.umask {
            umask.validate()?;
        }
        self.validate_webhooks()?;
        self.retention()?;
        self.rate()?;
        self.admin_addr()?;
        self.presets().map(|_| ())
    }

    /// The per-client rate of uploads and deletions; `None`: unlimited.
    pub fn rate(&self) -> anyhow::Result<Option<pixpool_limiter::Rate>> {
        match &self.rate_limit {
            Some(spec) => Ok(Some(
                pixpool_limiter::Rate::parse(spec, self.rate_burst).context("rate_limit")?,
            )),
            None if self.rate_burst.is_some() => bail!("rate_burst needs rate_limit"),
            None => Ok(None),
        }
    }

    /// How long finished jobs are kept; `None`: forever.
    pub fn retention(&self) -> anyhow::Result<Option<std::time::Duration>> {
        let Some(text) = &self.retain else {
            return Ok(None);
        };
        let retain = humantime::parse_duration(text.trim())
            .with_context(|| format!("retain: {text:?} is not a duration like 30d, 12h or 90s"))?;
        if retain < std::time::Duration::from_secs(1) {
            bail!("retain must be at least 1s (got {text:?})");
        }
        if let Some(secs) = self.sweep_interval_secs {
            if !(1..=86_400).contains(&secs) {
                bail!("sweep_interval_secs must be between 1 and 86400 (got {secs})");
            }
        }
        Ok(Some(retain))
    }

    /// The pause between two sweeps: as set, else a quarter of the retention (a job
    /// outlives it by that at most), from 1 s to 10 min.
    pub fn sweep_interval(&self, retain: std::time::Duration) -> std::time::Duration {
        use std::time::Duration;
        match self.sweep_interval_secs {
            Some(secs) => Duration::from_secs(secs),
            None => (retain / 4).clamp(Duration::from_secs(1), Duration::from_secs(600)),
        }
    }

    /// Whether any webhook destination is configured (the courier then runs).
    pub fn webhooks_enabled(&self) -> bool {
        self.webhook_url.is_some() || !self.webhook_allow.is_empty()
    }

    /// The per-upload callback rules.
    pub fn callback_policy(&self) -> anyhow::Result<pixpool_webhook::CallbackPolicy> {
        pixpool_webhook::CallbackPolicy::new(&self.webhook_allow, self.webhook_allow_private)
            .context("webhook_allow")
    }

    fn validate_webhooks(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.webhook_url {
            let parsed = url::Url::parse(url)
                .with_context(|| format!("webhook_url: {url:?} is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                bail!("webhook_url: {url:?} is not an http or https URL");
            }
        }
        self.callback_policy()?;
        if !(1..=100).contains(&self.webhook_max_attempts) {
            bail!(
                "webhook_max_attempts must be between 1 and 100 (got {})",
                self.webhook_max_attempts
            );
        }
        if !(10..=3_600_000).contains(&self.webhook_retry_base_ms) {
            bail!(
                "webhook_retry_base_ms must be between 10 and 3600000 (got {})",
                self.webhook_retry_base_ms
            );
        }
        match &self.webhook_secret {
            Some(secret) => {
                pixpool_webhook::Secret::parse(secret).context("webhook_secret")?;
            }
            None if self.webhooks_enabled() => bail!(
                "a webhook destination (webhook_url, webhook_allow) needs a signing secret: \
                 set PIXPOOL_WEBHOOK_SECRET (or webhook_secret in the configuration file) \
                 to whsec_ followed by a base64 key"
            ),
            None => {}
        }
        Ok(())
    }

    /// The admin listener's address; `None` when `admin = "off"`.
    pub fn admin_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.admin == "off" {
            return Ok(None);
        }
        self.admin
            .parse()
            .map(Some)
            .with_context(|| format!("admin must be an address or \"off\" (got {:?})", self.admin))
    }

    /// The presets, parsed and checked.
    pub fn presets(&self) -> anyhow::Result<Vec<pixpool_imaging::Preset>> {
        if self.presets.is_empty() {
            bail!("invalid preset configuration: at least one preset is needed");
        }
        let presets = self
            .presets
            .iter()
            .map(|s| s.parse::<pixpool_imaging::Preset>())
            .collect::<Result<Vec<_>, _>>()
            .context("invalid preset configuration")?;
        pixpool_imaging::preset::validate_presets(&presets)
            .context("invalid preset configuration")?;
        Ok(presets)
    }

    /// The configuration as TOML, tokens redacted: what `check-config` prints.
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        shown.api_tokens = shown
            .api_tokens
            .iter()
            .map(|_| "<redacted>".to_string())
            .collect();
        if shown.webhook_secret.is_some() {
            shown.webhook_secret = Some("<redacted>".to_string());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# could not render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_and_validate() {
        let s = Settings::default();
        s.validate().expect("defaults are valid");
        let text = toml::to_string_pretty(&s).expect("render");
        let back: Settings = toml::from_str(&text).expect("parse");
        assert_eq!(back, s);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<Settings>("bnid = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<Settings>("workers = \"four\"").is_err());
        let s: Settings = toml::from_str("workers = 0").expect("parses");
        assert!(s.validate().is_err());
        let s: Settings = toml::from_str("presets = [\"x:0\"]").expect("parses");
        assert!(s.validate().is_err());
        let s: Settings = toml::from_str("api_tokens = [\"short\"]").expect("parses");
        assert!(s.validate().is_err());
        let s: Settings =
            toml::from_str("api_tokens = [\"correct horse battery staple\"]").expect("parses");
        s.validate().expect("inner spaces are fine");
        for bad in [
            "\" padded-token-0123456789\"",
            "\"tab\\tinside-token-0123\"",
        ] {
            let s: Settings = toml::from_str(&format!("api_tokens = [{bad}]")).expect("parses");
            assert!(s.validate().is_err(), "{bad}");
        }
        let s: Settings = toml::from_str("fronts = 3\npresets = [\"a:10\"]").expect("parses");
        assert_eq!((s.fronts, s.presets.len(), s.grace_secs), (3, 1, 30));
    }
}
