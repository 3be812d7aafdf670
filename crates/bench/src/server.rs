//! Starting the server under test, knowing when it is ready, stopping it, and keeping
//! a runnable copy of the peer.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::StatusCode;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::http::Conn;
use crate::procs::{self, Role};

/// After SIGTERM, how long a server gets to exit before its whole process group is
/// killed. Both drain in well under a second once their jobs are finished.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a server may take to be ready (Node loading Sharp on a busy 2-core
/// machine takes seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often readiness is checked.
const START_POLL: Duration = Duration::from_millis(50);

/// pixpool's log filter unless `RUST_LOG` is set: warnings, plus the `listening on`
/// line that gives its address. Its per-job info lines are off, like the peer's
/// (`LOG_JOBS=0`).
pub const PIXPOOL_LOG: &str = "warn,pixpool::serve=info";

/// Lines of each server's output kept for error messages.
const LOG_TAIL_LINES: usize = 300;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// `pixpool serve`.
    Pixpool,
    /// The Node.js peer (`node src/cluster_initializer.js`).
    Peer,
    /// `pixpool serve` in the distributed mode, on this host's NATS cluster and S3
    /// server ([`SharedServices`]), with the same fronts and workers.
    Distributed,
    /// The distributed mode split over hosts: a front-only tree, and one worker-only
    /// tree of one worker pinned to CPU 0 (`taskset`).
    SplitOne,
    /// [`ServerKind::SplitOne`] with a second worker-only tree pinned to CPU 1.
    SplitTwo,
}

impl ServerKind {
    /// Short name, as in the report.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Pixpool => "pixpool",
            ServerKind::Peer => "peer",
            ServerKind::Distributed => "distributed",
            ServerKind::SplitOne => "split-1w",
            ServerKind::SplitTwo => "split-2w",
        }
    }

    /// Whether this is pixpool (in any mode): its API, its process names.
    pub fn is_pixpool(self) -> bool {
        self != ServerKind::Peer
    }

    /// The worker-only trees started beside the main one, each pinned to one CPU.
    fn pinned_worker_trees(self) -> u32 {
        match self {
            ServerKind::SplitOne => 1,
            ServerKind::SplitTwo => 2,
            _ => 0,
        }
    }
}

/// The NATS cluster and S3 server of the distributed runs, started once by the
/// benchmark.
#[derive(Debug, Clone)]
pub struct SharedServices {
    /// `--queue`: the cluster's client URLs.
    pub queue: String,
    /// The bucket; each run stores under a prefix of its own.
    pub bucket: String,
    /// The `AWS_*` variables that point pixpool at the S3 server.
    pub env: Vec<(String, String)>,
}

/// What is needed to start either server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The pixpool executable.
    pub pixpool_bin: PathBuf,
    /// The prepared copy of the peer (see [`prepare_peer`]); `None` with `--no-peer`.
    pub peer_dir: Option<PathBuf>,
    /// The Node.js executable.
    pub node: PathBuf,
    /// Where the runs' uploads directories go (the benchmark's [`WorkDir`]).
    pub work_dir: PathBuf,
    /// Image workers.
    pub workers: u32,
    /// HTTP processes.
    pub fronts: u32,
    /// `RUST_LOG` for pixpool.
    pub pixpool_log: String,
    /// The distributed runs' services (`--distributed`, `--scaling`).
    pub shared: Option<SharedServices>,
}

/// A program the server runs under (a tracer): the server's command line is appended
/// to it, after `--`.
#[derive(Debug, Clone)]
pub struct Wrapper {
    /// The program (`strace`).
    pub program: PathBuf,
    /// Its own options.
    pub args: Vec<OsString>,
}

impl Wrapper {
    /// `cmd`, run under this wrapper: the same arguments, environment and directory.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new(&self.program);
        wrapped
            .args(&self.args)
            .arg("--")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}

/// The peer's `GET /stats`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStats {
    /// Tasks the web workers handed to the master (one per 202).
    pub accepted: u64,
    /// Jobs an image worker reported done.
    pub completed: u64,
    /// Jobs that failed (Sharp error, image worker died).
    pub failed: u64,
    /// `accepted - completed - failed`.
    pub pending: i64,
    /// Web workers alive.
    pub web_workers: u64,
    /// Image workers connected.
    pub image_workers: u64,
}

