//! The pixpool HTTP front: accepts connections on the listener it inherited
//! from the supervisor (shared by every front), streams uploads to disk and
//! routes each job round-robin to an image worker over IPC.
//!
//! # Layout
//! - [`upload`]: `POST /upload`, streamed with multer, sniffed, journaled, dispatched.
//! - [`dispatch`]: one persistent link per worker; round-robin over the live ones;
//!   job events from the workers go to the [`events::EventHub`].
//! - [`framing`]: bounds on what multer would buffer (preamble, part headers).
//! - [`events`]: following a job — SSE stream and long-poll.
//! - [`pace`]: how fast a request body must arrive (idle limit, minimum rate).
//! - [`images`]: serving the variants (ETag, immutable caching, 304).
//! - `negotiate`: which of a preset's formats a request gets (`Accept`, `?format=`).
//! - [`routes`]: every route, parsed once (dispatch, auth, metric labels).
//! - [`problem`]: every error's status code and problem+json body, in one place.
//! - [`view`]: what a client sees of a job (never paths or internal keys).
//! - [`body`]: the response body type.
//! - this file: the routes, the accept loop and graceful shutdown.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod body;
pub mod dispatch;
pub mod events;
pub mod framing;
pub mod images;
mod negotiate;
pub mod pace;
pub mod problem;
pub mod routes;
pub mod upload;
pub use pixpool_store::view;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pixpool_store::backend::{Blobs, EventItem, Events, Outbox, Queue, Records};
use pixpool_store::embedded::{Bus, FileBlobs, FileRecords};
use pixpool_store::{JobId, Store};
use tracing::{debug, info, instrument, warn};

use crate::body::{json, Body};
use crate::dispatch::Dispatcher;
use crate::problem::ApiError;
use crate::routes::Route;

/// Default upload size limit.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;

/// How long a client may take to send its request headers (slowloris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest request head (request line + headers) accepted; larger gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Default for [`FrontConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default for [`FrontConfig::body_idle_timeout`].
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`FrontConfig::min_upload_bytes_per_sec`]: 16 KiB/s (128 kbit/s,
/// a poor mobile link), averaged over [`pace::RATE_WINDOW`].
pub const DEFAULT_MIN_UPLOAD_BYTES_PER_SEC: u64 = 16 * 1024;

/// Default for [`FrontConfig::max_event_streams`].
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 256;

/// Default for [`FrontConfig::min_free_bytes`]: 512 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 512 * 1024 * 1024;

/// What a front needs to run.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// This front's slot.
    pub slot: u32,
    /// The uploads directory.
    pub store: Store,
    /// How many worker slots exist (socket `run/worker-<n>.sock` each).
    pub workers: u32,
    /// Names of the presets the server knows.
    pub known_presets: Vec<String>,
    /// Presets applied when a request names none.
    pub default_presets: Vec<String>,
    /// Upload size limit in bytes.
    pub max_upload_bytes: u64,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_grace: Duration,
    /// Image limits checked on the header before accepting.
    pub limits: pixpool_imaging::Limits,
    /// Uploads are refused (507) when less disk than this is free.
    pub min_free_bytes: u64,
    /// Connections this front serves at once; more wait in the shared queue
    /// (where another front may take them).
    pub max_connections: usize,
    /// A request body that sends nothing for this long is cut off (408).
    pub body_idle_timeout: Duration,
    /// A request body slower than this over a [`pace::RATE_WINDOW`] is cut
    /// off (408); 0: no minimum.
    pub min_upload_bytes_per_sec: u64,
    /// Event streams (SSE and long-polls) open at once, counted apart from
    /// `max_connections`; more are refused (503).
    pub max_event_streams: usize,
    /// Bearer tokens; empty: the API is open.
    pub api_tokens: Vec<String>,
    /// Each preset's specification by name: dedup keys depend on what a preset
    /// makes, not only on its name.
    pub preset_specs: std::collections::BTreeMap<String, String>,
    /// Origins (`scheme://host[:port]`) whose pages may send state-changing
    /// requests while the API is open, besides the server's own.
    pub allowed_origins: Vec<String>,
    /// Which `callback_url`s an upload may name (none unless prefixes are allowed).
    pub callbacks: pixpool_webhook::CallbackPolicy,
    /// The per-client rate of uploads and deletions, shared by every front; `None`:
    /// unlimited.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// This process's metrics recorder.
    pub metrics: pixpool_metrics::Recorder,
    /// The distributed backend, connected; `None`: the embedded one (this host's
    /// uploads directory and workers).
    pub shared: Option<Shared>,
}

