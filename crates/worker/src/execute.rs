//! Running jobs: one at a time, on a blocking thread, with the record's state
//! transitions (`queued → processing → done | failed`) written durably around
//! the call into `pixpool-imaging`.
//!
//! A failure on the server's side (an output or a record that cannot be written: a
//! full disk) queues the job again after a pause that doubles each time
//! ([`retry_backoff`]), never at once: a full disk must not turn a worker into a
//! spinning core and a log flood. After [`MAX_RETRIES`] such failures (or
//! [`MAX_ATTEMPTS`] runs) the job is failed, with a problem saying why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pixpool_imaging::{Preset, Progress};
use pixpool_metrics::{Counter, Gauge, Histogram, JobOutcome, Recorder, Stage};
use pixpool_protocol::{EventKind, JobEvent};
use pixpool_store::record::now_rfc3339;
use pixpool_store::{JobRecord, JobState, OutputRecord, Problem, StageMillis};
use tokio::sync::broadcast;
use tokio::sync::watch;
use tracing::{debug, error, info, instrument, warn};

use crate::queue::{Job, JobQueue};
use crate::WorkerConfig;

/// A job started this many times without finishing (its worker crashed or was
/// killed each time, or the server failed it) is marked failed instead of
/// being run again: a poison image must not take workers down forever.
pub const MAX_ATTEMPTS: u32 = 3;

/// Server-side failures of one job (an output or its record that could not be written:
/// a full disk) that this process retries; at the next, the job is failed. Its runs are
/// also bounded by [`MAX_ATTEMPTS`], counted in its record when the record can be written.
pub const MAX_RETRIES: u32 = 5;

/// The wait before the first retry of a job that failed on the server side; it doubles
/// with each retry (0.25, 0.5, 1, 2, 4 s: about 8 s for a full disk to be freed before
/// the job is failed), up to [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two retries: reached only while even the `failed` record
/// cannot be written, so a full disk costs a log line and a few syscalls per job this
/// often, not a spinning core.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait before retry `n` (from 1) of a job.
pub fn retry_backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    RETRY_BACKOFF
        .saturating_mul(1 << doublings)
        .min(RETRY_BACKOFF_MAX)
}

/// Queues `job` again once the backoff its retries so far call for has passed. Its
/// claim stays on disk meanwhile: if this process ends first, its successor runs it.
fn retry_later(queue: &Arc<JobQueue>, mut job: Job) {
    job.retries = job.retries.saturating_add(1);
    let wait = retry_backoff(job.retries);
    warn!(
        job_id = %job.id,
        retry = job.retries,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "job failed on the server side; retrying after a pause"
    );
    let queue = queue.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        queue.push_recovered(job);
    });
}

/// What became of one run of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All outputs written.
    Done,
    /// Final failure recorded.
    Failed,
    /// A server-side failure (disk): run it again after a pause ([`retry_backoff`]).
    Retry,
    /// Nothing to do (already final, or no record).
    Skipped,
}

/// Why the executor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecExit {
    /// `stop` turned true (drain); the job in hand finished.
    Stopped,
    /// Time for a fresh process (job count or memory high-water mark reached).
    Recycle,
    /// A job overran the per-job timeout; it is marked failed, and its thread
    /// cannot be stopped: the process must be replaced.
    JobTimedOut,
}

/// How soon an idle worker looks again for a busy sibling's queued jobs (when it
/// finishes a job and its own queue is empty, it looks at once). Each look that
/// finds nothing doubles the wait, up to [`STEAL_POLL_MAX`]: an idle server does
/// not scan its claim directories ten times a second per worker.
pub const STEAL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest wait between two looks at the siblings' queues.
pub const STEAL_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(1600);

