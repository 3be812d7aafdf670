//! Durable file replacement: what makes a job record survive power loss.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Replaces `path` with `bytes` so that a reader (or a restart after power loss)
/// sees either the old content or the new, never a mix: write a temp file in the
/// same directory, fsync it, rename it over `path`, fsync the directory.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_then(path, bytes, true, |tmp, path| fs::rename(tmp, path))?;
    sync_dir(parent(path)?)
}

/// [`replace_durably`] without the directory fsync: the new content is on disk before its
/// name can be, so a reader after power loss still sees the old content or the new,
/// never a torn file; but the replacement itself may be undone. For a state that a crash
/// may roll back to the previous durable one (one fsync instead of two).
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_then(path, bytes, true, |tmp, path| fs::rename(tmp, path))
}

/// [`replace_atomically`] without any fsync: readers see the whole file or none, and
/// the caller makes it durable later (a worker's variants, flushed together).
pub fn replace_unflushed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_then(path, bytes, false, |tmp, path| fs::rename(tmp, path))
}

/// Writes `bytes` to a dot-named temp file beside `path` (fsynced if `sync`), then
/// `install`s it as `path` (a rename, or one that must not replace); the temp file is
/// removed if anything fails. Dot-named and `.tmp`-suffixed, so the orphan sweep
/// knows one a crash leaves.
pub(crate) fn write_then(
    path: &Path,
    bytes: &[u8],
    sync: bool,
    install: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    // The pid keeps two processes writing the same file from sharing a temp file.
    let tmp = parent(path)?.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        install(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))
}

/// fsyncs a directory, making the renames and creations in it durable.
///
/// Concurrent callers share syncs (group commit, as databases do): a caller whose change
/// is complete when it calls waits for the first sync that *starts* after that, and
/// any number of callers share it. Under load a directory is synced about once per
/// sync's duration instead of once per change; alone, a caller syncs at once.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    group(dir).sync()
}

/// The sync group of `dir` in this process.
fn group(dir: &Path) -> Arc<DirSync> {
    static GROUPS: OnceLock<Mutex<HashMap<PathBuf, Arc<DirSync>>>> = OnceLock::new();
    let mut groups = GROUPS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    groups
        .entry(dir.to_path_buf())
        .or_insert_with(|| {
            Arc::new(DirSync {
                dir: dir.to_path_buf(),
                state: Mutex::new(SyncState::default()),
                done: Condvar::new(),
            })
        })
        .clone()
}

/// Callers of [`sync_dir`] for one directory.
#[derive(Debug)]
struct DirSync {
    dir: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

/// Syncs are numbered from 1 in the order they start.
#[derive(Debug, Default)]
struct SyncState {
    /// The last sync started.
    started: u64,
    /// The last sync finished.
    finished: u64,
    /// Whether one is running now.
    running: bool,
    /// The last sync that failed, and how.
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl DirSync {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        // Counters only, each updated whole: a panic cannot leave them half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync(&self) -> io::Result<()> {
        let mut g = self.lock();
        // A sync running now may have started before our change: the next one covers it.
        let need = g.started + 1;
        loop {
            if g.finished >= need {
                // Conservative: a failure of any sync since ours started is ours too.
                return match &g.failed {
                    Some((n, kind, msg)) if *n >= need => Err(io::Error::new(*kind, msg.clone())),
                    _ => Ok(()),
                };
            }
            if g.running {
                g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            g.running = true;
            g.started += 1;
            let n = g.started;
            drop(g);
            let result = fs::File::open(&self.dir).and_then(|d| d.sync_all());
            g = self.lock();
            g.running = false;
            g.finished = n;
            if let Err(e) = &result {
                g.failed = Some((n, e.kind(), e.to_string()));
            }
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_only_the_new_content_and_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("pixpool-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("rec.json");
        replace_durably(&path, b"one").expect("first write");
        replace_durably(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read back"), b"two");
        replace_atomically(&path, b"three").expect("third write");
        assert_eq!(fs::read(&path).expect("read back"), b"three");
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp files left: {names:?}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn concurrent_directory_syncs_are_shared_and_each_caller_is_covered() {
        let dir = std::env::temp_dir().join(format!("pixpool-group-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    fs::write(dir.join(format!("f{n}")), b"x").expect("write");
                    sync_dir(&dir)
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("sync");
        }
        let g = group(&dir);
        let state = g.lock();
        // Every caller returned after a sync that started after its change, and
        // no more syncs ran than callers (fewer, when they overlapped).
        assert!(state.finished >= 1 && state.finished <= 16, "{state:?}");
        assert!(!state.running && state.failed.is_none(), "{state:?}");
        drop(state);
        // A directory that cannot be synced fails every caller that needed it.
        fs::remove_dir_all(&dir).expect("cleanup");
        assert!(sync_dir(&dir).is_err());
    }
}
