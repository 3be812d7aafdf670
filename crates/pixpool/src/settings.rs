//! What each child role runs with: one struct per role, built once by the
//! supervisor from the resolved [`Settings`] and handed to the child whole, as
//! JSON in its `--settings` argument. A new setting is a field of [`Settings`]
//! (with its flag, variable and key) and a field of the role that uses it.
//!
//! Only what is the same for every slot of a role is here; the slot and the
//! fd numbers stay on the command line (`ps` shows which child is which).
//! Nothing secret may go here, since every user can read a command line: the
//! API tokens travel in the environment (see [`crate::serve::CHILD_TOKENS_VAR`]).
//!
//! On SIGHUP the running supervisor builds these for the executable on disk,
//! which may be newer: a field added later takes `#[serde(default)]`, so that
//! a newer child still starts from an older supervisor's settings. Unknown
//! fields are ignored for the same reason, the other way round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pixpool_imaging::{Limits, Preset};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{LogFormat, Settings};
use crate::exit::ConfigError;

/// Paths the supervisor knows only once it has prepared the uploads tree.
#[derive(Debug, Clone)]
pub struct ChildPaths {
    /// The uploads directory, absolute: children need not share the
    /// supervisor's working directory.
    pub uploads: PathBuf,
    /// The admin process's metrics socket; `None` when `admin = "off"`.
    pub metrics_socket: Option<PathBuf>,
    /// The rate-limit table (made by the supervisor when `rate_limit` is set).
    pub rate_table: PathBuf,
}

/// What fronts and workers both need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommonSettings {
    /// The uploads directory (absolute).
    pub uploads: PathBuf,
    /// How many worker slots exist: fronts route to them, workers adopt the
    /// claims of slots beyond them.
    pub workers: u32,
    /// How long a child gets to drain after SIGTERM.
    pub grace: Duration,
    /// The presets, as their specifications: the same text the operator
    /// wrote, independent of how the imaging crate lays a preset out.
    #[serde(with = "preset_specs")]
    pub presets: Vec<Preset>,
    /// Largest image, pixels (width × height).
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_side: u32,
    /// Most frames of an animation.
    pub max_frames: u32,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where metrics snapshots go (the admin process); `None`: nowhere.
    pub metrics_socket: Option<PathBuf>,
    /// The distributed backend; unset fields: the embedded one.
    #[serde(default)]
    pub backend: BackendSettings,
    /// Completion webhooks; all unset: none.
    #[serde(default)]
    pub webhooks: WebhookSettings,
}

/// Where completion webhooks go, and how hard the courier tries (the secret is not
/// here: it travels in the environment).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookSettings {
    /// The operator's endpoint.
    pub url: Option<String>,
    /// Prefixes an upload's `callback_url` must start with.
    pub allow: Vec<String>,
    /// Callbacks may reach private, loopback, link-local and multicast addresses.
    pub allow_private: bool,
    /// Attempts per event and destination.
    pub max_attempts: u32,
    /// The pause after a first failed attempt.
    pub retry_base: Duration,
}

impl WebhookSettings {
    /// Whether any destination is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.allow.is_empty()
    }

    /// The per-upload callback rules (checked by the supervisor already).
    pub fn policy(&self) -> Result<pixpool_webhook::CallbackPolicy, ConfigError> {
        pixpool_webhook::CallbackPolicy::new(&self.allow, self.allow_private)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

/// Where jobs, records and files live when they are shared between hosts. Every
/// field unset: the embedded backend (this host's uploads directory and workers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendSettings {
    /// NATS servers (comma-separated `nats://host:port`).
    pub queue: Option<String>,
    /// Replicas of the JetStream stream and KV buckets.
    pub queue_replicas: usize,
    /// How long a pulled job waits for a sign of life before redelivery.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// `s3://BUCKET[/PREFIX]`; `None` with a queue: the uploads directory.
    pub store: Option<String>,
}

