//! Supervision under attack: a rolling restart onto something broken, a
//! second SIGHUP in the middle of one, a child that cannot run with its
//! configuration, and who may read what the server writes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use pixpool_testkit::*;

/// The supervisor's log lines, in order, that concern the roll and children's
/// starts: (message kind, role, slot).
fn roll_events(log: &str) -> Vec<(&'static str, String, u32)> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| l.starts_with("supervisor")) {
        let kind = if line.contains("rolling restart: replacing") {
            "replacing"
        } else if line.contains("started child") {
            "started"
        } else if line.contains("child ready") {
            "ready"
        } else {
            continue;
        };
        let role = line
            .split("role=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let slot = line
            .split(" slot=")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX);
        out.push((kind, role, slot));
    }
    out
}

/// Waits until `needle` appears `times` times in the log.
async fn wait_log(server: &Server, needle: &str, times: usize, timeout: Duration) {
    poll_until(
        timeout,
        || format!("{times}× {needle:?} not logged:\n{}", server.log_text()),
        || (server.log_text().matches(needle).count() >= times).then_some(()),
    )
    .await
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// This test process's umask (which the server inherits), from /proc.
fn own_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .expect("a Umask line")
}

/// Replaces the executable at `exe` (atomically, as a package manager does)
/// with a build that answers `--version` like `good` but dies at start-up.
fn break_executable(exe: &Path, good: &Path) {
    let tmp = exe.with_extension("new");
    std::fs::write(
        &tmp,
        format!(
            "#!/bin/sh\n# An upgrade that passes the reload's check and crashes at start-up.\n\
             if [ \"$1\" = --version ]; then exec '{}' --version; fi\n\
             echo 'pixpool: broken build' >&2\nexit 1\n",
            good.display()
        ),
    )
    .expect("write the broken build");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, exe).expect("install the broken build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_onto_a_build_that_crashes_at_start_up_replaces_one_slot_only() {
    // The server runs from its own copy of the executable, so the test can
    // upgrade it in place.
    let uploads = fresh_uploads();
    let bin_dir = uploads.with_extension("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    let exe = bin_dir.join("pixpool");
    std::fs::copy(pixpool_bin(), &exe).expect("copy the executable");
    let good = bin_dir.join("pixpool.good");
    std::fs::hard_link(&exe, &good).expect("keep the good build");
    let server = Server::start_bin(&exe, uploads, 1, 2, &[], &[]);
    let pid = |role, slot| server.child_pid(role, slot).expect("child running");
    let (worker0, worker1, front0) = (pid("worker", 0), pid("worker", 1), pid("front", 0));

    break_executable(&exe, &good);
    server.signal(Signal::SIGHUP);
    // The first slot's newcomer dies at start-up...
    wait_log(
        &server,
        "child died; respawning into its slot role=\"worker\" slot=0",
        1,
        Duration::from_secs(20),
    )
    .await;
    // ...and well past any settle delay, nothing else has been touched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        server.log_lines_with(&["rolling restart: replacing"]).len(),
        1,
        "more than one slot was taken down:\n{}",
        server.log_text()
    );
    assert_eq!(
        server.child_pid("worker", 1),
        Some(worker1),
        "worker 1 kept"
    );
    assert_eq!(server.child_pid("front", 0), Some(front0), "front 0 kept");
    assert_ne!(server.child_pid("worker", 0), Some(worker0));
    assert!(
        server.log_text().contains("rolling restart stopped"),
        "the stop is logged:\n{}",
        server.log_text()
    );

    // The untouched slots keep serving.
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "a.jpg", &unique_jpeg(&jpeg, 1)).await;
    let id = accepted_id(&resp, "upload after the stopped roll");
    assert_eq!(
        wait_final(server.addr, &id, Duration::from_secs(30)).await["state"],
        "done"
    );

    // The good build back: the failed slot recovers by itself.
    std::fs::rename(&good, &exe).expect("restore the good build");
    poll_until(
        Duration::from_secs(20),
        || format!("worker 0 did not come back:\n{}", server.log_text()),
        || server.child_pid("worker", 0),
    )
    .await;
    drop(server);
    let _ = std::fs::remove_dir_all(bin_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sighup_mid_roll_waits_its_turn_and_rolls_onto_the_newest_configuration() {
    let uploads = fresh_uploads();
    let etc = uploads.with_extension("etc");
    std::fs::create_dir_all(&etc).expect("config dir");
    let file = etc.join("pixpool.toml");
    std::fs::write(&file, "presets = [\"first:100\"]\n").expect("config");
    let config = file.to_string_lossy().into_owned();
    let server = Server::start_in(uploads, 1, 2, &["--config", &config]);
    let before: Vec<i32> = server.children().iter().map(|(p, _)| *p).collect();

    std::fs::write(&file, "presets = [\"second:120\"]\n").expect("config");
    server.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&file, "presets = [\"third:140\"]\n").expect("config");
    server.signal(Signal::SIGHUP);
    wait_log(
        &server,
        "rolling restart complete",
        1,
        Duration::from_secs(60),
    )
    .await;
    // A second roll follows (the checks below tell what went wrong if not).
    let deadline = Instant::now() + Duration::from_secs(20);
    while server
        .log_text()
        .matches("rolling restart complete")
        .count()
        < 2
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let log = server.log_text();
    // Each slot went down exactly once per roll, and never while another
    // slot's replacement had yet to report ready.
    let mut in_flight: Option<(String, u32, bool)> = None;
    let mut replaced = std::collections::BTreeMap::new();
    for (kind, role, slot) in roll_events(&log) {
        match kind {
            "replacing" => {
                assert!(
                    in_flight.is_none(),
                    "{role} {slot} taken down while {in_flight:?} was not ready yet:\n{log}"
                );
                *replaced.entry((role.clone(), slot)).or_insert(0) += 1;
                in_flight = Some((role, slot, false));
            }
            "started" => {
                if let Some(f) = in_flight.as_mut().filter(|f| f.0 == role && f.1 == slot) {
                    f.2 = true;
                }
            }
            _ => {
                if in_flight
                    .as_ref()
                    .is_some_and(|f| f.0 == role && f.1 == slot && f.2)
                {
                    in_flight = None;
                }
            }
        }
    }
    let expected: std::collections::BTreeMap<_, _> = [
        (("front".to_string(), 0), 2),
        (("worker".to_string(), 0), 2),
        (("worker".to_string(), 1), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(replaced, expected, "replacements per slot:\n{log}");
    let after: Vec<i32> = server.children().iter().map(|(p, _)| *p).collect();
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );

    // The second roll read the file as it was when it began.
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "a.jpg", &unique_jpeg(&jpeg, 1)).await;
    let id = accepted_id(&resp, "upload after both rolls");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["presets"], serde_json::json!(["third"]), "{job}");
    drop(server);
    let _ = std::fs::remove_dir_all(etc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_cannot_open_the_uploads_directory_stops_the_service_with_exit_1() {
    let mut server = Server::start(1, 2, &[]);
    // A directory of the layout becomes a file: no respawn can open it.
    let dedup = server.uploads.join("dedup");
    std::fs::rename(&dedup, server.uploads.join("dedup.moved")).expect("move dedup/");
    std::fs::write(&dedup, b"not a directory").expect("block dedup/");
    let started = Instant::now();
    kill9(server.child_pid("worker", 0).expect("worker 0"));

    let status = server
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "the supervisor kept running (respawn loop?):\n{}",
                server.log_text()
            )
        });
    assert_eq!(status.code(), Some(1), "{}", server.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let log = server.log_text();
    assert!(
        log.contains("could not open the uploads directory"),
        "{log}"
    );
    assert_eq!(
        log.matches("started child role=\"worker\" slot=0").count(),
        2,
        "the failed child is not respawned:\n{log}"
    );
    // Drained, not abandoned: every child exited before the supervisor.
    assert!(
        log.contains("every child has exited"),
        "not drained:\n{log}"
    );
    assert!(processes_using(&server.uploads).is_empty());
}