/// With its own queue empty, takes the oldest queued job of a sibling that is
/// busy with another one (see [`pixpool_store::Store::steal`]). Routing stays
/// round-robin; this only keeps a worker from idling while jobs wait behind a
/// long one elsewhere.
async fn help_a_sibling(config: &Arc<WorkerConfig>) -> Option<Job> {
    if !config.steal || config.workers < 2 {
        return None;
    }
    let cfg = config.clone();
    let stolen = tokio::task::spawn_blocking(move || cfg.store.steal(cfg.slot, cfg.workers)).await;
    match stolen {
        Ok(Ok(Some(id))) => {
            info!(job_id = %id, "took a queued job from a busy sibling");
            config.metrics.inc(Counter::JobsStolen {
                worker: config.slot,
            });
            Some(Job {
                id,
                owner: config.slot,
                presets: None,
                retries: 0,
            })
        }
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            warn!(cause = %e, "could not look at the siblings' queues");
            None
        }
        Err(e) => {
            warn!(cause = %e, "the look at the siblings' queues failed");
            None
        }
    }
}

/// Runs queued jobs until `stop` turns true; the job in hand always finishes.
///
/// A job runs in two steps. [`execute`] decodes, resizes and encodes on a blocking
/// thread, writing the outputs without waiting for the disk; [`commit`] then flushes
/// them, writes the final record and drops the claim, on another thread, while the next
/// job is already being decoded: the fsyncs (a few milliseconds a job) no longer leave
/// the CPU idle. At most one commit is pending, and it is finished before this returns.
pub async fn run_queue(
    config: Arc<WorkerConfig>,
    queue: Arc<JobQueue>,
    events: broadcast::Sender<JobEvent>,
    mut stop: watch::Receiver<bool>,
) -> ExecExit {
    let mut pending: Option<Pending> = None;
    let exit = run_jobs(&config, &queue, &events, &mut stop, &mut pending).await;
    if let Some(p) = pending.take() {
        settle(p, &queue, &config.metrics).await;
    }
    exit
}

/// A commit running on its thread.
struct Pending {
    handle: tokio::task::JoinHandle<Outcome>,
    job: Job,
    started: Instant,
}

/// Waits for a commit and accounts for its outcome.
async fn settle(p: Pending, queue: &Arc<JobQueue>, metrics: &Recorder) {
    match p.handle.await {
        Ok(Outcome::Retry) => {
            account(metrics, Outcome::Retry, p.started);
            retry_later(queue, p.job);
        }
        Ok(outcome) => account(metrics, outcome, p.started),
        Err(e) => error!(cause = %e, job_id = %p.job.id, "commit thread panicked"),
    }
}

/// Counts a job's outcome in the metrics.
fn account(metrics: &Recorder, outcome: Outcome, started: Instant) {
    let label = match outcome {
        Outcome::Done => JobOutcome::Done,
        Outcome::Failed => JobOutcome::Failed,
        Outcome::Retry => JobOutcome::Retry,
        Outcome::Skipped => JobOutcome::Skipped,
    };
    metrics.inc(Counter::Jobs { outcome: label });
    if matches!(outcome, Outcome::Done | Outcome::Failed) {
        metrics.observe(Histogram::JobDuration, started.elapsed());
    }
}

