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

use std::path::Path;

use crate::cli::ServeArgs;
use crate::config::{LogFormat, Settings};

/// Runs the supervisor. No async runtime exists in this process: it forks.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The log format may come from the file: resolve first, log after.
    let settings = Settings::resolve(&args);
    let format = settings.as_ref().map_or(LogFormat::Text, |s| s.log_format);
    crate::logging::init("supervisor", None, format);
    let settings = settings?;
    // Before anything is created; every child inherits it.
    let umask = crate::umask::apply(settings.umask);
    info!(%umask, "file-creation mask set");
    let store = Store::open(&settings.uploads, None).with_context(|| {
        format!(
            "could not prepare the uploads directory {}",
            settings.uploads.display()
        )
    })?;
    // Not fatal: a tree owned by another user keeps its modes, and says so.
    if let Err(e) = store.restrict_dirs(umask.bits()) {
        warn!(cause = %pixpool_store::error_chain(&e), %umask, "could not take the umask's bits from an existing directory; other users may read the uploads");
    }
    sweep_spool_dirs(&store);
    match store.sweep_orphans() {
        Ok(swept) if swept != pixpool_store::Swept::default() => info!(
            temp_files = swept.temp_files,
            originals = swept.originals,
            "removed what interrupted writes left behind"
        ),
        Ok(_) => {}
        Err(e) => warn!(cause = %pixpool_store::error_chain(&e), "could not sweep orphaned files"),
    }

    let (listener, addr) = listener(&settings)?;
    let (control, children_end) = pixpool_supervisor::child::control_channel()
        .context("could not create the control channel")?;
    let (fronts, workers) = (settings.fronts, settings.workers);
    info!(
        uploads = %store.root().display(),
        fronts,
        workers,
        "listening on {addr}"
    );
    if settings.api_tokens.is_empty() {
        warn!("no API token configured: uploads and reads are open to anyone who can connect");
    }

    let exe = std::env::current_exe().context("could not find the pixpool executable")?;
    let program =
        CString::new(exe.as_os_str().as_bytes()).context("executable path contains NUL")?;
    let admin = match settings.admin_addr()? {
        Some(a) => Some(
            std::net::TcpListener::bind(a)
                .with_context(|| format!("could not listen on the admin address {a}"))?,
        ),
        None => None,
    };
    if let Some(a) = &admin {
        let addr = a.local_addr().context("admin address")?;
        info!("admin listening on {addr}: metrics at /metrics");
    }
    let fds = Fds {
        listener: listener.as_raw_fd(),
        control: children_end.as_raw_fd(),
        admin: admin.as_ref().map(|a| a.as_raw_fd()),
    };
    let children = child_specs(&settings, &store, &program, fds)?;
    share_tokens(&settings)?;

    let running = settings.clone();
    let metrics_socket = admin.as_ref().map(|_| store.run_dir().join(ADMIN_SOCKET));
    let config = Config {
        children,
        // Children get the grace period; the supervisor adds a little on top
        // so that a child finishing right at its deadline is not SIGKILLed.
        grace: Duration::from_secs(settings.grace_secs) + Duration::from_secs(2),
        reload: Box::new(move || reload(&args, &running, &store, &exe, &program, fds)),
        control: Some(control),
        metrics_socket,
        metrics: pixpool_metrics::Recorder::new("supervisor", 0),
    };
    let exit = pixpool_supervisor::run(config, || info!(fronts, workers, "all children started"))
        .context("supervisor failed")?;
    // The listener lives until here: while the supervisor holds it, the
    // kernel keeps queueing connections even if every front is restarting.
    drop(listener);
    drop(children_end);
    drop(admin);
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

/// The admin process's metrics socket, in the runtime directory.
const ADMIN_SOCKET: &str = "admin.sock";

/// The fds children inherit.
#[derive(Debug, Clone, Copy)]
struct Fds {
    /// The shared HTTP listener (fronts).
    listener: i32,
    /// The children's end of the control channel.
    control: i32,
    /// The admin listener, if the admin process runs.
    admin: Option<i32>,
}

