//! The child roles. Each builds its own tokio runtime after exec; nothing
//! async ever exists in the supervisor that forked it.

use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use pixpool_store::Store;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{FrontArgs, WorkerArgs};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One event loop per process, as in nginx: the process is the unit of
    // parallelism. CPU and file work goes to the blocking pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// Resolves when the supervisor asks this child to drain (SIGTERM).
async fn terminated() {
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::error!(cause = %e, "cannot watch SIGTERM; only SIGKILL will stop this process");
            std::future::pending::<()>().await;
        }
    }
}

/// `pixpool front`.
pub fn front(args: FrontArgs) -> anyhow::Result<ExitCode> {
    crate::logging::init("front", Some(args.child.slot));
    let fd = args.listen_fd;
    // SAFETY: fstat only reads the fd's metadata; any fd number is safe to ask about.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        bail!(
            "--listen-fd {fd} is not an inherited socket (a front is started by `pixpool serve`)"
        );
    }
    // SAFETY: the supervisor passed this fd to us as our listener, and nothing
    // else in this process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let store =
        Store::open(&args.child.uploads, None).context("could not open the uploads directory")?;
    let names: Vec<String> = args.child.presets.iter().map(|p| p.name.clone()).collect();
    let config = pixpool_front::FrontConfig {
        slot: args.child.slot,
        store,
        workers: args.child.workers,
        known_presets: names.clone(),
        default_presets: names,
        max_upload_bytes: args.max_upload_bytes,
        drain_grace: Duration::from_secs(args.child.grace_secs),
    };
    runtime()?
        .block_on(pixpool_front::run(listener, config, terminated()))
        .context("front failed")?;
    Ok(ExitCode::SUCCESS)
}

/// `pixpool worker`.
pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    crate::logging::init("worker", Some(args.child.slot));
    let store =
        Store::open(&args.child.uploads, None).context("could not open the uploads directory")?;
    let config = pixpool_worker::WorkerConfig {
        slot: args.child.slot,
        workers: args.child.workers,
        store,
        queue_depth: args.queue_depth,
        presets: args.child.presets,
        limits: pixpool_imaging::Limits::default(),
    };
    runtime()?
        .block_on(pixpool_worker::run(config, terminated()))
        .context("worker failed")?;
    Ok(ExitCode::SUCCESS)
}
