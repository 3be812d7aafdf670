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
use crate::exit::ConfigError;
use crate::settings::{
    self, AdminSettings, ChildPaths, CourierSettings, FrontSettings, SweeperSettings,
    WorkerSettings,
};

/// Runs the supervisor. No async runtime exists in this process: it forks.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The log format may come from the file: resolve first, log after.
    let settings = Settings::resolve(&args);
    let format = settings.as_ref().map_or(LogFormat::Text, |s| s.log_format);
    crate::logging::init("supervisor", None, format);
    // Exits 78 (EX_CONFIG): systemd's restart cannot fix a configuration.
    let settings =
        settings.map_err(|e| anyhow::Error::new(ConfigError::Invalid(format!("{e:#}"))))?;
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
    if settings.queue.is_none() {
        sweep_spool_dirs(&store);
        match store.sweep_orphans() {
            Ok(swept) if swept != pixpool_store::Swept::default() => info!(
                temp_files = swept.temp_files,
                originals = swept.originals,
                "removed what interrupted writes left behind"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(cause = %pixpool_store::error_chain(&e), "could not sweep orphaned files")
            }
        }
    }
    rate_table(&settings, &store, true)?;
    // With a shared queue the local files are not the truth (a record lives in NATS):
    // each front recovers its own spool through the backend instead.
    crate::backend::preflight(settings.store.as_deref())?;

    // A worker-only host listens on no HTTP port.
    let listener = match settings.fronts {
        0 => None,
        _ => Some(listener(&settings)?),
    };
    let (control, children_end) = pixpool_supervisor::child::control_channel()
        .context("could not create the control channel")?;
    let (fronts, workers) = (settings.fronts, settings.workers);
    match &listener {
        Some((_, addr)) => info!(
            uploads = %store.root().display(),
            fronts,
            workers,
            "listening on {addr}"
        ),
        None => info!(
            uploads = %store.root().display(),
            workers,
            "worker-only host: no fronts, no HTTP listener"
        ),
    }
    if let Some(queue) = &settings.queue {
        info!(
            queue,
            store = settings.store.as_deref().unwrap_or("the uploads directory"),
            "distributed mode"
        );
    }
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
        listener: listener.as_ref().map(|(l, _)| l.as_raw_fd()),
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

/// The fronts' shared rate-limit table, in the runtime directory.
pub const RATE_TABLE: &str = "ratelimit.table";

/// Makes the rate-limit table when `rate_limit` is set: afresh at start (`fresh`),
/// where missing on a reload (one that turns limits on), kept otherwise, so that a
/// rolled front finds its clients' budgets as they were.
fn rate_table(settings: &Settings, store: &Store, fresh: bool) -> anyhow::Result<()> {
    if settings.rate_limit.is_none() {
        return Ok(());
    }
    let path = store.run_dir().join(RATE_TABLE);
    if fresh || !path.exists() {
        pixpool_limiter::Table::create(&path, pixpool_limiter::DEFAULT_SLOTS)
            .context("could not create the rate-limit table")?;
    }
    Ok(())
}

/// The fds children inherit.
#[derive(Debug, Clone, Copy)]
struct Fds {
    /// The shared HTTP listener (fronts); `None` on a worker-only host.
    listener: Option<i32>,
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
        ("queue", new.queue != running.queue),
        (
            "queue_replicas",
            new.queue_replicas != running.queue_replicas,
        ),
        ("store", new.store != running.store),
        // The courier process comes and goes with them, the sweeper with `retain`.
        (
            "webhooks on or off",
            new.webhooks_enabled() != running.webhooks_enabled(),
        ),
        (
            "retain on or off",
            new.retain.is_some() != running.retain.is_some(),
        ),
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
    rate_table(&new, store, false).map_err(|e| format!("{e:#}"))?;
    let specs = child_specs(&new, store, program, fds).map_err(|e| format!("{e:#}"))?;
    share_tokens(&new).map_err(|e| format!("{e:#}"))?;
    Ok(specs)
}