/// The listening socket: the one systemd passed (socket activation,
/// `LISTEN_FDS`), else a fresh `SO_REUSEPORT` socket on `bind`.
fn listener(settings: &Settings) -> anyhow::Result<(std::net::TcpListener, std::net::SocketAddr)> {
    use std::os::fd::FromRawFd;
    let passed: Vec<i32> = sd_notify::listen_fds()
        .map(|f| f.collect())
        .unwrap_or_default();
    // The variables are for this process only: children get the fd explicitly.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if let Some(&fd) = passed.first() {
        // SAFETY: systemd passed this fd to this process (LISTEN_PID matched)
        // and nothing else here owns it.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let addr = listener
            .local_addr()
            .context("the socket passed by systemd is not a TCP listener")?;
        info!(fd, "using the listening socket passed by systemd");
        return Ok((listener, addr));
    }
    pixpool_supervisor::listener::bind_shared(settings.bind)
        .with_context(|| format!("could not listen on {}", settings.bind))
}

/// SIGHUP: re-reads the configuration (file, environment, flags) and checks
/// the executable on disk runs (an upgrade in place), then returns the specs
/// to roll onto. What cannot change without a restart is refused.
fn reload(
    args: &ServeArgs,
    running: &Settings,
    store: &Store,
    exe: &Path,
    program: &CString,
    fds: Fds,
) -> Result<Vec<ChildSpec>, String> {
    let new = Settings::resolve(args).map_err(|e| format!("{e:#}"))?;
    for (what, changed) in [
        ("bind", new.bind != running.bind),
        ("uploads", new.uploads != running.uploads),
        ("fronts", new.fronts != running.fronts),
        ("workers", new.workers != running.workers),
        ("admin", new.admin != running.admin),
        // The mask of the whole tree: children share the supervisor's.
        ("umask", new.umask != running.umask),
    ] {
        if changed {
            return Err(format!(
                "`{what}` cannot change on reload; restart the service"
            ));
        }
    }
    let status = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !status.success() {
        return Err(format!("{} --version failed: {status}", exe.display()));
    }
    let specs = child_specs(&new, store, program, fds).map_err(|e| format!("{e:#}"))?;
    share_tokens(&new).map_err(|e| format!("{e:#}"))?;
    Ok(specs)
}

/// The variable that carries the tokens to the children, as a JSON list.
pub const CHILD_TOKENS_VAR: &str = "PIXPOOL_CHILD_API_TOKENS";

/// Tokens reach the children through the environment, never their command
/// lines (which every user can read), as a JSON list so that each arrives whole.
/// A variable of its own: the operator's `PIXPOOL_API_TOKENS` is left as it was,
/// so that a SIGHUP reads the file again rather than a copy of it.
fn share_tokens(settings: &Settings) -> anyhow::Result<()> {
    let json =
        serde_json::to_string(&settings.api_tokens).context("could not encode the API tokens")?;
    // The supervisor is single-threaded, so nothing reads the environment
    // concurrently; children inherit it at the next fork.
    std::env::set_var(CHILD_TOKENS_VAR, json);
    Ok(())
}

