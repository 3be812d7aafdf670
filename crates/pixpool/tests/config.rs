//! Configuration (issue 6, part): file < environment < flags, unknown keys
//! refused, `check-config`, SIGHUP re-reading the file, JSON logs.

use std::process::Command;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use pixpool_testkit::*;

fn pixpool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixpool"))
}

fn write_config(text: &str) -> std::path::PathBuf {
    let dir = fresh_uploads();
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("pixpool.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_config_layers_file_environment_and_flags() {
    let file = write_config(
        "workers = 3\nfronts = 2\ngrace_secs = 7\napi_tokens = [\"a-long-enough-token-1\"]\n",
    );
    let out = pixpool()
        .args(["check-config"])
        .arg(&file)
        .args(["--fronts", "4"])
        .env("PIXPOOL_GRACE_SECS", "9")
        .env("PIXPOOL_WORKERS", "5")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("fronts = 4"), "flag beats file: {text}");
    assert!(
        text.contains("workers = 5"),
        "environment beats file: {text}"
    );
    assert!(text.contains("grace_secs = 9"), "{text}");
    assert!(
        text.contains("<redacted>") && !text.contains("a-long-enough-token-1"),
        "{text}"
    );

    let bad = write_config("wrokers = 3\n");
    let out = pixpool()
        .args(["check-config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrokers") || err.contains("unknown field"),
        "{err}"
    );

    let out = pixpool()
        .args(["check-config", "/nonexistent/pixpool.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file_and_refuses_a_bad_one() {
    let file = write_config("presets = [\"tiny:64x64:cover\"]\n");
    let config = file.to_string_lossy().into_owned();
    let server = Server::start(1, 1, &["--config", &config]);
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "a.jpg", &unique_jpeg(&jpeg, 1)).await;
    let id = resp.json()["id"].as_str().expect("id").to_string();
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["presets"], serde_json::json!(["tiny"]));

    // A broken file: refused, the running configuration stays.
    std::fs::write(&file, "presets = [\"tiny:0x0\"]\n").expect("write");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("new configuration refused") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = upload(server.addr, "a.jpg", &unique_jpeg(&jpeg, 2)).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);

    // A good one: rolled onto, one child at a time.
    std::fs::write(&file, "presets = [\"wide:300\"]\n").expect("write");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("rolling restart complete") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = upload(server.addr, "a.jpg", &unique_jpeg(&jpeg, 3)).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["presets"], serde_json::json!(["wide"]), "{job}");
    assert_eq!(job["outputs"][0]["width"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_naming_the_process() {
    let server = Server::start(1, 1, &["--log-format", "json"]);
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "a.jpg", &jpeg).await;
    let id = resp.json()["id"].as_str().expect("id").to_string();
    wait_final(server.addr, &id, Duration::from_secs(30)).await;
    let log = server.log_text();
    let mut roles = std::collections::BTreeSet::new();
    let mut job_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["pid"].is_u64(), "{line}");
        roles.insert(v["role"].as_str().expect("role").to_string());
        if line.contains(&id) {
            job_lines += 1;
        }
    }
    assert_eq!(
        roles.into_iter().collect::<Vec<_>>(),
        ["front", "supervisor", "worker"]
    );
    assert!(
        job_lines >= 2,
        "the job id is followed from front to worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_refuses_with_507_and_recovers_when_space_returns() {
    // The floor is raised above the free space (as if the disk had filled),
    // then lowered again (as if space had been freed), through SIGHUP.
    let file = write_config("min_free_disk_mb = 100000000\npresets = [\"thumb:200x200:cover\"]\n");
    let config = file.to_string_lossy().into_owned();
    let server = Server::start(1, 1, &["--config", &config]);
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "a.jpg", &jpeg).await;
    assert_eq!(
        resp.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{:?}",
        resp.body
    );
    let leftovers: Vec<_> = ["raw", "jobs"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(server.uploads.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .collect();
    assert!(leftovers.is_empty(), "nothing half-written: {leftovers:?}");

    std::fs::write(
        &file,
        "min_free_disk_mb = 1\npresets = [\"thumb:200x200:cover\"]\n",
    )
    .expect("write");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("rolling restart complete") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = upload(server.addr, "a.jpg", &jpeg).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
    let id = resp.json()["id"].as_str().expect("id").to_string();
    assert_eq!(
        wait_final(server.addr, &id, Duration::from_secs(30)).await["state"],
        "done"
    );
}

/// `nice` value of a process: field 19 of /proc/<pid>/stat (after the command).
fn niceness(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    after_comm
        .split_whitespace()
        .nth(16)
        .expect("nice field")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_at_the_configured_niceness_and_fronts_do_not() {
    let server = Server::start(1, 1, &[]);
    let base = niceness(std::process::id() as i32);
    let worker = server.child_pid("worker", 0).expect("worker");
    let front = server.child_pid("front", 0).expect("front");
    assert_eq!(niceness(worker), (base + 10).min(19), "default worker_nice");
    assert_eq!(
        niceness(front),
        base,
        "fronts keep the supervisor's priority"
    );
    drop(server);

    let server = Server::start(1, 1, &["--worker-nice", "3"]);
    let worker = server.child_pid("worker", 0).expect("worker");
    assert_eq!(niceness(worker), (base + 3).min(19));
    drop(server);

    let out = pixpool()
        .args(["check-config", "--worker-nice", "20"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "niceness past 19 is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker_nice"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
