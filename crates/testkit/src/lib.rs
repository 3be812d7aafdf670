//! pixpool's test support, shared by the integration tests of every crate and by
//! the bench: run the real `pixpool` binary on port 0 in a temp uploads directory
//! ([`Server`]), talk real HTTP to it ([`http`], [`sse`]), inspect its real process
//! tree, and make test photos.
//!
//! # Layout
//! - [`http`]: one keep-alive connection ([`Conn`]), responses, multipart bodies.
//! - [`sse`]: an event stream read event by event.
//! - [`servers`]: the distributed mode's real servers (NATS cluster, S3).
//! - this file: the server as a process, the photos, the job helpers.
#![forbid(unsafe_code)]

pub mod http;
pub mod servers;
pub mod service;
pub mod sse;

pub use http::{conn_per_front, multipart_request, upload, Conn, HttpError, Resp};
pub use service::{Backend, Services};
pub use sse::{SseEvent, SseStream};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The repository's `test-data/` folder.
pub fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-data")
}

/// A photo from `test-data/`.
pub fn test_photo(name: &str) -> PathBuf {
    test_data().join(name)
}

/// `../shared/corpus` (or `$PIXPOOL_CORPUS`), if present. Tests that need it
/// print why they skip when it is absent.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("PIXPOOL_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    if dir.join("manifest.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: the photo corpus was not found at {} (set PIXPOOL_CORPUS or check out ../shared)",
            dir.display()
        );
        None
    }
}

/// The server binary: `$PIXPOOL_TEST_BIN` (another build, e.g. an earlier
/// commit's, to watch a regression test fail against it), else this build's
/// `pixpool`, beside the running test's own directory (`target/<profile>/deps/`):
/// cargo builds it for the pixpool package's tests; another package's tests
/// build it here once if it is missing.
pub fn pixpool_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PIXPOOL_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut dir = exe
            .parent()
            .expect("the test binary's directory")
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = dir.join("pixpool");
        if !bin.is_file() {
            eprintln!(
                "{} is missing: running `cargo build -p pixpool`",
                bin.display()
            );
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "pixpool"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(
                status.is_ok_and(|s| s.success()) && bin.is_file(),
                "could not build {}",
                bin.display()
            );
        }
        bin
    })
    .clone()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running server and its temp uploads directory; killed and removed on drop.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub uploads: PathBuf,
    pub log: Arc<Mutex<String>>,
    pub fronts: u32,
    pub workers: u32,
    /// Started with `--queue`: its workers pull from NATS (no sockets, no links).
    pub distributed: bool,
    /// The NATS cluster and bucket this server alone runs on
    /// (`PIXPOOL_TEST_BACKEND=distributed`); killed after the server.
    pub services: Option<Box<Services>>,
}