/// The command lines of every child, workers first (their sockets are up by
/// the time the fronts connect).
fn child_specs(
    s: &Settings,
    store: &Store,
    program: &CString,
    fds: Fds,
) -> anyhow::Result<Vec<ChildSpec>> {
    let (listen_fd, control_fd) = (fds.listener, fds.control);
    let metrics_socket = store.run_dir().join(ADMIN_SOCKET);
    let presets = s.presets()?;
    let log_format = match s.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let uploads = store.root().to_string_lossy().into_owned();
    let common = |role: &str, slot: u32| -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "pixpool".into(),
            role.into(),
            "--slot".into(),
            slot.to_string(),
            "--workers".into(),
            s.workers.to_string(),
            "--uploads".into(),
            uploads.clone(),
            "--grace-secs".into(),
            s.grace_secs.to_string(),
            "--max-pixels".into(),
            s.max_pixels.to_string(),
            "--max-side".into(),
            s.max_side.to_string(),
            "--max-frames".into(),
            s.max_frames.to_string(),
            "--log-format".into(),
            log_format.into(),
            "--control-fd".into(),
            pixpool_supervisor::child::CONTROL_FD.to_string(),
        ];
        if fds.admin.is_some() {
            argv.extend([
                "--metrics-socket".to_string(),
                metrics_socket.to_string_lossy().into_owned(),
            ]);
        }
        for p in &presets {
            argv.extend(["--preset".to_string(), p.to_string()]);
        }
        argv
    };
    let mut children = Vec::new();
    for slot in 0..s.workers {
        let mut argv = common("worker", slot);
        argv.extend([
            "--queue-depth".into(),
            s.queue_depth.to_string(),
            "--job-timeout-secs".into(),
            s.job_timeout_secs.to_string(),
            "--recycle-after-jobs".into(),
            s.recycle_after_jobs.to_string(),
            "--recycle-rss-mb".into(),
            s.recycle_rss_mb.to_string(),
            "--memory-mb".into(),
            s.worker_memory_mb.to_string(),
            "--nice".into(),
            s.worker_nice.to_string(),
        ]);
        if !s.work_stealing {
            argv.push("--no-steal".into());
        }
        children.push(spec("worker", slot, program, argv, None, control_fd, 1)?);
    }
    for slot in 0..s.fronts {
        let mut argv = common("front", slot);
        argv.extend([
            "--listen-fd".into(),
            pixpool_supervisor::child::INHERITED_FD.to_string(),
            "--max-upload-bytes".into(),
            s.max_upload_bytes.to_string(),
            "--min-free-disk-mb".into(),
            s.min_free_disk_mb.to_string(),
            "--max-connections".into(),
            s.max_connections.to_string(),
            "--body-idle-secs".into(),
            s.body_idle_secs.to_string(),
            "--min-upload-bytes-per-sec".into(),
            s.min_upload_bytes_per_sec.to_string(),
            "--max-event-streams".into(),
            s.max_event_streams.to_string(),
        ]);
        for origin in &s.allowed_origins {
            argv.extend(["--allowed-origin".to_string(), origin.clone()]);
        }
        children.push(spec(
            "front",
            slot,
            program,
            argv,
            Some(listen_fd),
            control_fd,
            0,
        )?);
    }
    if let Some(admin_fd) = fds.admin {
        // Stopped last, so the final counters of the others are still scraped.
        let argv = vec![
            "pixpool".to_string(),
            "admin".into(),
            "--listen-fd".into(),
            pixpool_supervisor::child::INHERITED_FD.to_string(),
            "--metrics-socket".into(),
            metrics_socket.to_string_lossy().into_owned(),
            "--log-format".into(),
            log_format.into(),
            "--control-fd".into(),
            pixpool_supervisor::child::CONTROL_FD.to_string(),
        ];
        children.push(spec(
            "admin",
            0,
            program,
            argv,
            Some(admin_fd),
            control_fd,
            2,
        )?);
    }
    Ok(children)
}

/// `pixpool check-config [FILE]`.
pub fn check_config(args: crate::cli::CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let mut serve = args.serve;
    if args.file.is_some() {
        serve.config = args.file;
    }
    let settings = Settings::resolve(&serve)?;
    let source = match &serve.config {
        Some(p) => p.display().to_string(),
        None if Path::new(crate::config::DEFAULT_CONFIG_PATH).is_file() => {
            crate::config::DEFAULT_CONFIG_PATH.to_string()
        }
        None => "none (built-in defaults)".to_string(),
    };
    println!("# pixpool effective configuration (file: {source}; environment and flags applied)");
    print!("{}", settings.to_toml_redacted());
    Ok(ExitCode::SUCCESS)
}

fn spec(
    role: &'static str,
    slot: u32,
    program: &CString,
    argv: Vec<String>,
    pass_fd: Option<i32>,
    control_fd: i32,
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
        control_fd: Some(control_fd),
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
