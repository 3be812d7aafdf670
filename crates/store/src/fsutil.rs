//! Durable file replacement: what makes a job record survive power loss.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Replaces the existing file `path` with `bytes` (fsynced, and the directory too if
/// `durable`) without allocating an inode: the bytes go into one of this process's
/// spare files in the same directory, which `RENAME_EXCHANGE` swaps with `path`, and
/// the old content's file becomes the spare for the next call. Readers see the old
/// content or the new, as with a rename (a spare is rewritten only after
/// [`SPARE_REST`], and readers go through `read_replaced`, which re-reads a file it
/// finds torn or naming another item). On ext4 without a journal, every freed
/// inode slows later file creations for minutes, and a job record is replaced twice
/// per job.
///
/// `path` missing fails with [`io::ErrorKind::NotFound`] and creates nothing (a
/// record deleted under its writer stays deleted). A file system without
/// `RENAME_EXCHANGE` gets [`replace_durably`] or [`replace_atomically`].
pub fn replace_existing(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = parent(path)?;
    // A second round if the spare vanished (an idle hour, and the orphan sweep took it).
    for _ in 0..2 {
        if EXCHANGE_UNSUPPORTED.load(Ordering::Relaxed) {
            break;
        }
        let spares = spares(dir);
        let spare = spares.take();
        let res = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&spare)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &spare,
                nix::fcntl::AT_FDCWD,
                path,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(io::Error::from)
        })();
        match res {
            Ok(()) => {
                spares.put(spare);
                return if durable { sync_dir(dir) } else { Ok(()) };
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                EXCHANGE_UNSUPPORTED.store(true, Ordering::Relaxed);
                let _ = fs::remove_file(&spare);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && spare.exists() => {
                // `path` is gone; the spare is still one.
                spares.put(spare);
                return Err(e);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                let _ = fs::remove_file(&spare);
                return Err(e);
            }
        }
    }
    if !path.exists() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    if durable {
        replace_durably(path, bytes)
    } else {
        replace_atomically(path, bytes)
    }
}

/// Removes this process's spare files ([`replace_existing`]); call when it stops
/// writing (a crash leaves them to the start-up sweep: they are dot-named `.tmp`).
pub fn remove_spares() {
    let pools = SPARES.get_or_init(Default::default);
    let pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    for pool in pools.values() {
        for (spare, _) in pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = fs::remove_file(spare);
        }
    }
}

static EXCHANGE_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

static SPARES: OnceLock<Mutex<HashMap<PathBuf, Arc<Spares>>>> = OnceLock::new();

/// How long a replaced file rests before it is rewritten as a spare: a reader that
/// opened it just before the exchange has long finished reading it by then.
const SPARE_REST: Duration = Duration::from_millis(250);

/// Spares kept per directory; one more replaced file is deleted instead.
const SPARES_MAX: usize = 256;

/// The spare files of one directory in this process, oldest first, each with the time
/// it was swapped out.
#[derive(Debug, Default)]
struct Spares {
    dir: PathBuf,
    free: Mutex<VecDeque<(PathBuf, Instant)>>,
    named: AtomicU64,
}

impl Spares {
    fn take(&self) -> PathBuf {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.front() {
            Some((_, at)) if at.elapsed() >= SPARE_REST => free.pop_front().map(|(p, _)| p),
            _ => None,
        }
        .unwrap_or_else(|| {
            let n = self.named.fetch_add(1, Ordering::Relaxed);
            self.dir
                .join(format!(".spare.{}.{n}.tmp", std::process::id()))
        })
    }

    fn put(&self, spare: PathBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < SPARES_MAX {
            free.push_back((spare, Instant::now()));
        } else {
            drop(free);
            let _ = fs::remove_file(spare);
        }
    }
}

fn spares(dir: &Path) -> Arc<Spares> {
    let pools = SPARES.get_or_init(Default::default);
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pool) = pools.get(dir) {
        return pool.clone();
    }
    pools
        .entry(dir.to_path_buf())
        .or_insert_with(|| {
            Arc::new(Spares {
                dir: dir.to_path_buf(),
                ..Spares::default()
            })
        })
        .clone()
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
    fn replace_existing_swaps_inodes_and_frees_none() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("pixpool-exchange-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("rec.json");
        let err = replace_existing(&path, b"x", true).expect_err("no file to replace");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists(), "a missing file was created");

        fs::write(&path, b"one").expect("first");
        let first = fs::metadata(&path).expect("stat").ino();
        replace_existing(&path, b"two", true).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let spares: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p != &path)
            .collect();
        for spare in &spares {
            let name = spare.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(
                name.starts_with(".spare.") && name.ends_with(".tmp"),
                "{name}"
            );
        }
        // The replaced file lives on as a spare, whole: no inode was freed.
        let old = spares
            .iter()
            .find(|s| fs::metadata(s).map(|m| m.ino()).ok() == Some(first))
            .expect("the replaced file is a spare");
        assert_eq!(fs::read(old).expect("read"), b"one");

        replace_existing(&path, b"three", false).expect("third");
        assert_eq!(fs::read(&path).expect("read"), b"three");
        remove_spares();
        let left: Vec<_> = fs::read_dir(&dir).expect("list").flatten().collect();
        assert_eq!(left.len(), 1, "spares left: {left:?}");
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