impl FrontConfig {
    /// The presets a request asks for (`a,b,c`), validated; the default set when absent.
    pub fn resolve_presets(&self, asked: Option<&str>) -> Result<Vec<String>, ApiError> {
        let Some(list) = asked.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.default_presets.clone());
        };
        let mut out: Vec<String> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !self.known_presets.iter().any(|k| k == name) {
                return Err(ApiError::UnknownPreset(upload::sanitise_for_log(name)));
            }
            if !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
        }
        // A list that names nothing (`presets=,`) is not "the defaults": it
        // would make a job with no outputs.
        if out.is_empty() {
            return Err(ApiError::UnknownPreset(upload::sanitise_for_log(list)));
        }
        Ok(out)
    }
}

/// Shared by every connection of this front.
#[derive(Debug)]
pub struct State {
    /// Configuration.
    pub config: FrontConfig,
    /// The links to the workers (their liveness, for health and readiness); `None`
    /// with the distributed backend, where workers pull from the shared queue.
    pub dispatcher: Option<Arc<Dispatcher>>,
    /// Job events, for the clients following jobs on this front.
    pub hub: Arc<events::EventHub>,
    /// Job records and the dedup index.
    pub records: Arc<dyn Records>,
    /// Originals and variants.
    pub blobs: Arc<dyn Blobs>,
    /// The queue jobs are handed to workers through.
    pub queue: Arc<dyn Queue>,
    /// The webhooks owed (a deleted job's go with it).
    pub outbox: Arc<dyn Outbox>,
    /// Whether the distributed backend answers (always ready when embedded).
    pub backend_probe: Arc<Probe>,
}

/// Per-client rate limits (`--rate-limit`): the tree's shared table and the rate.
#[derive(Debug)]
pub struct RateLimit {
    /// The table every front of the tree maps.
    pub table: pixpool_limiter::Table,
    /// The rate and burst.
    pub rate: pixpool_limiter::Rate,
}