/// The last lines a server wrote (stdout and stderr).
#[derive(Debug, Default)]
struct LogTail {
    lines: VecDeque<String>,
}

impl LogTail {
    fn push(&mut self, line: String) {
        if self.lines.len() == LOG_TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

type SharedLog = Arc<Mutex<LogTail>>;

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, LogTail> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// A run's uploads directory, inside the benchmark's [`WorkDir`], which removes it.
#[derive(Debug)]
struct RunDir(PathBuf);

impl RunDir {
    fn create(path: PathBuf) -> anyhow::Result<RunDir> {
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("could not clear {}", path.display()))?;
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(RunDir(path))
    }
}

/// The directory that holds every run's uploads directory, removed (with them) when
/// the benchmark ends, not after each run.
///
/// Removing a run's thousands of files just before the next run is measured would tax
/// that run for something no real server sees: on ext4 without a journal (this
/// project's VMs), an inode freed in the last minute is skipped, one by one, by every
/// file creation in its block group (`recently_deleted`), and a group just emptied is
/// where the next run's directories go. pixpool creates about eight files a job against
/// the peer's two or three, so it paid that tax four times over.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// `parent/pixpool-bench-<pid>`, created.
    pub fn create(parent: &Path) -> anyhow::Result<WorkDir> {
        let dir = parent.join(format!("pixpool-bench-{}", std::process::id()));
        RunDir::create(dir.clone())?;
        Ok(WorkDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            if err.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "pixpool-bench: could not remove {}: {err}",
                    self.0.display()
                );
            }
        }
    }
}

/// A running server, in its own process group, with its temporary uploads directory.
/// Dropping it stops the server (SIGTERM, then SIGKILL to the group) and removes the
/// directory, so an error or an interruption leaves nothing behind.
#[derive(Debug)]
pub struct Server {
    /// Which server.
    pub kind: ServerKind,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The root process (pixpool's supervisor, the peer's master; or the [`Wrapper`]
    /// it runs under); also the process group id of the whole tree.
    pub pid: i32,
    /// Runs under a [`Wrapper`], whose child is the server's own root.
    wrapped: bool,
    child: Child,
    log: SharedLog,
    stopped: bool,
    // Removed with the benchmark's `WorkDir`, after every run.
    uploads: RunDir,
    /// Worker-only trees beside the main one (split runs), each its own process group,
    /// with the file its log goes to.
    companions: Vec<(Child, PathBuf)>,
}

impl Server {
    /// Starts `kind` with `launch`'s settings in a new uploads directory named after
    /// `tag`, and waits until it is ready (see the crate documentation).
    pub async fn start(kind: ServerKind, launch: &Launch, tag: &str) -> anyhow::Result<Server> {
        Server::start_under(kind, launch, tag, None).await
    }