impl Server {
    /// Starts `pixpool serve` with the given process counts and extra flags.
    ///
    /// With `PIXPOOL_TEST_BACKEND=distributed`, on a NATS cluster and a bucket of its
    /// own (`--queue`, `--store`): the same test then checks the distributed mode.
    pub fn start(fronts: u32, workers: u32, extra: &[&str]) -> Server {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let uploads = std::env::temp_dir().join(format!("pixpool-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&uploads);
        match Backend::from_env() {
            Backend::Embedded => Self::start_in(uploads, fronts, workers, extra),
            Backend::Distributed => {
                let services = Services::start(&format!("server-{n}"))
                    .expect("PIXPOOL_TEST_BACKEND=distributed needs nats-server and moto_server");
                let mut server = services.tree_in(uploads, fronts, workers, extra);
                server.services = Some(Box::new(services));
                server
            }
        }
    }

    /// Starts a server on an existing uploads directory (restart tests).
    pub fn start_in(uploads: PathBuf, fronts: u32, workers: u32, extra: &[&str]) -> Server {
        Self::start_env(uploads, fronts, workers, extra, &[])
    }

    /// Starts a server with extra environment variables.
    pub fn start_env(
        uploads: PathBuf,
        fronts: u32,
        workers: u32,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        Self::start_bin(&pixpool_bin(), uploads, fronts, workers, extra, envs)
    }

    /// Starts a server from the executable `bin` (a copy, for tests that
    /// replace it on disk under the running server).
    pub fn start_bin(
        bin: &Path,
        uploads: PathBuf,
        fronts: u32,
        workers: u32,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--uploads"])
            .arg(&uploads)
            .args([
                "--fronts",
                &fronts.to_string(),
                "--workers",
                &workers.to_string(),
            ])
            .args(extra)
            // Tests run in parallel: no fixed admin port unless a test asks.
            .args(if extra.contains(&"--admin") {
                &[][..]
            } else {
                &["--admin", "off"][..]
            })
            .env("RUST_LOG", "info")
            // The developer's own settings must not leak into a test's server.
            .env_remove("PIXPOOL_API_TOKENS")
            .env_remove("PIXPOOL_CONFIG")
            .env_remove("PIXPOOL_WEBHOOK_SECRET")
            .env_remove("PIXPOOL_WEBHOOK_URL")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pixpool");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr: String = addr
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                if std::env::var_os("PIXPOOL_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                let mut l = sink.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let distributed = extra.contains(&"--queue");
        // A worker-only host listens on nothing.
        let addr = if fronts == 0 {
            "127.0.0.1:0".to_string()
        } else {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!(
                        "server did not report its address; log:\n{}",
                        log.lock().expect("log")
                    )
                })
        };
        let addr: SocketAddr = addr.parse().expect("address in the log");
        let server = Server {
            child,
            addr,
            uploads,
            log,
            fronts,
            workers,
            distributed,
            services: None,
        };
        // A fresh NATS cluster takes seconds to place its streams, more on a machine
        // busy compiling.
        server.wait_ready(Duration::from_secs(if distributed { 120 } else { 20 }));
        server
    }

    /// Waits until every child is up and each front reports all workers connected; in
    /// the distributed mode, until `/readyz` also says so on several connections in a
    /// row (spread over the fronts): a cluster that has just formed may still be
    /// electing its streams' leaders, and a client's upload would get 503.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut ready_in_a_row = 0;
        loop {
            let kids: Vec<_> = self
                .children()
                .into_iter()
                .filter(|(_, c)| c.starts_with("pixpool front") || c.starts_with("pixpool worker"))
                .collect();
            let log = self.log_text();
            let ready = if self.distributed {
                kids.len() == (self.fronts + self.workers) as usize
                    && log.matches("front ready").count() >= self.fronts as usize
                    && log.matches("worker ready").count() >= self.workers as usize
            } else {
                kids.len() == (self.fronts + self.workers) as usize
                    && (0..self.workers)
                        .all(|w| self.uploads.join(format!("run/worker-{w}.sock")).exists())
                    && log.matches("connected to worker").count()
                        >= (self.fronts * self.workers) as usize
            };
            if ready && (!self.distributed || self.fronts == 0) {
                return;
            }
            if ready {
                ready_in_a_row = if self.readyz_ok() {
                    ready_in_a_row + 1
                } else {
                    0
                };
                if ready_in_a_row >= 2 * self.fronts {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `GET /readyz` answers 200 on a new connection.
    fn readyz_ok(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut head = [0u8; 12];
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_exact(&mut head).is_ok()
            && &head[..] == b"HTTP/1.1 200"
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Direct children of the supervisor: (pid, command line).
    pub fn children(&self) -> Vec<(i32, String)> {
        children_of(self.child.id() as i32)
    }

    /// The pid of the child running `role --slot N`.
    pub fn child_pid(&self, role: &str, slot: u32) -> Option<i32> {
        let needle = format!("pixpool {role} --slot {slot} ");
        self.children()
            .into_iter()
            .find(|(_, cmd)| cmd.starts_with(&needle))
            .map(|(pid, _)| pid)
    }

    /// Sends `sig` to the supervisor.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal supervisor");
    }

    /// Waits for the supervisor to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin listener's address, as its `admin listening on` line says (a server
    /// started with `--admin 127.0.0.1:0`).
    pub fn admin_addr(&self) -> SocketAddr {
        let log = self.log_text();
        log.split("admin listening on ")
            .nth(1)
            .map(|r| {
                r.chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect::<String>()
                    .trim_end_matches(':')
                    .to_string()
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in the log:\n{log}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The job record as it is on disk.
    pub fn record(&self, id: &str) -> Option<Value> {
        match &self.services {
            Some(s) => s.record(id),
            None => read_record(&self.uploads, id),
        }
    }

    /// The stored bytes a record names by `path` (a file under `--uploads`, or an
    /// object in the bucket); panics if there are none.
    pub fn stored(&self, path: &str) -> Vec<u8> {
        match &self.services {
            Some(s) => s.object(path).unwrap_or_else(|| panic!("no object {path}")),
            None => {
                std::fs::read(self.uploads.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
            }
        }
    }

    /// Where an original is stored, as its record names it.
    pub fn original_path(&self, id: &str, ext: &str) -> String {
        match &self.services {
            Some(_) => format!("{}/originals/{id}.{ext}", service::PREFIX),
            None => format!("raw/{id}.{ext}"),
        }
    }

    /// Where a variant is stored, as its record names it.
    pub fn variant_path(&self, id: &str, preset: &str, ext: &str) -> String {
        match &self.services {
            Some(_) => format!("{}/variants/{id}-{preset}.{ext}", service::PREFIX),
            None => format!("processed/{id}-{preset}.{ext}"),
        }
    }

    /// The ids of the jobs with a record.
    pub fn job_ids(&self) -> Vec<String> {
        match &self.services {
            Some(s) => s.job_ids(),
            None => dir_entries(&self.uploads.join("jobs"))
                .into_iter()
                // A running process's spare files (records are swapped with them) are
                // no jobs; anything else there is listed as it is, for a test to see.
                .filter(|f| !f.starts_with(".spare."))
                .map(|f| f.strip_suffix(".json").map_or(f.clone(), str::to_string))
                .collect(),
        }
    }

    /// The stored originals (file names under `raw/`, or keys in the bucket).
    pub fn originals(&self) -> Vec<String> {
        match &self.services {
            Some(s) => s.originals(),
            None => dir_entries(&self.uploads.join("raw")),
        }
    }

    /// Everything the server keeps that names `needle` (a job id, a content hash):
    /// paths under `--uploads` and the targets of its symbolic links (the dedup
    /// index); in the distributed mode also the bucket's keys and the KV entries
    /// (records, dedup index, webhook outbox) whose key or value names it.
    pub fn names(&self, needle: &str) -> Vec<String> {
        let mut found: Vec<String> = files_below(&self.uploads)
            .into_iter()
            .filter(|path| {
                let target = std::fs::read_link(self.uploads.join(path))
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                path.contains(needle) || target.contains(needle)
            })
            .collect();
        if let Some(s) = &self.services {
            found.extend(s.keys().into_iter().filter(|k| k.contains(needle)));
            for bucket in ["pixpool_jobs", "pixpool_dedup", "pixpool_outbox"] {
                found.extend(
                    s.kv(bucket)
                        .into_iter()
                        .filter(|(k, v)| {
                            k.contains(needle) || (bucket == "pixpool_dedup" && v.contains(needle))
                        })
                        .map(|(k, _)| format!("{bucket}/{k}")),
                );
            }
        }
        found
    }

    /// Log lines containing every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// The workers' `processing attempt=N` lines for job `id`.
    pub fn processing_lines(&self, id: &str) -> Vec<String> {
        self.log_lines_with(&[id, "processing attempt="])
    }

    /// Waits until the on-disk record of `id` satisfies `cond`; returns it.
    pub async fn wait_record(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        poll_until(
            timeout,
            || format!("job {id}: {what}; record {:?}", self.record(id)),
            || self.record(id).filter(|r| cond(r)),
        )
        .await
    }

    /// Waits until a new process runs in `role` slot `slot` (not `old`).
    pub async fn wait_respawn(&self, role: &str, slot: u32, old: i32, timeout: Duration) -> i32 {
        poll_until(
            timeout,
            || {
                format!(
                    "{role} {slot} (was {old}) not respawned:\n{}",
                    self.log_text()
                )
            },
            || self.child_pid(role, slot).filter(|p| *p != old),
        )
        .await
    }

    /// SIGKILLs the supervisor (its children die with it by PR_SET_PDEATHSIG)
    /// and reaps it, keeping the uploads directory for a restart. Returns the
    /// directory and the log.
    pub fn kill_tree(mut self) -> (PathBuf, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log_text();
        // Drop must not delete the directory the restart will use.
        let uploads = std::mem::replace(&mut self.uploads, PathBuf::from("/nonexistent/pixpool"));
        (uploads, log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Children die with the supervisor (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.uploads);
        } else {
            eprintln!("server log:\n{}", self.log_text());
        }
    }
}

/// A fresh, unique uploads directory path for a test server.
pub fn fresh_uploads() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("pixpool-test-{}-{n}", std::process::id()))
}

/// Resident set size of a process in bytes, from /proc.
pub fn rss_bytes(pid: i32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had (`VmHWM`), in bytes; 0 if gone.
pub fn peak_rss_bytes(pid: i32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

/// A `kB` line of /proc/`pid`/status, in bytes.
fn proc_status_bytes(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Direct children of `ppid`, from /proc: (pid, command line with spaces).
pub fn children_of(ppid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, ...
        let Some(rest) = stat.rsplit(')').next() else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let parent: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if parent != ppid || state == "Z" {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        out.push((pid, cmd));
    }
    out
}

/// Every live process whose command line is a pixpool role inside `uploads`.
pub fn processes_using(uploads: &Path) -> Vec<(i32, String)> {
    let needle = uploads.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if cmd.contains(&needle) && !zombie {
            out.push((pid, cmd));
        }
    }
    out
}

/// Polls `GET /jobs/<id>` until the job is final; panics after `timeout`.
pub async fn wait_final(addr: SocketAddr, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::open(addr).await.expect("handshake");
    loop {
        let resp = match conn.get(&format!("/jobs/{id}")).await {
            Ok(r) => r,
            Err(_) => {
                conn = Conn::open(addr).await.expect("reconnect");
                continue;
            }
        };
        // Retried as a client would: a distributed backend electing a leader says so.
        if resp.status == StatusCode::SERVICE_UNAVAILABLE && resp.header("retry-after").is_some() {
            assert!(
                Instant::now() < deadline,
                "job {id}: still 503 at the deadline"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(resp.status, StatusCode::OK, "job {id}: {:?}", resp.body);
        let job = resp.json();
        match job["state"].as_str() {
            Some("done") | Some("failed") => return job,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not final after {timeout:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A JPEG made unique (so that dedup does not merge it with its twins): the
/// same pixels, tagged `n` ([`tagged_jpeg`]).
pub fn unique_jpeg(bytes: &[u8], n: usize) -> Vec<u8> {
    tagged_jpeg(bytes, &n.to_string())
}

/// Decodes an output file and returns its dimensions, checking it is a JPEG.
pub fn jpeg_dimensions(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "{} is not a JPEG",
        path.display()
    );
    image_dimensions(path)
}

/// Polls `probe` every 5 ms until it yields a value; panics after `timeout`
/// with `what()` (evaluated only then, so it may read logs or files).
pub async fn poll_until<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not within {timeout:?}: {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The job record as it is on disk (`jobs/<id>.json`), if it exists and parses.
pub fn read_record(uploads: &Path, id: &str) -> Option<Value> {
    let bytes = std::fs::read(uploads.join(format!("jobs/{id}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Names of the entries of `dir` (empty when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file below `dir`, recursively, relative to it.
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// SIGKILLs one process.
pub fn kill9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}

/// Whether `pid` is gone (or a zombie waiting to be reaped).
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

/// The same JPEG with a comment segment (`tag`) inserted after its APPn
/// segments: a different file (different hash, so no dedup) that decodes to
/// the same pixels with the same EXIF orientation.
pub fn tagged_jpeg(bytes: &[u8], tag: &str) -> Vec<u8> {
    assert!(bytes.starts_with(&[0xFF, 0xD8]), "not a JPEG");
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xFF && (0xE0..=0xEF).contains(&bytes[at + 1]) {
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        at += 2 + len;
    }
    let payload = format!("pixpool-test {tag}");
    let mut out = Vec::with_capacity(bytes.len() + payload.len() + 4);
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(&bytes[at..]);
    out
}

/// Dimensions of an output file of any format the server writes.
pub fn image_dimensions(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let img = image::load_from_memory(&bytes)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    (img.width(), img.height())
}

/// A job that keeps a worker busy long enough to kill it mid-job: the 20 MP
/// corpus photo when the corpus is present, else a 20 MP JPEG made here from
/// a test-data photo; always with every built-in preset. Returns (file name,
/// bytes made unique by `tag`).
pub fn slow_photo(tag: &str) -> (String, Vec<u8>) {
    static BIG: std::sync::OnceLock<(String, Vec<u8>)> = std::sync::OnceLock::new();
    let (name, bytes) = BIG.get_or_init(|| {
        if let Some(path) = corpus()
            .map(|c| c.join("15-kleiber-20mp-orient6.jpg"))
            .filter(|p| p.is_file())
        {
            let bytes = std::fs::read(&path).expect("slow photo");
            return ("15-kleiber-20mp-orient6.jpg".to_string(), bytes);
        }
        let small = image::open(test_photo("04-fallenleaf.jpg")).expect("test photo");
        let big = small.resize_exact(5600, 3500, image::imageops::FilterType::Triangle);
        let mut out = std::io::Cursor::new(Vec::new());
        big.to_rgb8()
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("encode a 20 MP JPEG");
        ("big-fallenleaf.jpg".to_string(), out.into_inner())
    });
    (name.clone(), tagged_jpeg(bytes, tag))
}

/// Asserts `resp` is an RFC 9457 problem with `status`.
pub fn assert_problem(resp: &Resp, status: StatusCode, what: &str) {
    assert_eq!(
        resp.status,
        status,
        "{what}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    let p = resp.json();
    assert_eq!(
        p["status"].as_u64(),
        Some(status.as_u16() as u64),
        "{what}: {p}"
    );
    assert!(
        p["type"].as_str().is_some_and(|t| !t.is_empty())
            && p["title"].is_string()
            && p["detail"].is_string(),
        "{what}: {p}"
    );
}

/// SIGSTOPs a process (it keeps its sockets and claims but does nothing).
pub fn pause_process(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP {pid}: {e}"));
}

/// SIGCONTs a process stopped by [`pause_process`].
pub fn resume_process(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap_or_else(|e| panic!("SIGCONT {pid}: {e}"));
}

/// The id of a 202 answer to a fresh upload, checking the documented body.
pub fn accepted_id(resp: &Resp, what: &str) -> String {
    assert_eq!(
        resp.status,
        StatusCode::ACCEPTED,
        "{what}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let body = resp.json();
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(body["state"], "queued", "{what}: {body}");
    assert_eq!(body["deduplicated"], false, "{what}: {body}");
    assert_eq!(body["status_url"], format!("/jobs/{id}"), "{what}: {body}");
    assert_eq!(
        resp.header("location"),
        Some(format!("/jobs/{id}").as_str()),
        "{what}"
    );
    id
}

/// With a server of ONE worker: uploads a slow job and then `bytes`, and
/// SIGSTOPs the worker right after the second 202, so that the second job
/// cannot reach a final state until [`resume_process`] on the returned pid.
/// Returns (the second job's id, the stopped worker's pid).
pub async fn stalled_job(server: &Server, name: &str, bytes: &[u8], query: &str) -> (String, i32) {
    assert_eq!(server.workers, 1, "stalled_job needs a single worker");
    let (slow_name, slow) = slow_photo(&format!("stall-ahead-of-{name}"));
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let ahead = conn
        .upload(&slow_name, &slow)
        .await
        .expect("upload the slow job");
    accepted_id(&ahead, "slow job ahead");
    let resp = conn
        .upload_to(&format!("/upload{query}"), &[("image", Some(name), bytes)])
        .await
        .expect("upload");
    let id = accepted_id(&resp, "job to stall");
    let worker = server.child_pid("worker", 0).expect("worker 0");
    pause_process(worker);
    let rec = server.record(&id).expect("record of an accepted job");
    assert!(
        rec["state"] == "queued" || rec["state"] == "processing",
        "the job finished before the worker could be stopped (test set-up raced): {rec}"
    );
    (id, worker)
}

/// One scrape of the admin's `/metrics`, checked to be Prometheus text.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut c = Conn::open(addr).await.expect("admin");
    let resp = c.get("/metrics").await.expect("scrape");
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    String::from_utf8(resp.body.to_vec()).expect("utf-8")
}

/// The value of `series` (name and labels, as written) in a scrape; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes until `ok` holds of the text (the admin adds up snapshots sent each second).
pub async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The answers to two identical uploads sent at once (to two fronts, or two
/// trees): both 202 or 200, the same job, exactly one of them its creator. Returns
/// the job's id.
pub fn one_job_of_a_race(ra: &Resp, rb: &Resp, what: &str) -> String {
    for r in [ra, rb] {
        assert!(
            r.status == StatusCode::ACCEPTED || r.status == StatusCode::OK,
            "{what}: {r:?}"
        );
    }
    let (ja, jb) = (ra.json(), rb.json());
    assert_eq!(ja["id"], jb["id"], "{what}: {ja} vs {jb}");
    let fresh = [&ja, &jb]
        .iter()
        .filter(|j| j["deduplicated"] == false)
        .count();
    assert_eq!(
        fresh, 1,
        "{what}: exactly one answer created the job: {ja} vs {jb}"
    );
    ja["id"].as_str().expect("id").to_string()
}

/// Polls `GET path` on `conn` until it answers `status`, for at most `within`.
pub async fn wait_for_status(conn: &mut Conn, path: &str, status: StatusCode, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = conn.get(path).await.expect("GET");
        if got.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {} (waited for {status})",
            got.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends the headers and the first half of a multipart upload on a raw socket
/// and stalls there. Returns the socket.
pub fn half_an_upload(addr: std::net::SocketAddr, bytes: &[u8]) -> std::net::TcpStream {
    let boundary = "pixpool-half-upload-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"half.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    std::io::Write::write_all(&mut sock, head.as_bytes()).expect("send headers");
    std::io::Write::write_all(&mut sock, &body[..body.len() / 2]).expect("send half the body");
    std::io::Write::flush(&mut sock).expect("flush");
    sock
}
