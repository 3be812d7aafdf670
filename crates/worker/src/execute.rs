//! Running jobs: one at a time, on a blocking thread, with the record's state
//! transitions (`queued → processing → done | failed`) written durably around
//! the call into `pixpool-imaging`.

use std::sync::Arc;
use std::time::Instant;

use pixpool_imaging::Preset;
use pixpool_store::record::now_rfc3339;
use pixpool_store::{JobRecord, JobState, OutputRecord, Problem, StageMillis};
use tokio::sync::watch;
use tracing::{error, info, instrument, warn};

use crate::queue::{Job, JobQueue};
use crate::WorkerConfig;

/// A job started this many times without finishing (its worker crashed or was
/// killed each time, or the server failed it) is marked failed instead of
/// being run again: a poison image must not take workers down forever.
pub const MAX_ATTEMPTS: u32 = 3;

/// What became of one run of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All outputs written.
    Done,
    /// Final failure recorded.
    Failed,
    /// A server-side failure (disk): run it again later.
    Retry,
    /// Nothing to do (already final, or no record).
    Skipped,
}

/// Runs queued jobs until `stop` turns true; the job in hand always finishes.
pub async fn run_queue(
    config: Arc<WorkerConfig>,
    queue: Arc<JobQueue>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(job) = queue.try_pop() else {
            tokio::select! {
                _ = queue.wait() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let cfg = config.clone();
        let retry = job.clone();
        match tokio::task::spawn_blocking(move || execute(&cfg, &job)).await {
            Ok(Outcome::Retry) => queue.push_recovered(retry),
            Ok(_) => {}
            Err(e) => error!(cause = %e, job_id = %retry.id, "job thread panicked"),
        }
    }
}

/// Runs one job to a final state (or asks for a retry). Blocking.
#[instrument(skip_all, fields(job_id = %job.id, slot = config.slot))]
pub fn execute(config: &WorkerConfig, job: &Job) -> Outcome {
    let store = &config.store;
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
            return Outcome::Skipped;
        }
        Err(e) => {
            error!(cause = %e, "claimed job's record is unreadable; dropping it");
            release();
            return Outcome::Skipped;
        }
    };
    if rec.state.is_final() {
        release();
        return Outcome::Skipped;
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
        return finish(config, job, &mut rec, Err(problem));
    }

    rec.state = JobState::Processing;
    rec.attempts += 1;
    rec.worker = Some(config.slot);
    rec.started_at = Some(now_rfc3339());
    if let Err(e) = store.write_record(&rec) {
        error!(cause = %e, "could not mark the job processing; will retry");
        return Outcome::Retry;
    }
    info!(attempt = rec.attempts, "processing");

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
            return finish(config, job, &mut rec, Err(problem));
        }
    };
    let raw = store.root().join(&rec.source.path);
    let started = Instant::now();
    let result = pixpool_imaging::process(
        &raw,
        &presets,
        &store.processed_dir(),
        job.id.as_str(),
        &config.limits,
    );
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(processed) => {
            rec.stage_ms = Some(StageMillis {
                decode: processed.timings.decode_ms,
                resize: processed.timings.resize_ms,
                encode: processed.timings.encode_ms,
            });
            rec.outputs = processed
                .outputs
                .into_iter()
                .map(|o| OutputRecord {
                    preset: o.preset,
                    width: o.width,
                    height: o.height,
                    bytes: o.bytes,
                    content_type: o.content_type,
                    path: format!("processed/{}", o.file_name),
                })
                .collect();
            info!(
                ms = format_args!("{ms:.1}"),
                outputs = rec.outputs.len(),
                "job done"
            );
            finish(config, job, &mut rec, Ok(()))
        }
        Err(e) if e.is_input_error() => {
            warn!(cause = %pixpool_store::error_chain(&e), "image rejected");
            let problem = Problem::new(
                "unprocessable-image",
                "The image could not be processed",
                422,
                pixpool_store::error_chain(&e),
            );
            finish(config, job, &mut rec, Err(problem))
        }
        Err(e) => {
            error!(cause = %pixpool_store::error_chain(&e), attempt = rec.attempts, "processing failed on the server side");
            if rec.attempts < MAX_ATTEMPTS {
                return Outcome::Retry;
            }
            let problem = Problem::new(
                "processing-error",
                "The server could not process the image",
                500,
                pixpool_store::error_chain(&e),
            );
            finish(config, job, &mut rec, Err(problem))
        }
    }
}

/// Writes the final state and drops the claim (in that order: a crash in
/// between re-runs a finished job, which is harmless, never loses one).
fn finish(
    config: &WorkerConfig,
    job: &Job,
    rec: &mut JobRecord,
    result: Result<(), Problem>,
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
    outcome
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