async fn run_jobs(
    config: &Arc<WorkerConfig>,
    queue: &Arc<JobQueue>,
    events: &broadcast::Sender<JobEvent>,
    stop: &mut watch::Receiver<bool>,
    pending: &mut Option<Pending>,
) -> ExecExit {
    let mut jobs_run: u64 = 0;
    let mut steal_poll = STEAL_POLL;
    loop {
        if *stop.borrow() {
            return ExecExit::Stopped;
        }
        let job = match queue.try_pop() {
            Some(job) => job,
            None => match help_a_sibling(config).await {
                Some(job) => job,
                None => {
                    // Nothing to decode: finish the pending commit first.
                    if let Some(p) = pending.take() {
                        settle(p, queue, &config.metrics).await;
                        continue;
                    }
                    // Idle: wake for a job of our own, for the drain, or to look
                    // again for a sibling's backlog.
                    tokio::select! {
                        _ = queue.wait() => steal_poll = STEAL_POLL,
                        _ = stop.changed() => {}
                        _ = tokio::time::sleep(steal_poll), if config.steal && config.workers > 1 => {
                            steal_poll = (steal_poll * 2).min(STEAL_POLL_MAX);
                        }
                    }
                    continue;
                }
            },
        };
        steal_poll = STEAL_POLL;
        let cfg = config.clone();
        let retry = job.clone();
        let ev = events.clone();
        let metrics = &config.metrics;
        let busy = Gauge::WorkerBusy {
            worker: config.slot,
        };
        metrics.set(busy.clone(), 1.0);
        let running = tokio::task::spawn_blocking(move || execute(&cfg, &job, &ev));
        let started = Instant::now();
        let step = tokio::time::timeout(config.job_timeout, running).await;
        metrics.set(busy, 0.0);
        match step {
            Ok(Ok(Step::Commit(work))) => {
                if let Some(p) = pending.take() {
                    settle(p, queue, &config.metrics).await;
                }
                let (cfg, ev) = (config.clone(), events.clone());
                *pending = Some(Pending {
                    handle: tokio::task::spawn_blocking(move || commit(&cfg, *work, &ev)),
                    job: retry,
                    started,
                });
            }
            Ok(Ok(Step::Finished(Outcome::Retry))) => {
                account(metrics, Outcome::Retry, started);
                retry_later(queue, retry);
            }
            Ok(Ok(Step::Finished(outcome))) => account(metrics, outcome, started),
            Ok(Err(e)) => error!(cause = %e, job_id = %retry.id, "job thread panicked"),
            Err(_) => {
                error!(
                    job_id = %retry.id,
                    timeout_s = config.job_timeout.as_secs_f64(),
                    "job overran its time limit; failing it and replacing this worker"
                );
                if let Some(p) = pending.take() {
                    settle(p, queue, &config.metrics).await;
                }
                let (cfg, ev) = (config.clone(), events.clone());
                let _ =
                    tokio::task::spawn_blocking(move || fail_timed_out(&cfg, &retry, &ev)).await;
                // Let the `failed` event reach the fronts before the process goes.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                metrics.inc(Counter::Jobs {
                    outcome: JobOutcome::Timeout,
                });
                return ExecExit::JobTimedOut;
            }
        }
        jobs_run += 1;
        if config.recycle_after_jobs > 0 && jobs_run >= config.recycle_after_jobs {
            info!(jobs_run, "recycling after the configured number of jobs");
            return ExecExit::Recycle;
        }
        if config.recycle_rss_bytes > 0 {
            if let Some(rss) = current_rss_bytes() {
                if rss > config.recycle_rss_bytes {
                    info!(
                        rss,
                        limit = config.recycle_rss_bytes,
                        "recycling: memory high-water mark reached"
                    );
                    return ExecExit::Recycle;
                }
            }
        }
    }
}

/// This process's resident set size, from /proc.
pub fn current_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Marks a job that overran the time limit as failed (blocking).
fn fail_timed_out(config: &WorkerConfig, job: &Job, events: &broadcast::Sender<JobEvent>) {
    let mut rec = match config.store.read_record(&job.id) {
        Ok(Some(rec)) => rec,
        _ => return,
    };
    // The server's fault as much as the image's: the same image may finish on a less
    // busy server, so a 5xx, which lets an identical upload run again (dedup keeps a
    // failure below 500 for good).
    let problem = Problem::new(
        "processing-timeout",
        "The server ran out of time for this image",
        503,
        format!(
            "processing did not finish within the {} s time limit of one job; \
             the server may be busy: try again later",
            config.job_timeout.as_secs_f64()
        ),
    );
    let emit = |kind: EventKind| {
        let _ = events.send(JobEvent {
            id: job.id.clone(),
            kind,
        });
    };
    // The job was taken into this worker's hands before it ran.
    let job = &job.taken_by(config.slot);
    finish(config, job, &mut rec, Err(problem), &emit);
}

