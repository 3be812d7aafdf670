//! The syscall-accounting pass: pixpool alone under `strace -f`, a fixed number of
//! uploads, and what each job cost the file system (files created, renames, unlinks,
//! fsyncs). Counts, not times: strace slows the server down, so nothing here is timed,
//! and the peer is not traced (this is about pixpool's own cost per job).
//!
//! 1. `strace -f -qq -ttt --seccomp-bpf -o LOG -e trace=… -- pixpool serve …`, started
//!    and waited for like every run ([`Server::start_under`]). `-f` follows the
//!    supervisor's fork+exec'd fronts and workers; `--seccomp-bpf` stops the server
//!    only on the traced calls, not on every read and poll; `-ttt` dates each call.
//! 2. `--syscalls-jobs` uploads at `--concurrency`, until every job is finished
//!    ([`runner::upload_batch`]), then half a second for the last jobs' tail.
//! 3. SIGTERM to the supervisor; strace exits after the server's last process, its log
//!    complete.
//! 4. The log is counted ([`syscalls::tally`]) in three phases by the time each call
//!    started: start-up (before the first upload), jobs (from it to the SIGTERM),
//!    shutdown. Per job = the jobs phase ÷ the jobs done. Calls in the run directory
//!    are paced by the clock, not by jobs, and counted apart.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::corpus::Corpus;
use crate::runner;
use crate::server::{Launch, Server, ServerKind, Wrapper};
use crate::syscalls::{self, Counts};

/// The tracer, looked up on `PATH`.
pub const STRACE: &str = "strace";

/// After the last job is seen done, how long before the server is stopped: a worker
/// drops the job's claim around the answer the client saw, and such calls belong to
/// the jobs phase, not to the shutdown.
const SETTLE: Duration = Duration::from_millis(500);

/// The jobs phase's counts divided by the jobs done.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerJob {
    /// Files created (opens with `O_CREAT`, `creat`s), links and directories.
    pub created: f64,
    /// Inodes allocated ([`Counts::inodes`]).
    pub inodes: f64,
    /// Renames.
    pub renames: f64,
    /// Unlinks.
    pub unlinks: f64,
    /// `fsync`s, `fdatasync`s and `sync_file_range`s.
    pub fsyncs: f64,
}

impl PerJob {
    /// `jobs_phase` per job; `None` without a job done.
    pub fn of(jobs_phase: &Counts, jobs: usize) -> Option<PerJob> {
        let per = |n: u64| n as f64 / jobs as f64;
        (jobs > 0).then(|| PerJob {
            created: per(jobs_phase.created()),
            inodes: per(jobs_phase.inodes()),
            renames: per(jobs_phase.renames),
            unlinks: per(jobs_phase.unlinks),
            fsyncs: per(jobs_phase.syncs()),
        })
    }
}

/// What the pass counted.
#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    /// Uploads sent.
    pub uploads: usize,
    /// Jobs that ended done.
    pub jobs: usize,
    /// Uploads in flight at once.
    pub concurrency: u32,
    /// pixpool's workers.
    pub workers: u32,
    /// pixpool's fronts.
    pub fronts: u32,
    /// The jobs phase per job done.
    pub per_job: Option<PerJob>,
    /// From the server's start to the first upload.
    pub startup: Counts,
    /// From the first upload to the SIGTERM.
    pub jobs_phase: Counts,
    /// From the SIGTERM to the server's exit.
    pub shutdown: Counts,
    /// The three together.
    pub total: Counts,
    /// Calls in pixpool's run directory (its sockets; the dashboard's summary, written
    /// every second whatever the load), all phases: paced by the clock, not by jobs,
    /// so set aside from every figure above.
    pub run_dir: Counts,
    /// Log lines not understood; left out of the counts.
    pub unparsed_lines: usize,
    /// Halves of interrupted calls without their other half; left out of the counts.
    pub unpaired_lines: usize,
    /// What makes these figures wrong (jobs not done, lines not understood).
    pub problems: Vec<String>,
}

/// How the pass went.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// It ran; its figures (boxed: the other variants are a line).
    Measured(Box<Accounting>),
    /// It did not run (no strace).
    Skipped {
        /// Why.
        reason: String,
    },
    /// It could not finish (strace not allowed to trace, the server not starting…).
    Failed {
        /// The error chain.
        error: String,
    },
}

impl Outcome {
    /// What makes the measured figures wrong; none if the pass did not run.
    pub fn problems(&self) -> &[String] {
        match self {
            Outcome::Measured(a) => &a.problems,
            Outcome::Skipped { .. } | Outcome::Failed { .. } => &[],
        }
    }
}