impl RateLimit {
    /// Counts a request of `client` (its token, when tokens are set) coming from
    /// `ip` (an IPv6 client by its /64, the block one host usually holds).
    fn check(&self, client: Option<&Client>, ip: std::net::IpAddr) -> pixpool_limiter::Decision {
        let key = match (client, ip) {
            (Some(client), _) => format!("token {}", client.tag()),
            (None, std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("ip {:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            (None, ip) => format!("ip {}", ip.to_canonical()),
        };
        self.table
            .check(key.as_bytes(), &self.rate, pixpool_limiter::now_ns())
    }

    /// The `RateLimit-Policy` and `RateLimit` header values (IETF httpapi draft) for
    /// a decision.
    fn headers(&self, d: &pixpool_limiter::Decision) -> [(&'static str, String); 2] {
        [
            (
                "ratelimit-policy",
                format!(
                    "\"default\";q={};w={}",
                    self.rate.burst,
                    self.rate.window_secs()
                ),
            ),
            (
                "ratelimit",
                format!(
                    "\"default\";r={};t={}",
                    d.remaining,
                    d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0)
                ),
            ),
        ]
    }
}

/// The distributed backend's parts, connected by the caller: records, queue and
/// events shared by every host, blobs in an object store (or this host's uploads
/// directory).
#[derive(Debug, Clone)]
pub struct Shared {
    /// Job records and the dedup index.
    pub records: Arc<dyn Records>,
    /// Originals and variants.
    pub blobs: Arc<dyn Blobs>,
    /// The job queue every worker pulls from.
    pub queue: Arc<dyn Queue>,
    /// Job events from every worker.
    pub events: Arc<dyn Events>,
    /// The webhooks owed.
    pub outbox: Arc<dyn Outbox>,
}

impl State {
    fn store(&self) -> &Store {
        &self.config.store
    }
}

/// Why the front could not run.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The inherited listener could not be registered with the runtime.
    #[error("could not use the inherited listener")]
    Listener(#[source] std::io::Error),
}

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (up to the drain grace) and returns.
pub async fn run(
    listener: std::net::TcpListener,
    config: FrontConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> Result<(), FrontError> {
    listener
        .set_nonblocking(true)
        .map_err(FrontError::Listener)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(FrontError::Listener)?;
    let hub = Arc::new(events::EventHub::new(config.max_event_streams));
    let outbox: Arc<dyn Outbox> = match &config.shared {
        Some(shared) => shared.outbox.clone(),
        None => Arc::new(pixpool_store::embedded::FileOutbox::new(
            config.store.clone(),
        )),
    };
    let (records, blobs, queue, feed_from, dispatcher): (_, _, Arc<dyn Queue>, _, _) =
        match config.shared.clone() {
            None => {
                recover_embedded(&config).await;
                let sockets = (0..config.workers)
                    .map(|w| config.store.worker_socket(w))
                    .collect();
                // The workers' events arrive on their links, which publish them on this
                // front's bus; the hub hands them to the clients following each job.
                let bus = Arc::new(Bus::new(EVENT_BUFFER));
                let dispatcher = Arc::new(Dispatcher::start(
                    config.store.clone(),
                    config.slot,
                    sockets,
                    bus.clone(),
                ));
                let records: Arc<dyn Records> = Arc::new(FileRecords::new(config.store.clone()));
                let blobs: Arc<dyn Blobs> = Arc::new(FileBlobs::new(config.store.clone()));
                let queue: Arc<dyn Queue> = dispatcher.clone();
                (records, blobs, queue, bus.subscribe(), Some(dispatcher))
            }
            Some(shared) => {
                recover_shared(&config, &shared).await;
                let events = shared.events.subscribe();
                (shared.records, shared.blobs, shared.queue, events, None)
            }
        };
    let feed = tokio::spawn(feed_hub(feed_from, hub.clone()));
    let grace = config.drain_grace;
    let backend_probe = Arc::new(Probe::default());
    let probing = match dispatcher {
        // The embedded backend is this host's disk and workers: nothing to ask.
        Some(_) => None,
        None => {
            backend_probe.run_once(&*records, &*blobs, &*queue).await;
            Some(tokio::spawn(backend_probe.clone().watch(
                records.clone(),
                blobs.clone(),
                queue.clone(),
            )))
        }
    };
    let state = Arc::new(State {
        records,
        blobs,
        queue,
        outbox,
        config,
        dispatcher,
        hub,
        backend_probe,
    });

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Beyond MAX_PERMITS a semaphore panics; no front holds that many.
    let connections = Arc::new(tokio::sync::Semaphore::new(
        state
            .config
            .max_connections
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    ));
    if state.config.api_tokens.is_empty() {
        warn!("no API token configured: uploads and reads are open to anyone who can connect");
    }
    tokio::pin!(shutdown);
    info!("front ready");
    on_ready();
    loop {
        // At the connection limit, stop accepting: waiting connections stay in
        // the shared kernel queue, where a less busy front picks them up.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let seat = Arc::new(Seat {
                        limit: connections.clone(),
                        permit: std::sync::Mutex::new(Some(permit)),
                    });
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(seat.clone());
                        handle(state.clone(), peer, req)
                    });
                    let conn = http.serve_connection(TokioIo::new(stream), svc);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(%peer, cause = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE: back off instead of spinning on accept.
                    warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    // Stop accepting: our copy of the shared socket closes; queued connections
    // stay in the kernel's queue for the other fronts.
    drop(listener);
    // A connection accepted a moment ago whose request is not parsed yet counts as
    // idle, and a graceful shutdown would close it under the client's POST: let
    // such requests arrive first (a roll once failed an upload that way).
    tokio::time::sleep(FIRST_REQUEST_LINGER).await;
    // Followers wait on jobs, not on us: end their streams now (they resume
    // elsewhere with Last-Event-ID) instead of holding the drain for its grace.
    state.hub.close();
    info!("draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_s = grace.as_secs(),
            "requests still in flight after the grace period"
        );
    }
    feed.abort();
    if let Some(p) = probing {
        p.abort();
    }
    info!("front stopped");
    Ok(())
}