/// What [`execute`] leaves to do.
#[derive(Debug)]
pub enum Step {
    /// Nothing: the job reached a final state (or needs a retry, or was skipped).
    Finished(Outcome),
    /// The outputs are written: [`commit`] them.
    Commit(Box<Commit>),
}

/// A job whose outputs are written but not yet flushed to disk, with its record.
#[derive(Debug)]
pub struct Commit {
    job: Job,
    rec: JobRecord,
    outputs: Vec<pixpool_imaging::Output>,
    /// Time spent decoding, resizing and encoding.
    ms: f64,
}

/// Flushes a job's outputs, then writes its final record and drops its claim (in that
/// order: a record says `done` only of outputs on disk). Blocking.
#[instrument(skip_all, fields(job_id = %work.job.id, slot = config.slot))]
pub fn commit(
    config: &WorkerConfig,
    mut work: Commit,
    events: &broadcast::Sender<JobEvent>,
) -> Outcome {
    let emit = |kind: EventKind| {
        let _ = events.send(JobEvent {
            id: work.job.id.clone(),
            kind,
        });
    };
    let started = Instant::now();
    if let Err(e) = pixpool_imaging::sync_outputs(&config.store.processed_dir(), &work.outputs) {
        error!(cause = %pixpool_store::error_chain(&e), "could not flush the outputs; will retry");
        return Outcome::Retry;
    }
    let outcome = finish(config, &work.job, &mut work.rec, Ok(()), &emit);
    info!(
        ms = format_args!("{:.1}", work.ms),
        commit_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
        outputs = work.rec.outputs.len(),
        "job done"
    );
    outcome
}

