//! The pixpool admin process: every other process (supervisor, fronts,
//! workers) sends it a cumulative metrics snapshot each second over a Unix
//! datagram socket; it adds them up and serves Prometheus text on its own
//! listener, so a scrape never lands on a random front and the supervisor
//! stays a small single-threaded loop.
//!
//! # Layout
//! - [`Aggregate`]: the latest snapshot per process, plus the totals of
//!   processes that were replaced (so counters never go backwards when a
//!   worker is respawned).
//! - [`render`]: the Prometheus text exposition (names, labels and their text
//!   come from `pixpool-metrics`; nothing here spells a series).
//! - [`run`]: the datagram reader and the HTTP server.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pixpool_metrics::{
    Buckets, Counter, Exposition, Gauge, Histogram, JobOutcome, Label, Snapshot,
};
use tracing::{debug, info, warn};

/// A process that has not reported for this long is considered gone: its
/// counters move to the retired totals and its gauges disappear.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// Why the admin process could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The metrics socket could not be bound.
    #[error("could not bind the metrics socket {path}")]
    BindSocket {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The inherited HTTP listener could not be used.
    #[error("could not use the admin listener")]
    Listener(#[source] std::io::Error),
}

/// What one process last said.
#[derive(Debug, Clone)]
struct Live {
    snapshot: Snapshot,
    seen: Instant,
}

/// All processes' metrics.
#[derive(Debug, Default)]
pub struct Aggregate {
    /// Latest snapshot per (role, slot).
    live: BTreeMap<(Label, u32), Live>,
    /// Counters of processes that were replaced or went away.
    retired_counters: BTreeMap<Counter, u64>,
    /// Histograms of processes that were replaced or went away.
    retired_histograms: BTreeMap<Histogram, Buckets>,
}

impl Aggregate {
    fn retire(&mut self, old: Snapshot) {
        for (k, v) in old.counters {
            *self.retired_counters.entry(k).or_default() += v;
        }
        for (k, h) in old.histograms {
            self.retired_histograms.entry(k).or_default().merge(&h);
        }
    }

    /// Takes in one snapshot.
    pub fn update(&mut self, snap: Snapshot) {
        let key = (snap.role.clone(), snap.slot);
        if let Some(prev) = self.live.get(&key) {
            if prev.snapshot.pid != snap.pid {
                let old = prev.snapshot.clone();
                self.retire(old);
            }
        }
        self.live.insert(
            key,
            Live {
                snapshot: snap,
                seen: Instant::now(),
            },
        );
    }

    /// Retires processes that stopped reporting.
    pub fn expire(&mut self, now: Instant) {
        let stale: Vec<_> = self
            .live
            .iter()
            .filter(|(_, l)| now.duration_since(l.seen) > STALE_AFTER)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(l) = self.live.remove(&k) {
                self.retire(l.snapshot);
            }
        }
    }

    /// Counters summed over every process, past and present.
    pub fn counters(&self) -> BTreeMap<Counter, u64> {
        let mut out = self.retired_counters.clone();
        for l in self.live.values() {
            for (k, v) in &l.snapshot.counters {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    fn histograms(&self) -> BTreeMap<Histogram, Buckets> {
        let mut out = self.retired_histograms.clone();
        for l in self.live.values() {
            for (k, h) in &l.snapshot.histograms {
                out.entry(k.clone()).or_default().merge(h);
            }
        }
        out
    }
}

/// Resident set size of a process, from /proc.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The Prometheus text exposition of everything.
pub fn render(agg: &Aggregate) -> String {
    let mut scrape = Exposition::new();
    for (series, v) in agg.counters() {
        scrape.counter(&series, v);
    }
    for (series, h) in agg.histograms() {
        scrape.histogram(&series, &h);
    }
    for l in agg.live.values() {
        let s = &l.snapshot;
        for (series, v) in &s.gauges {
            scrape.gauge(series, *v);
        }
        if let Some(bytes) = rss_of(s.pid) {
            let series = Gauge::ProcessRss {
                role: s.role.clone(),
                slot: s.slot,
                pid: s.pid,
            };
            scrape.gauge(&series, bytes as f64);
        }
    }
    if let Some(bytes) = rss_of(std::process::id()) {
        let series = Gauge::ProcessRss {
            role: Label::from("admin"),
            slot: 0,
            pid: std::process::id(),
        };
        scrape.gauge(&series, bytes as f64);
    }
    scrape.finish()
}

/// Jobs that ended, whatever the outcome: the dashboard's throughput.
fn jobs_ended(counters: &BTreeMap<Counter, u64>) -> u64 {
    counters
        .iter()
        .filter(|(k, _)| matches!(k, Counter::Jobs { .. }))
        .map(|(_, v)| v)
        .sum()
}

/// The dashboard's summary: written to `stats.json` beside the metrics socket
/// every second, where any front can serve it.
pub fn summary(agg: &Aggregate, jobs_per_s: f64) -> serde_json::Value {
    let mut workers = 0;
    let mut busy = 0.0;
    let mut queued = 0.0;
    let mut rss: BTreeMap<String, u64> = BTreeMap::new();
    for l in agg.live.values() {
        let s = &l.snapshot;
        if s.role.as_str() == "worker" {
            workers += 1;
        }
        for (k, v) in &s.gauges {
            match k {
                Gauge::WorkerBusy { .. } => busy += v,
                Gauge::QueueDepth { .. } => queued += v,
                Gauge::ProcessRss { .. } => {}
            }
        }
        *rss.entry(s.role.to_string()).or_default() += rss_of(s.pid).unwrap_or(0);
    }
    let counters = agg.counters();
    let jobs = |outcome| {
        counters
            .get(&Counter::Jobs { outcome })
            .copied()
            .unwrap_or(0)
    };
    serde_json::json!({
        "workers": workers,
        "workers_busy": busy,
        "queued": queued,
        "jobs_done": jobs(JobOutcome::Done),
        "jobs_failed": jobs(JobOutcome::Failed),
        "jobs_per_s": jobs_per_s,
        "rss_bytes": rss,
    })
}

/// Reads snapshots from `socket` and serves `/metrics` on `listener` until
/// `shutdown` resolves.
pub async fn run(
    listener: std::net::TcpListener,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> Result<(), AdminError> {
    let _ = std::fs::remove_file(socket);
    let sock = tokio::net::UnixDatagram::bind(socket).map_err(|source| AdminError::BindSocket {
        path: socket.to_path_buf(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(AdminError::Listener)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(AdminError::Listener)?;
    let addr = listener.local_addr().map_err(AdminError::Listener)?;
    let agg = Arc::new(Mutex::new(Aggregate::default()));

    let reader_agg = agg.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; pixpool_protocol::MAX_FRAME_LEN + 4];
        loop {
            let n = match sock.recv(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(cause = %e, "metrics socket read failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match pixpool_protocol::frame::decode::<Snapshot>(&buf[..n]) {
                Ok(Some((snap, _))) => {
                    let mut a = reader_agg.lock().unwrap_or_else(|p| p.into_inner());
                    a.update(snap);
                    a.expire(Instant::now());
                }
                Ok(None) => debug!("truncated metrics datagram"),
                Err(e) => debug!(cause = %e, "bad metrics datagram"),
            }
        }
    });

    let stats_agg = agg.clone();
    let stats_path = socket.with_file_name("stats.json");
    let stats = tokio::spawn(async move {
        let mut history: std::collections::VecDeque<(Instant, u64)> = Default::default();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let body = {
                let mut a = stats_agg.lock().unwrap_or_else(|p| p.into_inner());
                a.expire(Instant::now());
                let done = jobs_ended(&a.counters());
                history.push_back((Instant::now(), done));
                while history.len() > 11 {
                    history.pop_front();
                }
                let rate = match (history.front(), history.back()) {
                    (Some(a), Some(b)) if b.0 > a.0 => {
                        (b.1.saturating_sub(a.1)) as f64 / b.0.duration_since(a.0).as_secs_f64()
                    }
                    _ => 0.0,
                };
                summary(&a, rate).to_string()
            };
            // Temp file + rename: a front never serves half a file.
            let tmp = stats_path.with_extension("json.tmp");
            if std::fs::write(&tmp, body).is_ok() {
                let _ = std::fs::rename(&tmp, &stats_path);
            }
        }
    });
    info!("admin listening on {addr}");
    on_ready();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let agg = agg.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let agg = agg.clone();
                        async move { Ok::<_, Infallible>(respond(&agg, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    reader.abort();
    stats.abort();
    let _ = std::fs::remove_file(socket);
    Ok(())
}

fn respond(agg: &Mutex<Aggregate>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut a = agg.lock().unwrap_or_else(|p| p.into_inner());
            a.expire(Instant::now());
            *resp.body_mut() = Full::new(Bytes::from(render(&a)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
        }
        (&Method::GET, "/health") => *resp.body_mut() = Full::new(Bytes::from_static(b"ok\n")),
        _ => *resp.status_mut() = StatusCode::NOT_FOUND,
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload_202() -> Counter {
        Counter::HttpRequests {
            route: Label::from("upload"),
            code: 202,
        }
    }

    fn snap(role: &'static str, pid: u32, requests: u64) -> Snapshot {
        let mut s = Snapshot::new(Label::from(role), 0, pid);
        s.counters.insert(upload_202(), requests);
        let mut h = Buckets::default();
        h.observe(0.2);
        s.histograms.insert(Histogram::JobDuration, h);
        s
    }

    #[test]
    fn counters_survive_a_restarted_process_and_render_as_prometheus_text() {
        let mut agg = Aggregate::default();
        agg.update(snap("front", 10, 5));
        agg.update(snap("front", 10, 7));
        agg.update(snap("front", 11, 2)); // respawned: old total retired
        let key = "pixpool_http_requests_total{route=\"upload\",code=\"202\"}";
        assert_eq!(agg.counters()[&upload_202()], 9);
        let text = render(&agg);
        assert!(
            text.contains("# TYPE pixpool_http_requests_total counter"),
            "{text}"
        );
        assert!(text.contains(&format!("{key} 9")), "{text}");
        assert!(
            text.contains("pixpool_job_duration_seconds_bucket{le=\"0.25\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pixpool_job_duration_seconds_count 2"),
            "{text}"
        );
    }

    #[test]
    fn a_snapshot_crosses_the_codec_whole_and_sums_into_the_dashboard() {
        let metrics = pixpool_metrics::Recorder::new("worker", 1);
        metrics.add(upload_202(), 3);
        metrics.inc(Counter::Jobs {
            outcome: JobOutcome::Done,
        });
        metrics.inc(Counter::Jobs {
            outcome: JobOutcome::Retry,
        });
        metrics.observe(Histogram::JobDuration, Duration::from_millis(200));
        metrics.set(Gauge::QueueDepth { worker: 1 }, 4.0);
        metrics.set(Gauge::WorkerBusy { worker: 1 }, 1.0);
        let snap = metrics.snapshot();
        let bytes = pixpool_protocol::frame::encode(&snap).expect("encode");
        let (back, used) = pixpool_protocol::frame::decode::<Snapshot>(&bytes)
            .expect("decode")
            .expect("whole");
        assert_eq!((&back, used), (&snap, bytes.len()));

        let mut agg = Aggregate::default();
        agg.update(back);
        let stats = summary(&agg, 0.0);
        assert_eq!(stats["workers"], 1, "{stats}");
        assert_eq!(stats["queued"], 4.0, "{stats}");
        assert_eq!(stats["workers_busy"], 1.0, "{stats}");
        assert_eq!(stats["jobs_done"], 1, "{stats}");
        assert_eq!(jobs_ended(&agg.counters()), 2);
        let text = render(&agg);
        assert!(
            text.contains("pixpool_queue_depth{worker=\"1\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("pixpool_jobs_total{outcome=\"retry\"} 1"),
            "{text}"
        );
    }
}