/// How long a draining front still reads the first request of connections it has
/// accepted, before idle ones are closed.
const FIRST_REQUEST_LINGER: Duration = Duration::from_millis(250);

/// Job events buffered for this front's hub; past it, followers re-read records.
const EVENT_BUFFER: usize = 4096;

/// Undoes what a previous process in this slot left half-done: partial uploads, and
/// jobs recorded but never acknowledged (never answered 202).
async fn recover_embedded(config: &FrontConfig) {
    let (store, slot) = (config.store.clone(), config.slot);
    match tokio::task::spawn_blocking(move || store.recover_front(slot)).await {
        Ok(Ok((0, 0))) => {}
        Ok(Ok((parts, jobs))) => {
            info!(
                parts,
                jobs, "removed what a previous front in this slot left unfinished"
            )
        }
        Ok(Err(e)) => warn!(cause = %e, "could not clean the spool directory"),
        Err(e) => warn!(cause = %e, "spool clean-up failed"),
    }
}

/// [`recover_embedded`] for the distributed backend: the records and the queue are
/// asked rather than the local files.
async fn recover_shared(config: &FrontConfig, shared: &Shared) {
    let recovered = pixpool_store::embedded::recover(
        &config.store,
        config.slot,
        &*shared.records,
        &*shared.blobs,
        &*shared.queue,
    )
    .await;
    match recovered {
        Ok((0, 0)) => {}
        Ok((parts, jobs)) => info!(
            parts,
            jobs, "removed what a previous front in this slot left unfinished"
        ),
        Err(e) => warn!(cause = %e, "could not clean the spool directory"),
    }
}

/// How often a front of the distributed mode asks its backend whether it answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long one such question may take before the backend counts as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The last answer of the distributed backend to "do you answer?", for `/readyz`
/// (asked in the background: a probe never waits on NATS or S3).
#[derive(Debug, Default)]
pub struct Probe {
    /// Why the backend is not ready; `None` when it answered.
    down: std::sync::Mutex<Option<String>>,
}

impl Probe {
    /// Why the backend did not answer the last question; `None` when it did.
    pub fn down(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn run_once(&self, records: &dyn Records, blobs: &dyn Blobs, queue: &dyn Queue) {
        let ask = |what: &'static str, r: Result<Result<(), pixpool_store::StoreError>, _>| match r
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{what}: {}", pixpool_store::error_chain(&e))),
            Err(_) => Some(format!("{what}: no answer within {PROBE_TIMEOUT:?}")),
        };
        let (r, b, q) = tokio::join!(
            tokio::time::timeout(PROBE_TIMEOUT, records.ready()),
            tokio::time::timeout(PROBE_TIMEOUT, blobs.ready()),
            tokio::time::timeout(PROBE_TIMEOUT, queue.ready())
        );
        let down = ask("job records", r)
            .or_else(|| ask("job queue", q))
            .or_else(|| ask("blob storage", b));
        let mut slot = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match (&*slot, &down) {
            (None, Some(why)) => warn!(cause = %why, "the backend does not answer; not ready"),
            (Some(_), None) => info!("the backend answers again; ready"),
            _ => {}
        }
        *slot = down;
    }

