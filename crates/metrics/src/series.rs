//! The series: every metric pixpool records, each with one name and one label
//! set, so that a misspelt name or label is a compile error instead of a new
//! series nobody scrapes.
//!
//! A [`Family`] is one Prometheus metric (name, type, help, label names). A
//! series is one labelled instance of a family, typed by what can be done with
//! it: a [`Counter`] is only added to, a [`Gauge`] only set, a [`Histogram`]
//! only observed.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A label value from a set fixed at compile time by its owner (a route's
/// name, a problem's slug, a process role). Built only from `&'static str`:
/// an id, a path or a client's text can never become a label and multiply the
/// series without bound.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Label(Cow<'static, str>);

impl Label {
    /// The value as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Label {
    fn from(s: &'static str) -> Label {
        Label(Cow::Borrowed(s))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Prometheus metric type of a [`Family`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (per process; the admin keeps replaced processes' totals).
    Counter,
    /// A current value.
    Gauge,
    /// A distribution over [`crate::DURATION_BUCKETS`].
    Histogram,
}

impl Kind {
    /// The name on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One Prometheus metric. Its name is spelt once, in [`Family::name`]; the
/// order of the variants is the order of the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `pixpool_http_requests_total{route,code}`.
    HttpRequests,
    /// `pixpool_http_request_duration_seconds{route}`.
    HttpRequestDuration,
    /// `pixpool_upload_bytes_total`.
    UploadBytes,
    /// `pixpool_rejections_total{reason}`.
    Rejections,
    /// `pixpool_jobs_total{outcome}`.
    Jobs,
    /// `pixpool_jobs_stolen_total{worker}`.
    JobsStolen,
    /// `pixpool_job_duration_seconds`.
    JobDuration,
    /// `pixpool_job_stage_seconds{stage}`.
    JobStage,
    /// `pixpool_restarts_total{role}`.
    Restarts,
    /// `pixpool_queue_depth{worker}`.
    QueueDepth,
    /// `pixpool_worker_busy{worker}`.
    WorkerBusy,
    /// `pixpool_process_rss_bytes{role,slot,pid}`.
    ProcessRss,
    /// `pixpool_queue_redeliveries_total`.
    QueueRedeliveries,
    /// `pixpool_queue_ack_seconds{op}`.
    QueueAck,
    /// `pixpool_blob_seconds{op}`.
    BlobDuration,
    /// `pixpool_webhook_deliveries_total{outcome}`.
    WebhookDeliveries,
    /// `pixpool_webhook_delivery_seconds`.
    WebhookDuration,
    /// `pixpool_sweep_removed_total{kind}`.
    SweepRemoved,
    /// `pixpool_sweep_reclaimed_bytes_total`.
    SweepReclaimedBytes,
}

impl Family {
    /// Every family, in exposition order.
    pub const ALL: [Family; 19] = [
        Family::HttpRequests,
        Family::HttpRequestDuration,
        Family::UploadBytes,
        Family::Rejections,
        Family::Jobs,
        Family::JobsStolen,
        Family::JobDuration,
        Family::JobStage,
        Family::Restarts,
        Family::QueueDepth,
        Family::WorkerBusy,
        Family::ProcessRss,
        Family::QueueRedeliveries,
        Family::QueueAck,
        Family::BlobDuration,
        Family::WebhookDeliveries,
        Family::WebhookDuration,
        Family::SweepRemoved,
        Family::SweepReclaimedBytes,
    ];

    /// The metric's name.
    pub fn name(self) -> &'static str {
        match self {
            Family::HttpRequests => "pixpool_http_requests_total",
            Family::HttpRequestDuration => "pixpool_http_request_duration_seconds",
            Family::UploadBytes => "pixpool_upload_bytes_total",
            Family::Rejections => "pixpool_rejections_total",
            Family::Jobs => "pixpool_jobs_total",
            Family::JobsStolen => "pixpool_jobs_stolen_total",
            Family::JobDuration => "pixpool_job_duration_seconds",
            Family::JobStage => "pixpool_job_stage_seconds",
            Family::Restarts => "pixpool_restarts_total",
            Family::QueueDepth => "pixpool_queue_depth",
            Family::WorkerBusy => "pixpool_worker_busy",
            Family::ProcessRss => "pixpool_process_rss_bytes",
            Family::QueueRedeliveries => "pixpool_queue_redeliveries_total",
            Family::QueueAck => "pixpool_queue_ack_seconds",
            Family::BlobDuration => "pixpool_blob_seconds",
            Family::WebhookDeliveries => "pixpool_webhook_deliveries_total",
            Family::WebhookDuration => "pixpool_webhook_delivery_seconds",
            Family::SweepRemoved => "pixpool_sweep_removed_total",
            Family::SweepReclaimedBytes => "pixpool_sweep_reclaimed_bytes_total",
        }
    }

    /// Its type.
    pub fn kind(self) -> Kind {
        match self {
            Family::HttpRequests
            | Family::UploadBytes
            | Family::Rejections
            | Family::Jobs
            | Family::JobsStolen
            | Family::Restarts
            | Family::QueueRedeliveries
            | Family::WebhookDeliveries
            | Family::SweepRemoved
            | Family::SweepReclaimedBytes => Kind::Counter,
            Family::HttpRequestDuration
            | Family::JobDuration
            | Family::JobStage
            | Family::QueueAck
            | Family::BlobDuration
            | Family::WebhookDuration => Kind::Histogram,
            Family::QueueDepth | Family::WorkerBusy | Family::ProcessRss => Kind::Gauge,
        }
    }

    /// The text of its `# HELP` line.
    pub fn help(self) -> &'static str {
        match self {
            Family::HttpRequests => "HTTP requests answered, by route and status code.",
            Family::HttpRequestDuration => "Time to answer an upload (the 202 or the refusal).",
            Family::UploadBytes => "Bytes of accepted uploads.",
            Family::Rejections => "Uploads refused, by problem type.",
            Family::Jobs => "Jobs finished, by outcome.",
            Family::JobsStolen => "Queued jobs an idle worker took from a busy sibling, by taker.",
            Family::JobDuration => "Wall time of one job run in a worker.",
            Family::JobStage => "Time per pipeline stage (decode, resize, encode).",
            Family::Restarts => "Children respawned by the supervisor, by role.",
            Family::QueueDepth => "Jobs queued per worker.",
            Family::WorkerBusy => "1 while a worker runs a job.",
            Family::ProcessRss => "Resident memory per process.",
            Family::QueueRedeliveries => {
                "Jobs a worker received again from the shared queue (their worker died or stalled)."
            }
            Family::QueueAck => {
                "Time for the shared queue to acknowledge a job published (publish) or finished (ack)."
            }
            Family::BlobDuration => "Time of one object-store call, by operation.",
            Family::WebhookDeliveries => {
                "Webhook delivery attempts, by outcome (delivered, retry, failed, refused)."
            }
            Family::WebhookDuration => {
                "Time of one webhook delivery attempt, request sent to answer read."
            }
            Family::SweepRemoved => {
                "What the retention sweep removed: jobs past --retain (expired), files no job names (orphan)."
            }
            Family::SweepReclaimedBytes => "Bytes the retention sweep gave back.",
        }
    }

    /// The names of its labels, in the order they are written.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Family::HttpRequests => &["route", "code"],
            Family::HttpRequestDuration => &["route"],
            Family::UploadBytes
            | Family::JobDuration
            | Family::QueueRedeliveries
            | Family::WebhookDuration
            | Family::SweepReclaimedBytes => &[],
            Family::SweepRemoved => &["kind"],
            Family::WebhookDeliveries => &["outcome"],
            Family::QueueAck | Family::BlobDuration => &["op"],
            Family::Rejections => &["reason"],
            Family::Jobs => &["outcome"],
            Family::JobsStolen | Family::QueueDepth | Family::WorkerBusy => &["worker"],
            Family::JobStage => &["stage"],
            Family::Restarts => &["role"],
            Family::ProcessRss => &["role", "slot", "pid"],
        }
    }
}