/// What a front runs with, besides its slot and listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontSettings {
    /// Shared with the workers.
    pub common: CommonSettings,
    /// Upload size limit, bytes.
    pub max_upload_bytes: u64,
    /// Uploads are refused (507) below this much free disk, bytes.
    pub min_free_bytes: u64,
    /// Connections served at once.
    pub max_connections: usize,
    /// A request body silent for this long is cut off (408).
    pub body_idle_timeout: Duration,
    /// Slowest request body accepted, bytes/s (0: no minimum).
    pub min_upload_bytes_per_sec: u64,
    /// Event streams open at once.
    pub max_event_streams: usize,
    /// Origins whose pages may post to an open API.
    pub allowed_origins: Vec<String>,
    /// Per-client rate limits; `None`: unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSettings>,
}

/// The per-client rate and the tree's shared table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitSettings {
    /// Requests per second.
    pub per_second: f64,
    /// Requests at once.
    pub burst: u32,
    /// The shared table the supervisor made.
    pub table: PathBuf,
}

/// What a worker runs with, besides its slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// Shared with the fronts.
    pub common: CommonSettings,
    /// Jobs queued before more are refused.
    pub queue_depth: usize,
    /// Wall-clock limit of one job.
    pub job_timeout: Duration,
    /// Replace the process after this many jobs (0: never).
    pub recycle_after_jobs: u64,
    /// Replace the process once its RSS passes this after a job, bytes (0: never).
    pub recycle_rss_bytes: u64,
    /// The process's address-space limit, bytes (0: none).
    pub memory_limit_bytes: u64,
    /// Niceness increment applied at start.
    pub nice: i32,
    /// Take queued jobs from busy siblings when idle.
    pub steal: bool,
}

/// What the webhook courier runs with: the backend it reads the outbox and records
/// from, and the webhook settings (all in [`CommonSettings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CourierSettings {
    /// Uploads, backend, logs, metrics, webhooks.
    pub common: CommonSettings,
}

impl CourierSettings {
    /// The courier's settings from the resolved configuration.
    pub fn new(s: &Settings, paths: &ChildPaths) -> anyhow::Result<CourierSettings> {
        Ok(CourierSettings {
            common: CommonSettings::new(s, paths)?,
        })
    }
}

/// What the retention sweeper runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweeperSettings {
    /// Uploads, backend, logs, metrics.
    pub common: CommonSettings,
    /// Jobs finished longer ago are removed.
    pub retain: Duration,
    /// The pause between two sweeps.
    pub every: Duration,
}

impl SweeperSettings {
    /// The sweeper's settings; `None` when nothing is to be swept (no `retain`).
    pub fn new(s: &Settings, paths: &ChildPaths) -> anyhow::Result<Option<SweeperSettings>> {
        let Some(retain) = s.retention()? else {
            return Ok(None);
        };
        Ok(Some(SweeperSettings {
            common: CommonSettings::new(s, paths)?,
            retain,
            every: s.sweep_interval(retain),
        }))
    }
}

/// What the admin process runs with, besides its listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminSettings {
    /// Log line format.
    pub log_format: LogFormat,
    /// The socket the other children send their metrics snapshots to.
    pub metrics_socket: PathBuf,
}

const MIB: u64 = 1024 * 1024;

impl CommonSettings {
    /// The part of `s` both fronts and workers need.
    pub fn new(s: &Settings, paths: &ChildPaths) -> anyhow::Result<CommonSettings> {
        Ok(CommonSettings {
            uploads: paths.uploads.clone(),
            workers: s.workers,
            grace: Duration::from_secs(s.grace_secs),
            presets: s.presets()?,
            max_pixels: s.max_pixels,
            max_side: s.max_side,
            max_frames: s.max_frames,
            log_format: s.log_format,
            metrics_socket: paths.metrics_socket.clone(),
            backend: BackendSettings {
                queue: s.queue.clone(),
                queue_replicas: s.queue_replicas,
                ack_wait: Duration::from_secs(s.queue_ack_wait_secs),
                store: s.store.clone(),
            },
            webhooks: WebhookSettings {
                url: s.webhook_url.clone(),
                allow: s.webhook_allow.clone(),
                allow_private: s.webhook_allow_private,
                max_attempts: s.webhook_max_attempts,
                retry_base: Duration::from_millis(s.webhook_retry_base_ms),
            },
        })
    }

