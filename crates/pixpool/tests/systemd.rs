//! systemd integration: socket activation (`systemd-socket-activate`) and the
//! notify protocol, read from a test-owned `NOTIFY_SOCKET`. systemd is not
//! PID 1 here; the tools that speak its protocols are enough.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pixpool_testkit::*;

/// Collects notify messages until `want` arrives (or panics after `timeout`).
fn wait_for(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m| m.lines().any(|l| l == want)) {
        assert!(Instant::now() < deadline, "no {want} in {seen:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn socket_activation_and_notify_ready_watchdog_stopping_in_order() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: systemd-socket-activate is not installed");
        return;
    }
    let dir = fresh_uploads();
    std::fs::create_dir_all(&dir).expect("dir");
    let notify_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let uploads = dir.join("uploads");
    let mut child = Command::new("systemd-socket-activate")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=WATCHDOG_USEC=2000000")
        .arg("--setenv=RUST_LOG=info")
        .arg(env!("CARGO_BIN_EXE_pixpool"))
        .args([
            "serve",
            "--fronts",
            "2",
            "--workers",
            "2",
            "--admin",
            "127.0.0.1:0",
            "--uploads",
        ])
        .arg(&uploads)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("log").push_str(&(line + "\n"));
        }
    });
    // The first connection makes systemd-socket-activate exec pixpool with the
    // listening socket; the connection waits in its queue for a front.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut seen = Vec::new();
    wait_for(&sock, &mut seen, "READY=1", Duration::from_secs(10));
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=2 fronts, 2 workers up")),
        "{seen:?}"
    );
    wait_for(&sock, &mut seen, "WATCHDOG=1", Duration::from_secs(5));
    assert!(log
        .lock()
        .expect("log")
        .contains("using the listening socket passed by systemd"));

    // A frozen worker stops checking in: the watchdog ping is withheld, so
    // systemd would restart the whole tree.
    let worker = children_of(child.id() as i32)
        .into_iter()
        .find(|(_, cmd)| cmd.starts_with("pixpool worker"))
        .map(|(pid, _)| pid)
        .expect("a worker");
    kill(Pid::from_raw(worker), Signal::SIGSTOP).expect("stop worker");
    std::thread::sleep(Duration::from_millis(2500));
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while Instant::now() < quiet_until {
        if let Ok(n) = sock.recv(&mut buf) {
            pings += String::from_utf8_lossy(&buf[..n])
                .lines()
                .filter(|l| *l == "WATCHDOG=1")
                .count();
        }
    }
    assert_eq!(pings, 0, "watchdog fed while a worker was frozen");
    kill(Pid::from_raw(worker), Signal::SIGCONT).expect("resume worker");
    wait_for(&sock, &mut seen, "WATCHDOG=1", Duration::from_secs(5));

    let ready_at = seen
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .expect("ready");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("term");
    wait_for(&sock, &mut seen, "STOPPING=1", Duration::from_secs(10));
    let stopping_at = seen
        .iter()
        .position(|m| m.lines().any(|l| l == "STOPPING=1"))
        .expect("stopping");
    assert!(ready_at < stopping_at, "READY before STOPPING: {seen:?}");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}\n{}", log.lock().expect("log"));
    let _ = std::fs::remove_dir_all(&dir);
}
