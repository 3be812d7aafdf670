//! A claim is only as durable as the names above it: when a worker's
//! `claims/<slot>` is created, `claims/` itself must be fsynced before a claim
//! in it is acknowledged. Checked on the real system calls, by running this
//! test binary's helper under `strace` (skipped where strace is missing).

use std::path::Path;
use std::process::Command;

use pixpool_store::{JobId, Store};

/// Set for the helper run: the uploads directory to use.
const ROOT_VAR: &str = "PIXPOOL_STRACE_ROOT";

/// Not a test on its own: what the traced run does. A claim in a slot that
/// has no directory yet, and a take into another such slot.
#[test]
fn helper_claims_and_takes_into_new_slots() {
    let Some(root) = std::env::var_os(ROOT_VAR) else {
        return;
    };
    let store = Store::open(Path::new(&root), None).expect("open store");
    let id = JobId::generate();
    store
        .claim(7, &id)
        .expect("claim into a new slot directory");
    assert!(store
        .take(9, 7, 10, &id)
        .expect("take into a new slot directory"));
}

/// The line index of the first fsync of directory `dir` at or after `from`.
fn fsync_of(trace: &[&str], dir: &Path, from: usize) -> Option<usize> {
    let needle = format!("<{}>)", dir.display());
    (from..trace.len()).find(|&i| trace[i].contains("fsync(") && trace[i].contains(&needle))
}

#[test]
fn a_new_claim_directory_is_made_durable_in_claims_before_it_is_used() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipping: strace is not installed");
        return;
    }
    let root = std::env::temp_dir().join(format!("pixpool-strace-claims-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let log = root.with_extension("trace");
    let out = Command::new("strace")
        .args(["-f", "-y", "-e", "trace=mkdir,mkdirat,fsync", "-o"])
        .arg(&log)
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_claims_and_takes_into_new_slots",
            "--test-threads=1",
        ])
        .env(ROOT_VAR, &root)
        .output()
        .expect("run strace");
    assert!(
        out.status.success(),
        "traced helper failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("strace output");
    let trace: Vec<&str> = text.lines().collect();
    let claims = root.join("claims");
    for slot in [7, 9] {
        let dir = claims.join(slot.to_string());
        let made = trace
            .iter()
            .position(|l| l.contains("mkdir") && l.contains(&format!("{}\"", dir.display())))
            .unwrap_or_else(|| panic!("no mkdir of {}:\n{text}", dir.display()));
        let parent = fsync_of(&trace, &claims, made);
        assert!(
            parent.is_some(),
            "claims/ not fsynced after claims/{slot} was made:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&log);
}