    /// What the supervisor validated, checked again by the child: an
    /// executable replaced in place may judge presets differently.
    pub fn check(&self) -> Result<(), ConfigError> {
        pixpool_imaging::preset::validate_presets(&self.presets).map_err(ConfigError::Presets)
    }

    /// The image limits; the ones without a setting keep their defaults.
    pub fn limits(&self) -> Limits {
        Limits {
            max_width: self.max_side,
            max_height: self.max_side,
            max_pixels: self.max_pixels,
            max_frames: self.max_frames,
            ..Limits::default()
        }
    }
}

impl FrontSettings {
    /// The fronts' settings from the resolved configuration.
    pub fn new(s: &Settings, paths: &ChildPaths) -> anyhow::Result<FrontSettings> {
        Ok(FrontSettings {
            common: CommonSettings::new(s, paths)?,
            max_upload_bytes: s.max_upload_bytes,
            min_free_bytes: s.min_free_disk_mb.saturating_mul(MIB),
            max_connections: s.max_connections,
            // A zero timeout would cut off every body before its first byte.
            body_idle_timeout: Duration::from_secs(s.body_idle_secs.max(1)),
            min_upload_bytes_per_sec: s.min_upload_bytes_per_sec,
            max_event_streams: s.max_event_streams,
            allowed_origins: s.allowed_origins.clone(),
            rate_limit: s.rate()?.map(|rate| RateLimitSettings {
                per_second: rate.per_second,
                burst: rate.burst,
                table: paths.rate_table.clone(),
            }),
        })
    }
}

impl WorkerSettings {
    /// The workers' settings from the resolved configuration.
    pub fn new(s: &Settings, paths: &ChildPaths) -> anyhow::Result<WorkerSettings> {
        Ok(WorkerSettings {
            common: CommonSettings::new(s, paths)?,
            queue_depth: s.queue_depth,
            // Validated positive and finite; what still makes no usable
            // Duration (too large, or below a nanosecond) gets the default.
            job_timeout: Duration::try_from_secs_f64(s.job_timeout_secs)
                .ok()
                .filter(|d| !d.is_zero())
                .unwrap_or(pixpool_worker::DEFAULT_JOB_TIMEOUT),
            recycle_after_jobs: s.recycle_after_jobs,
            recycle_rss_bytes: s.recycle_rss_mb.saturating_mul(MIB),
            memory_limit_bytes: s.worker_memory_mb.saturating_mul(MIB),
            nice: s.worker_nice,
            steal: s.work_stealing,
        })
    }
}

impl AdminSettings {
    /// The admin process's settings from the resolved configuration.
    pub fn new(s: &Settings, metrics_socket: &Path) -> AdminSettings {
        AdminSettings {
            log_format: s.log_format,
            metrics_socket: metrics_socket.to_path_buf(),
        }
    }
}

/// The `--settings` argument of a child.
pub fn encode<T: Serialize>(settings: &T) -> anyhow::Result<String> {
    serde_json::to_string(settings).context("could not encode a child's settings")
}

/// A child's `--settings` argument, read back. Failure is a configuration
/// error: the same argument would fail again on a respawn.
pub fn decode<T: DeserializeOwned>(json: &str, role: &'static str) -> Result<T, ConfigError> {
    serde_json::from_str(json).map_err(|source| ConfigError::Settings { role, source })
}