/// Runs one job up to its outputs (or to a final state, a retry or a skip). Blocking.
#[instrument(skip_all, fields(job_id = %job.id, slot = config.slot))]
pub fn execute(config: &WorkerConfig, job: &Job, events: &broadcast::Sender<JobEvent>) -> Step {
    let store = &config.store;
    // No receiver (no front connected) is not an error: the record is the truth.
    let emit = |kind: EventKind| {
        let _ = events.send(JobEvent {
            id: job.id.clone(),
            kind,
        });
    };
    // Into this worker's hands first: a sibling may have taken it meanwhile.
    match store.take(config.slot, job.owner, config.workers, &job.id) {
        Ok(true) => {}
        Ok(false) => {
            debug!("a sibling took this job; skipping it");
            return Step::Finished(Outcome::Skipped);
        }
        Err(e) => {
            error!(cause = %e, "could not take the job's claim; will retry");
            return Step::Finished(Outcome::Retry);
        }
    }
    // From here on the claim is `claims/<this slot>/<id>.running`.
    let job = &job.taken_by(config.slot);
    let release = || {
        if let Err(e) = store.release(job.owner, &job.id) {
            warn!(cause = %e, "could not drop the claim");
        }
    };
    let mut rec = match store.read_record(&job.id) {
        Ok(Some(rec)) => rec,
        Ok(None) => {
            warn!("claimed job has no record; dropping it");
            release();
            return Step::Finished(Outcome::Skipped);
        }
        Err(e) => {
            error!(cause = %e, "claimed job's record is unreadable; dropping it");
            release();
            return Step::Finished(Outcome::Skipped);
        }
    };
    if rec.state.is_final() {
        release();
        return Step::Finished(Outcome::Skipped);
    }
    if rec.attempts >= MAX_ATTEMPTS {
        warn!(
            attempts = rec.attempts,
            "job keeps failing its worker; marking it failed"
        );
        let problem = Problem::new(
            "too-many-attempts",
            "The job was abandoned",
            500,
            format!(
                "processing was interrupted {} times (the worker crashed or was killed)",
                rec.attempts
            ),
        );
        return Step::Finished(finish(config, job, &mut rec, Err(problem), &emit));
    }

    rec.state = JobState::Processing;
    rec.attempts += 1;
    rec.worker = Some(config.slot);
    rec.started_at = Some(now_rfc3339());
    // Not durable: lost in a power cut, the job is back to its queued record and runs
    // again (its attempt uncounted), which the claim guarantees anyway. A crash of this
    // process keeps it (page cache), so a poison job's attempts add up.
    if let Err(e) = store.write_record_provisional(&rec) {
        error!(cause = %e, retry = job.retries, "could not mark the job processing");
        if job.retries < MAX_RETRIES {
            return Step::Finished(Outcome::Retry);
        }
        // Most likely the `failed` record cannot be written either; then `finish`
        // asks for a retry, at the longest backoff, until it can.
        let problem = Problem::new(
            "storage-error",
            "The server could not store the job",
            507,
            pixpool_store::error_chain(&e),
        );
        // That run did not happen.
        rec.attempts = rec.attempts.saturating_sub(1);
        return Step::Finished(finish(config, job, &mut rec, Err(problem), &emit));
    }
    info!(attempt = rec.attempts, "processing");
    let attempt = rec.attempts;
    emit(EventKind::Processing { attempt });

    let names = job.presets.clone().unwrap_or_else(|| rec.presets.clone());
    let presets = match resolve(&config.presets, &names) {
        Ok(p) => p,
        Err(unknown) => {
            let problem = Problem::new(
                "unknown-preset",
                "Unknown preset",
                400,
                format!("no preset named {unknown:?}"),
            );
            return Step::Finished(finish(config, job, &mut rec, Err(problem), &emit));
        }
    };
    let raw = store.root().join(&rec.source.path);
    let started = Instant::now();
    let processed_dir = store.processed_dir();
    let mut etags: Vec<String> = vec![String::new(); presets.len()];
    // Outputs are made largest first; events are numbered in that order.
    let mut made: u32 = 0;
    let mut on_progress = |p: Progress<'_>| match p {
        Progress::Decoded { .. } => emit(EventKind::Resizing { attempt }),
        Progress::Output { index, output } => {
            let etag = etag_of(&processed_dir.join(&output.file_name));
            let record = output_record(&job.id, output, etag.clone());
            if let Some(slot) = etags.get_mut(index) {
                *slot = etag;
            }
            emit(EventKind::Output {
                attempt,
                index: made,
                output: record,
            });
            made += 1;
        }
    };
    let result = pixpool_imaging::process_with_progress(
        &raw,
        &presets,
        &processed_dir,
        job.id.as_str(),
        &config.limits,
        // Flushed by `commit`, on another thread, while the next job decodes.
        pixpool_imaging::Flush::Later,
        &mut on_progress,
    );
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(processed) => {
            for (stage, ms) in [
                (Stage::Decode, processed.timings.decode_ms),
                (Stage::Resize, processed.timings.resize_ms),
                (Stage::Encode, processed.timings.encode_ms),
            ] {
                // `try_`: a timing that is not a valid duration must not panic the worker.
                let took = Duration::try_from_secs_f64(ms / 1e3).unwrap_or_default();
                config.metrics.observe(Histogram::JobStage { stage }, took);
            }
            rec.stage_ms = Some(StageMillis {
                decode: processed.timings.decode_ms,
                resize: processed.timings.resize_ms,
                encode: processed.timings.encode_ms,
            });
            rec.outputs = processed
                .outputs
                .iter()
                .zip(etags)
                .map(|(o, etag)| output_record(&job.id, o, etag))
                .collect();
            Step::Commit(Box::new(Commit {
                job: job.clone(),
                rec,
                outputs: processed.outputs,
                ms,
            }))
        }
        Err(e) if e.is_input_error() => {
            warn!(cause = %pixpool_store::error_chain(&e), "image rejected");
            // The same type as the front's refusal of an image over a limit.
            let problem = if e.is_limit_exceeded() {
                Problem::new(
                    "limit-exceeded",
                    "Image exceeds a limit",
                    422,
                    pixpool_store::error_chain(&e),
                )
            } else {
                Problem::new(
                    "unprocessable-image",
                    "The image could not be processed",
                    422,
                    pixpool_store::error_chain(&e),
                )
            };
            Step::Finished(finish(config, job, &mut rec, Err(problem), &emit))
        }
        Err(e) => {
            error!(
                cause = %pixpool_store::error_chain(&e),
                attempt = rec.attempts,
                retry = job.retries,
                "processing failed on the server side"
            );
            if rec.attempts < MAX_ATTEMPTS && job.retries < MAX_RETRIES {
                return Step::Finished(Outcome::Retry);
            }
            Step::Finished(finish(
                config,
                job,
                &mut rec,
                Err(server_problem(&e)),
                &emit,
            ))
        }
    }
}