    async fn watch(
        self: Arc<Self>,
        records: Arc<dyn Records>,
        blobs: Arc<dyn Blobs>,
        queue: Arc<dyn Queue>,
    ) {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            self.run_once(&*records, &*blobs, &*queue).await;
        }
    }
}

/// Hands every job event to the clients following that job.
async fn feed_hub(mut events: pixpool_store::backend::EventStream, hub: Arc<events::EventHub>) {
    use futures_util::StreamExt;
    while let Some(item) = events.next().await {
        match item {
            EventItem::Event(ev) => hub.publish(ev),
            EventItem::Gap => hub.resync_all(),
        }
    }
}

/// A connection's place under [`FrontConfig::max_connections`], reachable
/// from its requests (an extension). An event stream gives the place back
/// while it waits on a job, so that followers, bounded on their own by
/// [`FrontConfig::max_event_streams`], cannot take the places uploads need.
#[derive(Debug)]
struct Seat {
    /// The front's connection limit.
    limit: Arc<tokio::sync::Semaphore>,
    /// This connection's place, while it holds one.
    permit: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Seat {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<tokio::sync::OwnedSemaphorePermit>> {
        // A single take or put under the lock: poisoning leaves nothing half-done.
        self.permit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives this connection's place back (for the length of an event stream).
    fn release(&self) {
        self.lock().take();
    }

    /// Takes a place again, waiting as a new connection would.
    async fn reclaim(&self) {
        if self.lock().is_some() {
            return;
        }
        let permit = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        *self.lock() = Some(permit);
    }
}

/// The seat of the connection `req` came on (none outside the accept loop).
fn seat_of<B>(req: &Request<B>) -> Option<Arc<Seat>> {
    req.extensions().get::<Arc<Seat>>().cloned()
}

#[instrument(skip_all, fields(%peer, method = %req.method(), path = %req.uri().path()))]
async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let route = Route::parse(req.uri().path());
    let route_name = route.label();
    // Uploads and deletions count against the client's rate; probes and reads never.
    let limited = state
        .config
        .rate_limit
        .as_ref()
        .filter(|_| route.is_rate_limited(req.method()));
    let mut decision = None;
    let result = match authorize(&state.config, &route, &req) {
        Ok(client) => {
            let d = limited.map(|l| l.check(client.as_ref(), peer.ip()));
            decision = d.map(|d| (d, limited));
            match d {
                Some(d) if !d.allowed => {
                    let wait =
                        d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0);
                    Err(ApiError::RateLimited(wait.max(1)))
                }
                _ => dispatch(&state, route, req, client).await,
            }
        }
        Err(e) => Err(e),
    };
    let metrics = &state.config.metrics;
    let resp = result.unwrap_or_else(|err| {
        if err.is_server_error() {
            warn!(cause = %pixpool_store::error_chain(&err), "request failed");
        } else {
            info!(cause = %err, "request refused");
        }
        if route_name == "upload" {
            metrics.inc(pixpool_metrics::Counter::Rejections {
                reason: pixpool_metrics::Label::from(err.slug()),
            });
        }
        err.into_response()
    });
    let mut resp = resp;
    if let Some((d, Some(limit))) = &decision {
        for (name, value) in limit.headers(d) {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, value);
            }
        }
    }
    let code = resp.status().as_u16();
    metrics.inc(pixpool_metrics::Counter::HttpRequests {
        route: pixpool_metrics::Label::from(route_name),
        code,
    });
    if route_name == "upload" {
        metrics.observe(
            pixpool_metrics::Histogram::UploadDuration,
            started.elapsed(),
        );
    }
    debug!(status = code, "response");
    Ok(resp)
}

