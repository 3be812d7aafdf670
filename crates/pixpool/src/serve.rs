//! `pixpool serve`: prepare the uploads directory, bind the shared listener,
//! describe the children, and hand over to the single-threaded supervisor.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use pixpool_store::Store;
use pixpool_supervisor::{ChildSpec, Config, Exit};
use tracing::{info, warn};

use crate::cli::ServeArgs;

/// Runs the supervisor. No async runtime exists in this process: it forks.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::logging::init("supervisor", None);
    let store = Store::open(&args.uploads, None).with_context(|| {
        format!(
            "could not prepare the uploads directory {}",
            args.uploads.display()
        )
    })?;
    let presets = if args.presets.is_empty() {
        pixpool_imaging::Preset::builtin()
    } else {
        args.presets.clone()
    };
    pixpool_imaging::preset::validate_presets(&presets).context("invalid preset configuration")?;
    sweep_spool_dirs(&store);

    let (listener, addr) = pixpool_supervisor::listener::bind_shared(args.bind)
        .with_context(|| format!("could not listen on {}", args.bind))?;
    let (fronts, workers) = (args.fronts(), args.workers());
    info!(
        uploads = %store.root().display(),
        fronts,
        workers,
        "listening on {addr}"
    );

    let exe = std::env::current_exe().context("could not find the pixpool executable")?;
    let program =
        CString::new(exe.as_os_str().as_bytes()).context("executable path contains NUL")?;
    let uploads = store.root().to_string_lossy().into_owned();
    let common = |role: &str, slot: u32| -> Vec<String> {
        vec![
            "pixpool".into(),
            role.into(),
            "--slot".into(),
            slot.to_string(),
            "--workers".into(),
            workers.to_string(),
            "--uploads".into(),
            uploads.clone(),
            "--grace-secs".into(),
            args.grace_secs.to_string(),
            "--max-pixels".into(),
            args.max_pixels.to_string(),
            "--max-side".into(),
            args.max_side.to_string(),
        ]
        .into_iter()
        .chain(
            presets
                .iter()
                .flat_map(|p| ["--preset".to_string(), p.to_string()]),
        )
        .collect()
    };
    let mut children = Vec::new();
    // Workers first: their sockets are up by the time the fronts connect.
    for slot in 0..workers {
        let mut argv = common("worker", slot);
        argv.extend([
            "--queue-depth".into(),
            args.queue_depth.to_string(),
            "--job-timeout-secs".into(),
            args.job_timeout_secs.to_string(),
            "--recycle-after-jobs".into(),
            args.recycle_after_jobs.to_string(),
            "--recycle-rss-mb".into(),
            args.recycle_rss_mb.to_string(),
            "--memory-mb".into(),
            args.worker_memory_mb.to_string(),
        ]);
        children.push(spec("worker", slot, &program, argv, None, 1)?);
    }
    for slot in 0..fronts {
        let mut argv = common("front", slot);
        argv.extend([
            "--listen-fd".into(),
            pixpool_supervisor::child::INHERITED_FD.to_string(),
            "--max-upload-bytes".into(),
            args.max_upload_bytes.to_string(),
            "--min-free-disk-mb".into(),
            args.min_free_disk_mb.to_string(),
            "--max-connections".into(),
            args.max_connections.to_string(),
            "--body-idle-secs".into(),
            args.body_idle_secs.to_string(),
        ]);
        children.push(spec(
            "front",
            slot,
            &program,
            argv,
            Some(listener.as_raw_fd()),
            0,
        )?);
    }

    let same_children = children.clone();
    let exe_path = exe.clone();
    let config = Config {
        children,
        // Children get the grace period; the supervisor adds a little on top
        // so that a child finishing right at its deadline is not SIGKILLed.
        grace: Duration::from_secs(args.grace_secs) + Duration::from_secs(2),
        // SIGHUP: the configuration comes from flags and the environment,
        // fixed for this process; what a reload picks up is a new executable
        // (an upgrade in place) — checked to run before anything is replaced.
        reload: Box::new(move || {
            let status = std::process::Command::new(&exe_path)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("cannot run {}: {e}", exe_path.display()))?;
            if !status.success() {
                return Err(format!("{} --version failed: {status}", exe_path.display()));
            }
            Ok(same_children.clone())
        }),
    };
    let exit = pixpool_supervisor::run(config, || info!(fronts, workers, "all children started"))
        .context("supervisor failed")?;
    // The listener lives until here: while the supervisor holds it, the
    // kernel keeps queueing connections even if every front is restarting.
    drop(listener);
    Ok(match exit {
        Exit::Drained | Exit::StoppedFast => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Exit::ChildFatal { role, slot } => {
            warn!(role, slot, "a child failed fatally; exiting non-zero");
            ExitCode::FAILURE
        }
    })
}

fn spec(
    role: &'static str,
    slot: u32,
    program: &CString,
    argv: Vec<String>,
    pass_fd: Option<i32>,
    stop_order: u8,
) -> anyhow::Result<ChildSpec> {
    let argv = argv
        .into_iter()
        .map(CString::new)
        .collect::<Result<Vec<_>, _>>()
        .context("argument contains NUL")?;
    Ok(ChildSpec {
        role,
        slot,
        program: program.clone(),
        argv,
        pass_fd,
        stop_order,
    })
}

/// Before any front runs, every front slot's spool directory is cleaned up
/// (including slots of a previous run with more fronts): partial uploads, and
/// jobs recorded but never acknowledged — none of them ever got a 202.
fn sweep_spool_dirs(store: &Store) {
    let Ok(entries) = std::fs::read_dir(store.tmp_dir()) else {
        return;
    };
    let (mut parts, mut jobs) = (0, 0);
    for entry in entries.flatten() {
        let Some(slot) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            // Not a spool directory of ours (or a file from an older layout).
            let _ = std::fs::remove_file(entry.path());
            continue;
        };
        match store.recover_front(slot) {
            Ok((p, j)) => {
                parts += p;
                jobs += j;
            }
            Err(e) => warn!(cause = %e, slot, "could not clean a spool directory"),
        }
    }
    if parts + jobs > 0 {
        info!(
            parts,
            jobs, "removed unfinished uploads left by a previous run"
        );
    }
}