/// The variable that carries the tokens to the children, as a JSON list.
pub const CHILD_TOKENS_VAR: &str = "PIXPOOL_CHILD_API_TOKENS";

/// The variable that carries the webhook signing secret to the courier.
pub const CHILD_WEBHOOK_SECRET_VAR: &str = "PIXPOOL_CHILD_WEBHOOK_SECRET";

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
    // Likewise the webhook secret, which may come from the file; the operator's
    // PIXPOOL_WEBHOOK_SECRET is left as it was, for a SIGHUP to read again.
    match &settings.webhook_secret {
        Some(secret) => std::env::set_var(CHILD_WEBHOOK_SECRET_VAR, secret),
        None => std::env::remove_var(CHILD_WEBHOOK_SECRET_VAR),
    }
    Ok(())
}

/// The command lines of every child, workers first (their sockets are up by
/// the time the fronts connect). Each role's settings are built and encoded
/// once; the slots of a role differ only in `--slot`.
fn child_specs(
    s: &Settings,
    store: &Store,
    program: &CString,
    fds: Fds,
) -> anyhow::Result<Vec<ChildSpec>> {
    let paths = ChildPaths {
        uploads: store.root().to_path_buf(),
        metrics_socket: fds.admin.map(|_| store.run_dir().join(ADMIN_SOCKET)),
        rate_table: store.run_dir().join(RATE_TABLE),
    };
    let worker = settings::encode(&WorkerSettings::new(s, &paths)?)?;
    let front = settings::encode(&FrontSettings::new(s, &paths)?)?;
    let mut children = Vec::new();
    for slot in 0..s.workers {
        children.push(spec("worker", Some(slot), &worker, None, program, fds, 1)?);
    }
    for slot in 0..s.fronts {
        let listener = fds.listener;
        let child = spec("front", Some(slot), &front, listener, program, fds, 0)?;
        children.push(child);
    }
    if s.webhooks_enabled() {
        let courier = settings::encode(&CourierSettings::new(s, &paths)?)?;
        // Stopped with the workers, after the fronts: the deliveries in flight end
        // (10 s at most each); what is left stays in the outbox for the next start.
        children.push(spec("courier", None, &courier, None, program, fds, 1)?);
    }
    if let Some(sweeper) = SweeperSettings::new(s, &paths)? {
        let sweeper = settings::encode(&sweeper)?;
        // Stopped with the workers: a sweep is cut short, the next run goes on.
        children.push(spec("sweeper", None, &sweeper, None, program, fds, 1)?);
    }
    if let (Some(admin_fd), Some(socket)) = (fds.admin, &paths.metrics_socket) {
        let admin = settings::encode(&AdminSettings::new(s, socket))?;
        // Stopped last, so the final counters of the others are still scraped.
        let child = spec("admin", None, &admin, Some(admin_fd), program, fds, 2)?;
        children.push(child);
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

/// One child's spec: `pixpool ROLE [--slot N] [--listen-fd 3] --control-fd 4
/// --settings JSON`, the listener passed when `pass_fd` is given.
fn spec(
    role: &'static str,
    slot: Option<u32>,
    settings: &str,
    pass_fd: Option<i32>,
    program: &CString,
    fds: Fds,
    stop_order: u8,
) -> anyhow::Result<ChildSpec> {
    use pixpool_supervisor::child::{CONTROL_FD, INHERITED_FD};
    let mut argv = vec!["pixpool".to_string(), role.to_string()];
    if let Some(slot) = slot {
        argv.extend(["--slot".to_string(), slot.to_string()]);
    }
    if pass_fd.is_some() {
        argv.extend(["--listen-fd".to_string(), INHERITED_FD.to_string()]);
    }
    argv.extend(["--control-fd".to_string(), CONTROL_FD.to_string()]);
    argv.extend(["--settings".to_string(), settings.to_string()]);
    let argv = argv
        .into_iter()
        .map(CString::new)
        .collect::<Result<Vec<_>, _>>()
        .context("argument contains NUL")?;
    Ok(ChildSpec {
        role,
        slot: slot.unwrap_or(0),
        program: program.clone(),
        argv,
        pass_fd,
        control_fd: Some(fds.control),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--settings` argument of `spec`, and the arguments before it.
    fn split(spec: &ChildSpec) -> (String, String) {
        let argv: Vec<String> = spec
            .argv
            .iter()
            .map(|a| a.to_str().expect("UTF-8").to_string())
            .collect();
        let at = argv
            .iter()
            .position(|a| a == "--settings")
            .expect("--settings");
        (argv[..at].join(" "), argv[at + 1].clone())
    }

    #[test]
    fn each_child_gets_its_slot_on_the_command_line_and_its_role_settings_whole() {
        let dir = std::env::temp_dir().join(format!("pixpool-serve-{}", std::process::id()));
        let store = Store::open(&dir, None).expect("store");
        let program = CString::new("/bin/pixpool").expect("path");
        let fds = Fds {
            listener: Some(10),
            control: 11,
            admin: Some(12),
        };
        let paths = ChildPaths {
            uploads: store.root().to_path_buf(),
            metrics_socket: Some(store.run_dir().join(ADMIN_SOCKET)),
            rate_table: store.run_dir().join(RATE_TABLE),
        };
        let mut s = Settings {
            fronts: 2,
            workers: 3,
            ..Settings::default()
        };
        let before = child_specs(&s, &store, &program, fds).expect("specs");
        let roles: Vec<_> = before.iter().map(|c| (c.role, c.slot)).collect();
        let expected = [
            ("worker", 0),
            ("worker", 1),
            ("worker", 2),
            ("front", 0),
            ("front", 1),
        ];
        assert_eq!(roles[..5], expected);
        assert_eq!(roles[5], ("admin", 0));
        for child in &before {
            let (head, json) = split(child);
            match child.role {
                // What `ps` shows, and what the tests look for.
                "worker" => {
                    assert_eq!(
                        head,
                        format!("pixpool worker --slot {} --control-fd 4", child.slot)
                    );
                    let got: WorkerSettings = settings::decode(&json, "worker").expect("worker");
                    assert_eq!(got, WorkerSettings::new(&s, &paths).expect("worker"));
                }
                "front" => {
                    let fd = "--listen-fd 3 --control-fd 4";
                    assert_eq!(head, format!("pixpool front --slot {} {fd}", child.slot));
                    let got: FrontSettings = settings::decode(&json, "front").expect("front");
                    assert_eq!(got, FrontSettings::new(&s, &paths).expect("front"));
                    assert_eq!(child.pass_fd, Some(10));
                }
                _ => {
                    assert_eq!(head, "pixpool admin --listen-fd 3 --control-fd 4");
                    let got: AdminSettings = settings::decode(&json, "admin").expect("admin");
                    let socket = paths.metrics_socket.as_deref().expect("socket");
                    assert_eq!(got, AdminSettings::new(&s, socket));
                    assert_eq!(child.pass_fd, Some(12));
                }
            }
        }

        // A reload builds new specs the same way: what changed is in them,
        // and the roll puts each one in its slot.
        s.min_free_disk_mb = 1;
        s.queue_depth = 5;
        let after = child_specs(&s, &store, &program, fds).expect("specs");
        let front: FrontSettings = settings::decode(&split(&after[3]).1, "front").expect("front");
        assert_eq!(front.min_free_bytes, 1024 * 1024);
        let worker: WorkerSettings = settings::decode(&split(&after[0]).1, "worker").expect("w");
        assert_eq!(worker.queue_depth, 5);
        let _ = std::fs::remove_dir_all(store.root());
    }
}