/// How one run of a job ended (`pixpool_jobs_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobOutcome {
    /// Every output written.
    Done,
    /// Failed for good.
    Failed,
    /// A server-side failure: the job runs again after a pause.
    Retry,
    /// Nothing to do (already final, or no record).
    Skipped,
    /// Overran its time limit (failed; the worker is replaced).
    Timeout,
}

impl JobOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::Failed => "failed",
            JobOutcome::Retry => "retry",
            JobOutcome::Skipped => "skipped",
            JobOutcome::Timeout => "timeout",
        }
    }
}

/// A pipeline stage (`pixpool_job_stage_seconds{stage}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Reading and decoding the original.
    Decode,
    /// Resizing to every preset.
    Resize,
    /// Encoding the outputs.
    Encode,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Resize => "resize",
            Stage::Encode => "encode",
        }
    }
}

/// A counter series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Counter {
    /// One HTTP request answered.
    HttpRequests {
        /// The route's label (the front's route table owns the names).
        route: Label,
        /// The status code sent.
        code: u16,
    },
    /// Bytes of an accepted upload.
    UploadBytes,
    /// One upload refused.
    Rejections {
        /// The problem type's slug (`too-large`, `unsupported-format`, …).
        reason: Label,
    },
    /// One run of a job ended.
    Jobs {
        /// How.
        outcome: JobOutcome,
    },
    /// One queued job taken from a busy sibling.
    JobsStolen {
        /// The slot of the worker that took it.
        worker: u32,
    },
    /// One child respawned by the supervisor.
    Restarts {
        /// The child's role (`front`, `worker`, `admin`).
        role: Label,
    },
    /// One job delivered again by the shared queue.
    QueueRedeliveries,
    /// Things the retention sweep removed.
    SweepRemoved {
        /// `expired` (a job past `--retain`) or `orphan` (a file no job names).
        kind: Label,
    },
    /// Bytes the retention sweep gave back.
    SweepReclaimedBytes,
    /// One webhook delivery attempt ended.
    WebhookDeliveries {
        /// `delivered` (2xx), `retry` (tried again later), `failed` (410, or the
        /// attempts ran out), `refused` (the destination's address is not allowed).
        outcome: Label,
    },
}

