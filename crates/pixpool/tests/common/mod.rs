//! Test support: run the real `pixpool` binary on port 0 in a temp uploads
//! directory, talk real HTTP to it, and inspect its real process tree.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
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

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running server and its temp uploads directory; killed and removed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub uploads: PathBuf,
    pub log: Arc<Mutex<String>>,
    pub fronts: u32,
    pub workers: u32,
}

impl Server {
    /// Starts `pixpool serve` with the given process counts and extra flags.
    pub fn start(fronts: u32, workers: u32, extra: &[&str]) -> Server {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let uploads = std::env::temp_dir().join(format!("pixpool-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&uploads);
        Self::start_in(uploads, fronts, workers, extra)
    }

    /// Starts a server on an existing uploads directory (restart tests).
    pub fn start_in(uploads: PathBuf, fronts: u32, workers: u32, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pixpool"))
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
            .env("RUST_LOG", "info")
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
                    let addr = addr.split_whitespace().next().unwrap_or("").to_string();
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
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not report its address; log:\n{}",
                    log.lock().expect("log")
                )
            });
        let addr: SocketAddr = addr.parse().expect("address in the log");
        let server = Server {
            child,
            addr,
            uploads,
            log,
            fronts,
            workers,
        };
        server.wait_ready(Duration::from_secs(20));
        server
    }

    /// Waits until every child is up and each front reports all workers connected.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let kids = self.children();
            let ready = kids.len() == (self.fronts + self.workers) as usize
                && (0..self.workers)
                    .all(|w| self.uploads.join(format!("run/worker-{w}.sock")).exists())
                && self.log_text().matches("connected to worker").count()
                    >= (self.fronts * self.workers) as usize;
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// A response, body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, hyper::Error> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the server");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr })
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, hyper::Error> {
        let req = Request::get(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(req).await
    }

    /// POSTs `bytes` as the `image` file of a multipart form.
    pub async fn upload(&mut self, file_name: &str, bytes: &[u8]) -> Result<Resp, hyper::Error> {
        let req = multipart_request(self.addr, "/upload", &[("image", Some(file_name), bytes)]);
        self.send(req).await
    }
}

/// Builds a multipart/form-data POST; each part is (field, file name, content).
pub fn multipart_request(
    addr: SocketAddr,
    path: &str,
    parts: &[(&str, Option<&str>, &[u8])],
) -> Request<Full<Bytes>> {
    let boundary = "pixpool-test-boundary-7d3f9a";
    let mut body = Vec::new();
    for (field, file_name, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file_name {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::post(path)
        .header("host", addr.to_string())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// One upload on a fresh connection.
pub async fn upload(addr: SocketAddr, file_name: &str, bytes: &[u8]) -> Resp {
    Conn::open(addr)
        .await
        .expect("handshake")
        .upload(file_name, bytes)
        .await
        .expect("upload request")
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

/// Decodes an output file and returns its dimensions, checking it is a JPEG.
pub fn jpeg_dimensions(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "{} is not a JPEG",
        path.display()
    );
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    (img.width(), img.height())
}