async fn dispatch(
    state: &Arc<State>,
    route: Route,
    req: Request<Incoming>,
    client: Option<Client>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let Some(allow) = route.allow() else {
        return Err(ApiError::NotFound(upload::sanitise_for_log(
            req.uri().path(),
        )));
    };
    if !route.allows(&method) {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow,
        });
    }
    match route {
        Route::Upload => upload::upload(state, req, client).await,
        Route::Health => Ok(health(state)),
        Route::Index => Ok(dashboard()),
        Route::Stats => Ok(stats(state).await),
        Route::Readyz => readiness(state),
        Route::Job(id) if method == Method::DELETE => delete_job(state, &id).await,
        Route::Job(id) => job_status(state, &id, req.uri().query(), seat_of(&req)).await,
        Route::JobEvents(id) => {
            let id = parse_id(&id)?;
            // Last-Event-ID: resume after what the client has seen.
            let last = req
                .headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            // The stream may wait on the job for minutes: its connection's
            // place goes back to uploads meanwhile, and is taken again
            // before the stream ends (the connection may be reused).
            let seat = seat_of(&req);
            let back = seat.clone();
            let at_end = async move {
                if let Some(seat) = back {
                    seat.reclaim().await;
                }
            };
            let permit = state.hub.admit()?;
            let resp =
                events::stream(&state.hub, &state.records, &id, last, permit, at_end).await?;
            if let Some(seat) = seat {
                seat.release();
            }
            Ok(resp)
        }
        Route::Image { id, preset } => {
            let private = !state.config.api_tokens.is_empty();
            images::serve(
                state,
                private,
                &method,
                req.headers(),
                req.uri().query(),
                &id,
                &preset,
            )
            .await
        }
        Route::NotFound => Err(ApiError::NotFound(upload::sanitise_for_log(
            req.uri().path(),
        ))),
    }
}

/// Who sent a request, when tokens are configured: a tag derived from the
/// token it presented (never the token), so that one client's uploads are
/// told apart from another's (dedup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client(String);

impl Client {
    /// The tag: 64 bits of a hash of the token, in hex.
    pub fn tag(&self) -> &str {
        &self.0
    }
}

/// Checks the bearer token (tokens configured) or, with the API open, that a
/// browser page from another origin is not posting to it.
fn authorize(
    config: &FrontConfig,
    route: &Route,
    req: &Request<Incoming>,
) -> Result<Option<Client>, ApiError> {
    if config.api_tokens.is_empty() {
        check_origin(config, req)?;
        return Ok(None);
    }
    if !route.needs_token() {
        return Ok(None);
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    // blake3::Hash compares in constant time; hashing first also hides the
    // tokens' lengths. Every token is compared, so timing says nothing of which.
    let given_hash = blake3::hash(given.as_bytes());
    let ok = config.api_tokens.iter().fold(false, |ok, t| {
        (blake3::hash(t.as_bytes()) == given_hash) | ok
    });
    if !ok {
        return Err(ApiError::Unauthorized);
    }
    let tag = blake3::derive_key("pixpool client tag v1", given.as_bytes());
    Ok(Some(Client(
        tag.iter().take(8).map(|b| format!("{b:02x}")).collect(),
    )))
}

/// An open API answers anyone who can connect, and a browser lets any page it
/// shows post a form to `127.0.0.1`: a state-changing request that carries an
/// `Origin` (browsers add it) must come from an allowed origin or from the
/// server's own, addressed by an IP literal or `localhost` (a DNS name could
/// be rebound to this address by the page's own site).
fn check_origin(config: &FrontConfig, req: &Request<Incoming>) -> Result<(), ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("null").trim_end_matches('/');
    if config
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if authority.is_some_and(|a| a.eq_ignore_ascii_case(host)) && not_rebindable(host) {
        return Ok(());
    }
    Err(ApiError::ForbiddenOrigin(upload::sanitise_for_log(origin)))
}