/// Presets as their specification strings (`thumb:200x200:cover`), the
/// form [`Preset`]'s `Display` writes and its `FromStr` reads.
mod preset_specs {
    use pixpool_imaging::Preset;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(presets: &[Preset], ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(presets.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Preset>, D::Error> {
        Vec::<String>::deserialize(de)?
            .iter()
            .map(|spec| {
                spec.parse()
                    .map_err(|e| serde::de::Error::custom(format!("preset {spec:?}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> ChildPaths {
        ChildPaths {
            uploads: PathBuf::from("/srv/uploads"),
            metrics_socket: Some(PathBuf::from("/srv/uploads/run/admin.sock")),
            rate_table: PathBuf::from("/srv/uploads/run/ratelimit.table"),
        }
    }

    /// Settings that differ from the defaults wherever they can, so that a
    /// field dropped or swapped on the way shows.
    fn unusual() -> Settings {
        Settings {
            workers: 3,
            grace_secs: 7,
            presets: vec!["a:10x20:cover:png".into(), "b:300:webp:q55".into()],
            max_pixels: 1234,
            max_side: 99,
            max_frames: 5,
            log_format: LogFormat::Json,
            max_upload_bytes: 4321,
            min_free_disk_mb: 2,
            max_connections: 17,
            body_idle_secs: 0,
            min_upload_bytes_per_sec: 3,
            max_event_streams: 4,
            allowed_origins: vec!["https://app.example.com".into()],
            queue_depth: 9,
            job_timeout_secs: 2.5,
            recycle_after_jobs: 11,
            recycle_rss_mb: 12,
            worker_memory_mb: 13,
            worker_nice: 4,
            work_stealing: false,
            queue: Some("nats://a:4222,nats://b:4222".into()),
            queue_replicas: 1,
            queue_ack_wait_secs: 7,
            store: Some("s3://bucket/prefix".into()),
            ..Settings::default()
        }
    }

    fn round_trip<T>(value: &T, role: &'static str)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = encode(value).expect("encode");
        let back: T = decode(&json, role).expect("decode");
        assert_eq!(&back, value, "{json}");
    }

    #[test]
    fn each_role_round_trips_through_its_argument() {
        for s in [Settings::default(), unusual()] {
            s.validate().expect("valid");
            round_trip(&FrontSettings::new(&s, &paths()).expect("front"), "front");
            round_trip(
                &WorkerSettings::new(&s, &paths()).expect("worker"),
                "worker",
            );
            let socket = paths().metrics_socket.expect("socket");
            round_trip(&AdminSettings::new(&s, &socket), "admin");
        }
        let mut no_admin = paths();
        no_admin.metrics_socket = None;
        round_trip(
            &FrontSettings::new(&Settings::default(), &no_admin).expect("front"),
            "front",
        );
    }

    #[test]
    fn values_are_converted_once_into_the_units_children_use() {
        let w = WorkerSettings::new(&unusual(), &paths()).expect("worker");
        assert_eq!(w.job_timeout, Duration::from_millis(2500));
        assert_eq!(w.recycle_rss_bytes, 12 * MIB);
        assert_eq!(w.memory_limit_bytes, 13 * MIB);
        assert!(!w.steal);
        assert_eq!(w.common.grace, Duration::from_secs(7));
        let f = FrontSettings::new(&unusual(), &paths()).expect("front");
        assert_eq!(f.min_free_bytes, 2 * MIB);
        assert_eq!(
            f.body_idle_timeout,
            Duration::from_secs(1),
            "0 is raised to 1 s"
        );
        assert_eq!(f.common.presets, unusual().presets().expect("presets"));
    }

    #[test]
    fn a_bad_argument_is_a_configuration_error_naming_the_role() {
        let cases = [
            "not json".to_string(),
            "{}".to_string(),
            encode(&FrontSettings::new(&Settings::default(), &paths()).expect("front"))
                .expect("encode")
                .replace("thumb:200x200:cover", "thumb:0x"),
        ];
        for bad in cases {
            let err = decode::<FrontSettings>(&bad, "front").expect_err(&bad);
            assert!(matches!(err, ConfigError::Settings { role: "front", .. }));
            let shown = format!("{:#}", anyhow::Error::from(err));
            assert!(shown.contains("front"), "{shown}");
        }
        // The worker's settings are not a front's.
        let worker = encode(&WorkerSettings::new(&Settings::default(), &paths()).expect("worker"))
            .expect("encode");
        assert!(decode::<FrontSettings>(&worker, "front").is_err());
    }
}