    /// [`Server::start`], under `wrapper` if there is one.
    pub async fn start_under(
        kind: ServerKind,
        launch: &Launch,
        tag: &str,
        wrapper: Option<&Wrapper>,
    ) -> anyhow::Result<Server> {
        let uploads = RunDir::create(launch.work_dir.join(tag))?;
        let (mut cmd, addr) = match kind {
            ServerKind::Peer => {
                let dir = launch
                    .peer_dir
                    .as_ref()
                    .context("the peer was not prepared")?;
                let port = pixpool_testkit::servers::free_port();
                let mut cmd = Command::new(&launch.node);
                cmd.arg("src/cluster_initializer.js")
                    .current_dir(dir)
                    .env("HOST", "127.0.0.1")
                    .env("PORT", port.to_string())
                    .env("WEB_WORKERS", launch.fronts.to_string())
                    .env("IMAGE_WORKERS", launch.workers.to_string())
                    .env("UPLOAD_DIR", &uploads.0)
                    .env("LOG_JOBS", "0");
                (cmd, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            }
            _ => {
                let workers = if kind.pinned_worker_trees() > 0 {
                    0
                } else {
                    launch.workers
                };
                let mut cmd = Command::new(&launch.pixpool_bin);
                cmd.arg("serve")
                    .args(["--bind", "127.0.0.1:0", "--uploads"])
                    .arg(&uploads.0)
                    .args(["--workers", &workers.to_string()])
                    .args(["--fronts", &launch.fronts.to_string()])
                    .env("RUST_LOG", &launch.pixpool_log);
                if kind != ServerKind::Pixpool {
                    distributed(&mut cmd, launch, tag)?;
                }
                // The real port comes from the log.
                (cmd, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            }
        };
        if let Some(wrapper) = wrapper {
            cmd = wrapper.wrap(&cmd);
        }
        // Own process group: the terminal's Ctrl-C reaches only this benchmark, which
        // then stops the server itself; and the whole tree can be killed at once.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| {
            format!("could not start {} ({:?})", kind.name(), cmd.get_program())
        })?;
        let log = SharedLog::default();
        let (addr_tx, addr_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, log.clone(), None)?;
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, log.clone(), Some(addr_tx))?;
        }
        let pid = i32::try_from(child.id()).context("process id out of range")?;
        let mut server = Server {
            kind,
            addr,
            pid,
            wrapped: wrapper.is_some(),
            child,
            log,
            stopped: false,
            uploads,
            companions: Vec::new(),
        };
        for cpu in 0..kind.pinned_worker_trees() {
            let companion = worker_tree(launch, &server.uploads.0, tag, cpu)?;
            server.companions.push(companion);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ready = Readiness::default();
        loop {
            if let Some(status) = server.child.try_wait().context("waitpid failed")? {
                bail!(
                    "{} exited during start-up ({status}); its output:\n{}",
                    kind.name(),
                    server.log_tail()
                );
            }
            if kind.is_pixpool() && server.addr.port() == 0 {
                if let Ok(addr) = addr_rx.try_recv() {
                    server.addr = addr;
                }
            }
            if server.addr.port() != 0 && server.is_ready(launch, &mut ready).await {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                let hint = if server.addr.port() == 0 {
                    " (no `listening on ADDR` line: does RUST_LOG let it through?)"
                } else {
                    ""
                };
                bail!(
                    "{} was not ready after {:?}{hint}; its output:\n{}",
                    kind.name(),
                    START_TIMEOUT,
                    server.log_tail()
                );
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// The server's temporary uploads directory.
    pub fn uploads(&self) -> &Path {
        &self.uploads.0
    }

    /// The last lines the server wrote.
    pub fn log_tail(&self) -> String {
        let log = lock(&self.log);
        log.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// One readiness check.
    async fn is_ready(&self, launch: &Launch, ready: &mut Readiness) -> bool {
        match self.kind {
            ServerKind::Pixpool => {
                let tree = procs::classified_tree(self.kind, self.pid);
                let count = |role| tree.iter().filter(|p| p.role == role).count();
                if count(Role::Http) != launch.fronts as usize
                    || count(Role::Image) != launch.workers as usize
                {
                    return false;
                }
                // A new connection per check: the kernel spreads them over the fronts,
                // and each front must see every worker.
                let Some(body) = self.get_json("/health").await else {
                    return false;
                };
                if body["workers_connected"].as_u64() == Some(u64::from(launch.workers)) {
                    if let Some(slot) = body["slot"].as_u64() {
                        ready.fronts_seen.insert(slot);
                    }
                }
                ready.fronts_seen.len() == launch.fronts as usize
            }
            // Every tree's supervisor has seen each of its children ready (connected
            // to NATS and S3), and the fronts answer `/readyz`.
            ServerKind::Distributed | ServerKind::SplitOne | ServerKind::SplitTwo => {
                let all_ready = |text: &str| text.contains(CHILDREN_READY);
                if !all_ready(
                    &lock(&self.log)
                        .lines
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n"),
                ) {
                    return false;
                }
                for (_, log) in &self.companions {
                    if !std::fs::read_to_string(log).is_ok_and(|t| all_ready(&t)) {
                        return false;
                    }
                }
                self.get_json("/readyz").await.is_some()
            }
            ServerKind::Peer => {
                let (listening, loaded) = {
                    let log = lock(&self.log);
                    let count = |a: &str, b: &str| {
                        log.lines
                            .iter()
                            .filter(|l| l.contains(a) && l.contains(b))
                            .count()
                    };
                    (
                        count("web worker", "listening on"),
                        // Logged once the image worker has loaded Sharp.
                        count("image worker #", " ready "),
                    )
                };
                if listening < launch.fronts as usize || loaded < launch.workers as usize {
                    return false;
                }
                let Ok(Ok(stats)) = tokio::time::timeout(Duration::from_secs(3), async {
                    Conn::open(self.addr).await?.get("/stats").await
                })
                .await
                else {
                    return false;
                };
                let Ok(stats) = stats.parse::<PeerStats>() else {
                    return false;
                };
                stats.web_workers == u64::from(launch.fronts)
                    && stats.image_workers == u64::from(launch.workers)
            }
        }
    }

    /// `GET path` on a new connection: its JSON body when the answer is 200.
    async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), async {
            Conn::open(self.addr).await?.get(path).await
        })
        .await
        else {
            return None;
        };
        if resp.status != StatusCode::OK {
            return None;
        }
        resp.parse::<serde_json::Value>().ok()
    }

    /// The server's own root process: [`Server::pid`], or the wrapper's child.
    fn server_root(&self) -> i32 {
        if !self.wrapped {
            return self.pid;
        }
        procs::tree(self.pid)
            .into_iter()
            .find(|(_, stat)| stat.ppid == self.pid)
            .map_or(self.pid, |(pid, _)| pid)
    }

    /// Stops the server: SIGTERM to its root, up to [`STOP_GRACE`] to exit, then
    /// SIGKILL to its whole process group. Under a wrapper, the SIGTERM goes to the
    /// server (strace, given `-o FILE PROG`, blocks it) and the wrapper is waited for:
    /// it exits once the server's last process has, its log complete. The uploads
    /// directory stays until the benchmark's [`WorkDir`] goes.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = Pid::from_raw(self.pid);
        let _ = kill(Pid::from_raw(self.server_root()), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        // Stragglers and orphans alike: the group outlives its leader.
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Until the group is gone, nothing may still write into the directory.
        let deadline = Instant::now() + Duration::from_secs(2);
        while killpg(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (companion, _) in &mut self.companions {
            if let Ok(id) = i32::try_from(companion.id()) {
                let _ = killpg(Pid::from_raw(id), Signal::SIGKILL);
            }
            let _ = companion.kill();
            let _ = companion.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a pixpool supervisor logs once each child has reported ready.
const CHILDREN_READY: &str = "every child is ready";

/// The log filter of the distributed runs' trees: the benchmark's, and the supervisor's
/// readiness line.
fn distributed_log(launch: &Launch) -> String {
    format!("{},pixpool_supervisor=info", launch.pixpool_log)
}

/// Makes `cmd` a tree of the distributed mode on `launch`'s shared services, its files
/// under a prefix of its own (`tag`).
fn distributed(cmd: &mut Command, launch: &Launch, tag: &str) -> anyhow::Result<()> {
    let shared = launch
        .shared
        .as_ref()
        .context("the distributed runs need the NATS and S3 servers (--distributed)")?;
    cmd.args(["--queue", &shared.queue])
        .args(["--store", &format!("s3://{}/{tag}", shared.bucket)])
        .env("RUST_LOG", distributed_log(launch))
        .envs(shared.env.iter().map(|(k, v)| (k, v)));
    Ok(())
}

/// A worker-only tree of one worker pinned to `cpu`, beside a split run's front tree
/// (whose uploads directory `main` holds its own), in its own process group, logging
/// to a file.
fn worker_tree(
    launch: &Launch,
    main: &Path,
    tag: &str,
    cpu: u32,
) -> anyhow::Result<(Child, PathBuf)> {
    let uploads = main.join(format!("worker-host-{cpu}"));
    let log = main.join(format!("worker-host-{cpu}.log"));
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string()])
        .arg(&launch.pixpool_bin)
        .arg("serve")
        .arg("--uploads")
        .arg(&uploads)
        .args(["--fronts", "0", "--workers", "1", "--admin", "off"]);
    distributed(&mut cmd, launch, tag)?;
    let file = std::fs::File::create(&log)
        .with_context(|| format!("could not create {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .context("could not start a worker-only tree under taskset")?;
    Ok((child, log))
}

/// What readiness checks have established so far.
#[derive(Debug, Default)]
struct Readiness {
    /// pixpool fronts (slots) that answered `/health` with every worker connected.
    fronts_seen: BTreeSet<u64>,
}

/// Reads `pipe` line by line on a thread (so the server never blocks on a full pipe),
/// into `log`; echoes it with `PIXPOOL_BENCH_LOG=1`; sends the address of a
/// `listening on ADDR` line to `addr_tx`.
fn drain(
    pipe: impl Read + Send + 'static,
    log: SharedLog,
    mut addr_tx: Option<mpsc::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let echo = std::env::var_os("PIXPOOL_BENCH_LOG").is_some_and(|v| v == "1");
    std::thread::Builder::new()
        .name("server-log".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if echo {
                    eprintln!("  | {line}");
                }
                if let Some(addr) = parse_listening(&line) {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                lock(&log).push(line);
            }
        })
        .context("could not start a log reader thread")?;
    Ok(())
}

/// The address of pixpool's `… listening on 127.0.0.1:41234 …` log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    let token = rest.split_whitespace().next()?;
    token
        .trim_matches(|c: char| !(c.is_ascii_alphanumeric() || "[]:.".contains(c)))
        .parse()
        .ok()
}

/// A TCP port free on 127.0.0.1 right now (bound then released; the peer binds it
/// a moment later).
/// Copies the peer's source folder `source` (read-only is fine) into `cache` (its
/// files are rewritten only when they changed), runs `npm ci` there when
/// `node_modules` is missing or `package-lock.json` changed since the last install
/// (it fetches the pinned packages, Sharp's prebuilt binaries included, from the npm
/// registry), and checks that Sharp loads. Returns `cache`.
pub fn prepare_peer(source: &Path, cache: &Path, node: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        source.join("src/cluster_initializer.js").is_file(),
        "{} does not look like the peer (no src/cluster_initializer.js)",
        source.display()
    );
    copy_tree(source, cache)
        .with_context(|| format!("could not copy {} to {}", source.display(), cache.display()))?;
    let lock_file = std::fs::read(cache.join("package-lock.json")).unwrap_or_default();
    let stamp_file = cache.join(".pixpool-bench-installed-lock");
    let installed = cache.join("node_modules/sharp/package.json").is_file()
        && std::fs::read(&stamp_file).ok().as_deref() == Some(lock_file.as_slice());
    if !installed {
        eprintln!(
            "pixpool-bench: installing the peer's packages (npm ci) in {}",
            cache.display()
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(cache)
            .stdin(Stdio::null())
            // Keep stdout for the report.
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .context("could not run npm")?;
        anyhow::ensure!(status.success(), "npm ci failed ({status})");
        std::fs::write(&stamp_file, &lock_file)
            .with_context(|| format!("could not write {}", stamp_file.display()))?;
    }
    let out = Command::new(node)
        .args([
            "-e",
            "process.stdout.write(require('sharp').versions.vips || '?')",
        ])
        .current_dir(cache)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {}", node.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "sharp does not load in {}: {}",
        cache.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let node_version = Command::new(node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "pixpool-bench: peer ready in {} (node {node_version}, libvips {})",
        cache.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(cache.to_path_buf())
}

/// Copies `from` into `to` recursively, skipping what `npm ci` and the server make
/// (`node_modules`, `uploads`) and `.git`. Files are written afresh (not copied with
/// their read-only permissions) and only when their content differs.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("could not list {}", from.display()))?
    {
        let entry = entry.with_context(|| format!("could not list {}", from.display()))?;
        let name = entry.file_name();
        if ["node_modules", "uploads", ".git"]
            .iter()
            .any(|skip| name == *skip)
        {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry
            .file_type()
            .with_context(|| format!("could not stat {}", src.display()))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            let data =
                std::fs::read(&src).with_context(|| format!("could not read {}", src.display()))?;
            if std::fs::read(&dst).ok().as_deref() != Some(data.as_slice()) {
                let _ = std::fs::remove_file(&dst);
                std::fs::write(&dst, &data)
                    .with_context(|| format!("could not write {}", dst.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let line = "supervisor[12] 2025-01-01T00:00:00Z  INFO listening on 127.0.0.1:41234 uploads=/tmp/x fronts=2";
        assert_eq!(
            parse_listening(line),
            Some("127.0.0.1:41234".parse().expect("addr"))
        );
        assert_eq!(
            parse_listening("web worker 1 listening on [::1]:80,"),
            Some("[::1]:80".parse().expect("addr"))
        );
        assert_eq!(parse_listening("nothing here"), None);
    }
}
