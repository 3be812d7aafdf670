//! The worker under attack: a job that never returns, a disk that fills up, an image
//! whose header understates what decoding it costs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::StatusCode;

use pixpool_testkit::*;

/// A job over `--job-timeout-secs` fails, and its worker leaves at once even though
/// the job's thread is still stuck (here: opening its input, which the test replaced
/// with a FIFO nobody writes to; in the wild, a decoder grinding through a hostile
/// file). The slot gets a new worker, and the failure is a 5xx, so an identical upload
/// runs again instead of getting the old failure from the dedup index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_a_job_over_its_time_limit_frees_its_worker_within_a_second() {
    let server = Server::start(1, 1, &["--job-timeout-secs", "4"]);
    let photo = std::fs::read(test_photo("04-fallenleaf.jpg")).expect("photo");
    let bytes = tagged_jpeg(&photo, "stuck-job");
    let (id, stopped) = stalled_job(&server, "stuck.jpg", &bytes, "").await;
    // The worker is stopped before it reads the job's input: make that read block.
    let rec = server.record(&id).expect("record");
    let raw = server
        .uploads
        .join(rec["source"]["path"].as_str().expect("source path"));
    std::fs::remove_file(&raw).expect("remove the spooled input");
    nix::unistd::mkfifo(&raw, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    resume_process(stopped);

    // The worker that marks it processing is the one that gets stuck.
    server
        .wait_record(&id, Duration::from_secs(60), "processing", |r| {
            r["state"] == "processing"
        })
        .await;
    let stuck = server.child_pid("worker", 0).expect("worker 0");
    let rec = server
        .wait_record(&id, Duration::from_secs(30), "failed by the timeout", |r| {
            r["state"] == "failed"
        })
        .await;
    let failed_at = Instant::now();
    assert!(
        rec["error"]["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("processing-timeout")),
        "{rec}"
    );
    let status = rec["error"]["status"].as_u64().expect("status");
    assert!(
        (500..600).contains(&status),
        "a timeout is not the image's fault alone: {rec}"
    );
    while !is_gone(stuck) {
        assert!(
            failed_at.elapsed() < Duration::from_millis(1500),
            "worker {stuck} still there {:?} after its job timed out:\n{}",
            failed_at.elapsed(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "worker {stuck} gone {:?} after its job timed out",
        failed_at.elapsed()
    );
    server
        .wait_respawn("worker", 0, stuck, Duration::from_secs(10))
        .await;

    // The tree keeps serving, and the same image is processed anew.
    let again = upload(server.addr, "stuck.jpg", &bytes).await;
    let new_id = accepted_id(&again, "identical upload after a timeout");
    assert_ne!(new_id, id);
    let job = wait_final(server.addr, &new_id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
    let other = upload(
        server.addr,
        "grey.jpg",
        &std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo"),
    )
    .await;
    let other = accepted_id(&other, "another upload");
    let job = wait_final(server.addr, &other, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
}

/// A tmpfs mounted for one test; unmounted (lazily) and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `128m`) at `dir`; `None`, saying why, where this
    /// process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "skipping: cannot mount a tmpfs at {} (needs root or CAP_SYS_ADMIN)",
                dir.display()
            );
            let _ = std::fs::remove_dir(dir);
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `path` until the file system refuses another byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    for chunk in [vec![0xA5u8; 1 << 20], vec![0xA5u8; 512]] {
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
    }
}

/// CPU time (user + system) a process has used, from /proc (100 ticks a second).
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// A full disk: outputs and even records cannot be written. The worker backs off
/// (no spinning core, a log line per retry, not thousands a second), and once a little
/// room is back (enough for a record, not for the outputs), the job is failed with a
/// problem that says why, in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_a_full_disk_fails_the_job_after_bounded_retries_without_spinning() {
    let uploads = fresh_uploads();
    let Some(_tmpfs) = Tmpfs::mount(&uploads, "128m") else {
        return;
    };
    // Declared after the mount, so dropped (killed) before it is unmounted.
    let server = Server::start_in(uploads.clone(), 1, 1, &["--min-free-disk-mb", "0"]);
    // Outputs of a 20 MP photo: far more than the room given back below.
    let (name, bytes) = slow_photo("disk-full");
    let (id, stopped) = stalled_job(&server, &name, &bytes, "").await;
    let reserve = uploads.join("reserve");
    std::fs::write(&reserve, vec![0u8; 96 << 10]).expect("reserve");
    fill(&uploads.join("filler"));
    assert!(
        std::fs::write(uploads.join("probe"), b"x").is_err(),
        "the disk is not full"
    );

    let cpu_before = cpu_time(stopped);
    resume_process(stopped);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_time(stopped).saturating_sub(cpu_before);
    let lines = server.log_lines_with(&[&id]).len();
    let log = server.log_text();
    eprintln!(
        "full disk, 3 s: worker used {cpu:?} of CPU, {lines} log lines for the job, {} in all",
        log.lines().count()
    );
    assert!(
        lines < 30,
        "{lines} log lines for job {id} in 3 s: the worker spins"
    );
    assert!(
        cpu < Duration::from_millis(1000),
        "the worker used {cpu:?} of CPU in 3 s on a full disk"
    );

    // Room for records, not for the outputs: the job ends, failed, saying why.
    std::fs::remove_file(&reserve).expect("free the reserve");
    let freed = Instant::now();
    let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
    eprintln!(
        "job failed {:?} after room came back: {job}",
        freed.elapsed()
    );
    assert_eq!(job["state"], "failed", "{job}");
    let error = &job["error"];
    assert_eq!(error["status"], 507, "{job}");
    assert!(
        error["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("storage-full") || t.ends_with("storage-error")),
        "{job}"
    );
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("No space left")),
        "{job}"
    );
    let lines = server.log_lines_with(&[&id]).len();
    assert!(lines < 80, "{lines} log lines for job {id}");
    assert!(
        server
            .log_lines_with(&[&id, "retrying after a pause"])
            .len()
            <= 12,
        "{}",
        server.log_text()
    );
}

/// A GIF whose logical screen is 1×1 and whose first frame is 16000×16000: the header
/// check at the door looks at the frame, not just the screen, and refuses it with the
/// limit it exceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_a_gif_frame_larger_than_its_screen_is_refused_at_the_door() {
    let server = Server::start(1, 1, &[]);
    let mut gif = b"GIF87a".to_vec();
    gif.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0]);
    gif.extend_from_slice(&16_000u16.to_le_bytes());
    gif.extend_from_slice(&16_000u16.to_le_bytes());
    gif.extend_from_slice(&[0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    let resp = upload(server.addr, "bomb.gif", &gif).await;
    assert_problem(&resp, StatusCode::UNPROCESSABLE_ENTITY, "frame bomb");
    let problem = resp.json();
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("limit-exceeded")),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("16000×16000") && d.contains("pixel count")),
        "{problem}"
    );
    assert!(
        dir_entries(&server.uploads.join("jobs")).is_empty(),
        "no job was made"
    );
}