/// A gauge series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Gauge {
    /// Jobs queued on a worker.
    QueueDepth {
        /// The worker's slot.
        worker: u32,
    },
    /// 1 while a worker runs a job, 0 otherwise.
    WorkerBusy {
        /// The worker's slot.
        worker: u32,
    },
    /// A process's resident memory (the admin reads it from `/proc`).
    ProcessRss {
        /// The process's role.
        role: Label,
        /// Its slot.
        slot: u32,
        /// Its pid.
        pid: u32,
    },
}

/// A histogram series (durations, in seconds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Histogram {
    /// Time to answer an upload (`route="upload"`: the only route timed).
    UploadDuration,
    /// Wall time of one job run.
    JobDuration,
    /// Time of one pipeline stage.
    JobStage {
        /// Which.
        stage: Stage,
    },
    /// Time for the shared queue to acknowledge one operation.
    QueueAck {
        /// `publish` (a front's enqueue) or `ack` (a worker's finished job).
        op: Label,
    },
    /// Time of one object-store call.
    BlobDuration {
        /// `put_original`, `get_original`, `put_variant`, `get_variant`, `delete`.
        op: Label,
    },
    /// Time of one webhook delivery attempt.
    WebhookDuration,
}

/// What every series has: a family and the values of its labels.
pub trait Series {
    /// The metric this series belongs to.
    fn family(&self) -> Family;

    /// The label values, in the order of [`Family::label_names`].
    fn label_values(&self) -> Vec<Cow<'_, str>>;

    /// Label names paired with their values.
    fn labels(&self) -> Vec<(&'static str, Cow<'_, str>)> {
        let names = self.family().label_names();
        let values = self.label_values();
        debug_assert_eq!(names.len(), values.len(), "{:?}", self.family());
        names.iter().copied().zip(values).collect()
    }
}

impl Series for Counter {
    fn family(&self) -> Family {
        match self {
            Counter::HttpRequests { .. } => Family::HttpRequests,
            Counter::UploadBytes => Family::UploadBytes,
            Counter::Rejections { .. } => Family::Rejections,
            Counter::Jobs { .. } => Family::Jobs,
            Counter::JobsStolen { .. } => Family::JobsStolen,
            Counter::Restarts { .. } => Family::Restarts,
            Counter::QueueRedeliveries => Family::QueueRedeliveries,
            Counter::WebhookDeliveries { .. } => Family::WebhookDeliveries,
            Counter::SweepRemoved { .. } => Family::SweepRemoved,
            Counter::SweepReclaimedBytes => Family::SweepReclaimedBytes,
        }
    }

    fn label_values(&self) -> Vec<Cow<'_, str>> {
        match self {
            Counter::HttpRequests { route, code } => {
                vec![route.as_str().into(), code.to_string().into()]
            }
            Counter::UploadBytes => vec![],
            Counter::Rejections { reason } => vec![reason.as_str().into()],
            Counter::Jobs { outcome } => vec![outcome.as_str().into()],
            Counter::JobsStolen { worker } => vec![worker.to_string().into()],
            Counter::Restarts { role } => vec![role.as_str().into()],
            Counter::QueueRedeliveries => vec![],
            Counter::WebhookDeliveries { outcome } => vec![outcome.as_str().into()],
            Counter::SweepRemoved { kind } => vec![kind.as_str().into()],
            Counter::SweepReclaimedBytes => vec![],
        }
    }
}

impl Series for Gauge {
    fn family(&self) -> Family {
        match self {
            Gauge::QueueDepth { .. } => Family::QueueDepth,
            Gauge::WorkerBusy { .. } => Family::WorkerBusy,
            Gauge::ProcessRss { .. } => Family::ProcessRss,
        }
    }

    fn label_values(&self) -> Vec<Cow<'_, str>> {
        match self {
            Gauge::QueueDepth { worker } | Gauge::WorkerBusy { worker } => {
                vec![worker.to_string().into()]
            }
            Gauge::ProcessRss { role, slot, pid } => vec![
                role.as_str().into(),
                slot.to_string().into(),
                pid.to_string().into(),
            ],
        }
    }
}

impl Series for Histogram {
    fn family(&self) -> Family {
        match self {
            Histogram::UploadDuration => Family::HttpRequestDuration,
            Histogram::JobDuration => Family::JobDuration,
            Histogram::JobStage { .. } => Family::JobStage,
            Histogram::QueueAck { .. } => Family::QueueAck,
            Histogram::BlobDuration { .. } => Family::BlobDuration,
            Histogram::WebhookDuration => Family::WebhookDuration,
        }
    }

    fn label_values(&self) -> Vec<Cow<'_, str>> {
        match self {
            Histogram::UploadDuration => vec!["upload".into()],
            Histogram::JobDuration | Histogram::WebhookDuration => vec![],
            Histogram::JobStage { stage } => vec![stage.as_str().into()],
            Histogram::QueueAck { op } | Histogram::BlobDuration { op } => {
                vec![op.as_str().into()]
            }
        }
    }
}