/// Whether a `Host` names this machine in a way no other site's DNS can:
/// an IP literal or `localhost`, with or without a port.
fn not_rebindable(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// `GET /`: the dashboard, one self-contained page (no CDN, no build step).
fn dashboard() -> Response<Body> {
    let mut resp = Response::new(body::full(include_str!("dashboard.html")));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // `blob:` for the thumbnails it fetches, `data:` for the ThumbHash it draws.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `GET /stats`: the admin process's summary (busy workers, queue, jobs/s,
/// RSS), which it rewrites every second in the runtime directory.
async fn stats(state: &State) -> Response<Body> {
    let path = state.store().run_dir().join("stats.json");
    let body = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(_) => br#"{"available":false}"#.to_vec(),
    };
    let mut resp = Response::new(body::full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /readyz`: can this front take an upload now?
fn readiness(state: &State) -> Result<Response<Body>, ApiError> {
    let up = state.dispatcher.as_ref().map(|d| d.workers_up());
    if let Some(d) = &state.dispatcher {
        if d.workers_up() == 0 {
            return Err(ApiError::NotReady503("no image worker is connected".into()));
        }
        if d.all_saturated() {
            return Err(ApiError::NotReady503(
                "every image worker's queue is full".into(),
            ));
        }
    }
    if let Some(why) = state.backend_probe.down() {
        return Err(ApiError::NotReady503(why));
    }
    if let Ok(free) = state.store().free_bytes() {
        if free < state.config.min_free_bytes {
            return Err(ApiError::NotReady503(format!(
                "low disk space ({free} bytes free)"
            )));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &match up {
            Some(up) => serde_json::json!({"status": "ready", "workers_connected": up}),
            None => serde_json::json!({"status": "ready"}),
        },
    ))
}

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    // Validated before the filesystem sees it: only a canonical UUID names a file.
    JobId::parse(raw).ok_or_else(|| ApiError::NoSuchJob(upload::sanitise_for_log(raw)))
}

fn health(state: &State) -> Response<Body> {
    let mut body = serde_json::json!({
        "status": "ok",
        "role": "front",
        "slot": state.config.slot,
        "pid": std::process::id(),
        "backend": if state.dispatcher.is_some() { "embedded" } else { "distributed" },
    });
    if let (Some(d), Some(map)) = (&state.dispatcher, body.as_object_mut()) {
        map.insert("workers_connected".into(), d.workers_up().into());
    }
    json_response(StatusCode::OK, &body)
}

/// `DELETE /jobs/<id>`: the job and everything that names it go (see
/// [`pixpool_store::remove`]); a queued or running job is cancelled, its worker
/// dropping it at its next stage. 204; 404 when there is no such job (any more).
async fn delete_job(state: &State, raw_id: &str) -> Result<Response<Body>, ApiError> {
    let id = parse_id(raw_id)?;
    let record = state
        .records
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))?;
    let parts = pixpool_store::remove::JobParts {
        records: &*state.records,
        blobs: &*state.blobs,
        outbox: Some(&*state.outbox),
    };
    let removed = pixpool_store::remove::remove_job(parts, &record.value).await?;
    info!(job = %id, state = ?record.value.state, bytes = removed.bytes, "job deleted");
    let mut resp = Response::new(body::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

async fn job_status(
    state: &State,
    raw_id: &str,
    query: Option<&str>,
    seat: Option<Arc<Seat>>,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(raw_id)?;
    let wait = query
        .and_then(|q| upload::query_param(q, "wait"))
        .and_then(|w| w.parse::<f64>().ok())
        .filter(|w| w.is_finite() && *w > 0.0)
        .map(|w| Duration::from_secs_f64(w.min(events::MAX_WAIT.as_secs_f64())))
        .unwrap_or(Duration::ZERO);
    // A long-poll is an event stream: counted apart, and its connection's
    // place lent back while it waits; taken again before the answer, as the
    // connection stays open for the next request.
    let (permit, seat) = if wait.is_zero() {
        (None, None)
    } else {
        (Some(state.hub.admit()?), seat)
    };
    if let Some(seat) = &seat {
        seat.release();
    }
    let record = events::long_poll(&state.hub, &*state.records, &id, wait).await;
    if let Some(seat) = &seat {
        seat.reclaim().await;
    }
    drop(permit);
    let record = record?.ok_or_else(|| ApiError::NoSuchJob(id.to_string()))?;
    let mut resp = json_response(StatusCode::OK, &view::JobView::of(&record));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut resp = Response::new(json(value));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