/// Uploads one photo and returns the paths of its original and record.
async fn one_job(server: &Server) -> (PathBuf, PathBuf) {
    let jpeg = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let resp = upload(server.addr, "a.jpg", &unique_jpeg(&jpeg, 1)).await;
    let id = accepted_id(&resp, "upload");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    let raw = dir_entries(&server.uploads.join("raw"));
    assert_eq!(raw.len(), 1, "{raw:?}");
    (
        server.uploads.join("raw").join(&raw[0]),
        server.uploads.join("jobs").join(format!("{id}.json")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uploads_tree_is_private_by_default_and_follows_the_umask_setting() {
    // Default: 0027 (or stricter when inherited so). raw/ exists beforehand
    // with a looser mode: it is tightened too.
    let uploads = fresh_uploads();
    std::fs::create_dir_all(uploads.join("raw")).expect("mkdir");
    for d in [&uploads, &uploads.join("raw")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mask = own_umask() | 0o027;
    let server = Server::start_in(uploads, 1, 1, &[]);
    let (raw, record) = one_job(&server).await;
    for dir in ["", "raw", "jobs", "processed", "claims", "dedup", "tmp"] {
        let path = server.uploads.join(dir);
        assert_eq!(
            mode(&path),
            0o777 & !mask,
            "{} is {:o}",
            path.display(),
            mode(&path)
        );
    }
    for file in [&raw, &record] {
        assert_eq!(
            mode(file),
            0o666 & !mask,
            "{} is {:o}",
            file.display(),
            mode(file)
        );
    }
    drop(server);

    // A setting, exactly (even looser than the inherited umask).
    let server = Server::start(1, 1, &["--umask", "0007"]);
    let (raw, record) = one_job(&server).await;
    assert_eq!(mode(&server.uploads), 0o770);
    assert_eq!(mode(&server.uploads.join("raw")), 0o770);
    assert_eq!(mode(&raw), 0o660, "{}", raw.display());
    assert_eq!(mode(&record), 0o660, "{}", record.display());
}