/// The problem recorded for a job failed by a server-side error: a full disk (or quota)
/// gets its own type and 507, so that an operator reading the record knows what to fix.
fn server_problem(err: &pixpool_imaging::ImagingError) -> Problem {
    let full = match err {
        pixpool_imaging::ImagingError::WriteOutput { source, .. } => {
            matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        }
        _ => false,
    };
    if full {
        Problem::new(
            "storage-full",
            "The server has no room for the outputs",
            507,
            pixpool_store::error_chain(err),
        )
    } else {
        Problem::new(
            "processing-error",
            "The server could not process the image",
            500,
            pixpool_store::error_chain(err),
        )
    }
}

/// Writes the final state and drops the claim (in that order: a crash in
/// between re-runs a finished job, which is harmless, never loses one).
fn finish(
    config: &WorkerConfig,
    job: &Job,
    rec: &mut JobRecord,
    result: Result<(), Problem>,
    emit: &dyn Fn(EventKind),
) -> Outcome {
    let outcome = match result {
        Ok(()) => {
            rec.state = JobState::Done;
            rec.error = None;
            Outcome::Done
        }
        Err(problem) => {
            rec.state = JobState::Failed;
            rec.outputs.clear();
            rec.error = Some(problem);
            Outcome::Failed
        }
    };
    rec.finished_at = Some(now_rfc3339());
    if let Err(e) = config.store.write_record(rec) {
        error!(cause = %e, "could not write the final record; will retry");
        return Outcome::Retry;
    }
    if let Err(e) = config.store.release(job.owner, &job.id) {
        warn!(cause = %e, "could not drop the claim");
    }
    // After the record is durable: a client told "done" can read the outputs.
    emit(EventKind::Finished {
        attempt: rec.attempts,
        state: rec.state,
    });
    outcome
}

fn output_record(
    id: &pixpool_store::JobId,
    o: &pixpool_imaging::Output,
    etag: String,
) -> OutputRecord {
    OutputRecord {
        preset: o.preset.clone(),
        width: o.width,
        height: o.height,
        bytes: o.bytes,
        content_type: o.content_type.clone(),
        path: format!("processed/{}", o.file_name),
        url: format!("/images/{id}/{}", o.preset),
        etag,
    }
}

/// The ETag of an output: BLAKE3 of its bytes, first 128 bits in hex. Read
/// back from the page cache right after writing; outputs are small.
fn etag_of(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => pixpool_store::output_etag(&bytes),
        Err(e) => {
            warn!(cause = %e, path = %path.display(), "could not hash an output");
            String::new()
        }
    }
}

fn resolve(known: &[Preset], names: &[String]) -> Result<Vec<Preset>, String> {
    names
        .iter()
        .map(|n| {
            known
                .iter()
                .find(|p| &p.name == n)
                .cloned()
                .ok_or_else(|| n.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_bound() {
        let waits: Vec<u128> = (1..=9).map(|n| retry_backoff(n).as_millis()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
        );
        assert_eq!(retry_backoff(u32::MAX), RETRY_BACKOFF_MAX);
        // The retries a job gets before it is failed fit in a few seconds.
        let spent: Duration = (1..=MAX_RETRIES).map(retry_backoff).sum();
        assert!(spent < Duration::from_secs(10), "{spent:?}");
    }
}