/// How the pass is made.
#[derive(Debug, Clone)]
pub struct PassPlan {
    /// Uploads.
    pub jobs: u32,
    /// Uploads in flight at once.
    pub concurrency: u32,
    /// Limit on waiting for the jobs.
    pub timeout: Duration,
    /// Where strace's log goes; `None`: into the work directory, removed with it.
    pub log: Option<PathBuf>,
}

/// Runs the pass; skipped without strace on `PATH`.
pub async fn run(launch: &Launch, corpus: &Arc<Corpus>, plan: &PassPlan) -> Outcome {
    let Some(strace) = find_program(STRACE) else {
        return Outcome::Skipped {
            reason: format!("{STRACE} is not on PATH"),
        };
    };
    match measure(&strace, launch, corpus, plan).await {
        Ok(accounting) => Outcome::Measured(Box::new(accounting)),
        Err(err) => Outcome::Failed {
            error: format!("{err:#}"),
        },
    }
}

async fn measure(
    strace: &Path,
    launch: &Launch,
    corpus: &Arc<Corpus>,
    plan: &PassPlan,
) -> anyhow::Result<Accounting> {
    let log_path = plan
        .log
        .clone()
        .unwrap_or_else(|| launch.work_dir.join("syscalls.strace"));
    let args: Vec<OsString> = [
        "-f",
        "-qq",
        "-ttt",
        "--seccomp-bpf",
        "-e",
        &syscalls::trace_expression(),
        "-o",
    ]
    .into_iter()
    .map(OsString::from)
    .chain([log_path.clone().into_os_string()])
    .collect();
    let wrapper = Wrapper {
        program: strace.to_path_buf(),
        args,
    };
    let mut server = Server::start_under(
        ServerKind::Pixpool,
        launch,
        "syscalls-pixpool",
        Some(&wrapper),
    )
    .await
    .context("could not start pixpool under strace")?;
    // pixpool's own directory: opening it again only finds the layout there.
    let run_dir = pixpool_store::Store::open(server.uploads(), None)
        .context("could not ask pixpool-store for the run directory")?
        .run_dir()
        .to_path_buf();
    let jobs_from = epoch_secs()?;
    let batch = runner::upload_batch(
        &server,
        corpus,
        plan.jobs as usize,
        plan.concurrency,
        "syscalls",
        plan.timeout,
    )
    .await
    .with_context(|| {
        format!(
            "the uploads under strace failed; pixpool's last output:\n{}",
            server.log_tail()
        )
    })?;
    tokio::time::sleep(SETTLE).await;
    let stopped_at = epoch_secs()?;
    server.stop();
    let log = std::fs::read(&log_path)
        .with_context(|| format!("could not read strace's log {}", log_path.display()))?;
    let tally = syscalls::tally(
        &String::from_utf8_lossy(&log),
        &[jobs_from, stopped_at],
        &[&run_dir],
    );
    let [startup, jobs_phase, shutdown] = tally.phases[..] else {
        anyhow::bail!("the tally has {} phases, not 3", tally.phases.len());
    };
    let mut problems = batch.problems;
    if tally.unparsed > 0 || tally.unpaired > 0 {
        problems.push(format!(
            "{} line(s) of strace's log not understood and {} unpaired: the counts may be short",
            tally.unparsed, tally.unpaired
        ));
    }
    Ok(Accounting {
        uploads: batch.uploads,
        jobs: batch.done,
        concurrency: plan.concurrency,
        workers: launch.workers,
        fronts: launch.fronts,
        per_job: PerJob::of(&jobs_phase, batch.done),
        startup,
        jobs_phase,
        shutdown,
        total: startup + jobs_phase + shutdown,
        run_dir: tally.aside,
        unparsed_lines: tally.unparsed,
        unpaired_lines: tally.unpaired,
        problems,
    })
}

/// Now, in seconds since the epoch: the clock of strace's `-ttt`.
fn epoch_secs() -> anyhow::Result<f64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs_f64())
}

/// The first executable file named `name` in a directory of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_job_divides_the_jobs_phase() {
        let counts = Counts {
            created_files: 60,
            reopened: 40,
            links: 20,
            hard_links: 20,
            mkdirs: 0,
            renames: 80,
            unlinks: 40,
            fsyncs: 100,
            fdatasyncs: 20,
            sync_file_ranges: 0,
        };
        assert_eq!(
            PerJob::of(&counts, 40),
            Some(PerJob {
                created: 2.0,
                inodes: 1.5,
                renames: 2.0,
                unlinks: 1.0,
                fsyncs: 3.0
            })
        );
        assert_eq!(PerJob::of(&counts, 0), None);
    }

    #[test]
    fn sh_is_found_and_nonsense_is_not() {
        assert!(find_program("sh").is_some());
        assert!(find_program("pixpool-bench-no-such-program").is_none());
    }
}
