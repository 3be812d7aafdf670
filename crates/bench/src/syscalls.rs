//! Counting a server's file-system work from an `strace -f -ttt` log: which of the
//! traced calls succeeded, what each did (a file created, renamed, unlinked or
//! flushed), and in which phase of the pass (start-up, jobs, shutdown) it was made.
//!
//! The lines this reads (`-o FILE` with `-f` prefixes each with the thread id; `-ttt`
//! adds the wall-clock time at which the call started):
//!
//! ```text
//! 4242  1733300000.123456 openat(AT_FDCWD, "/u/raw/x.jpg", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 9
//! 4242  1733300000.123500 openat(AT_FDCWD, "/u/jobs/x.json", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)
//! 4243  1733300000.123510 fsync(9 <unfinished ...>
//! 4242  1733300000.123600 renameat2(AT_FDCWD, "/u/a", AT_FDCWD, "/u/b", RENAME_NOREPLACE) = 0
//! 4243  1733300000.125000 <... fsync resumed>) = 0
//! 4243  1733300000.126000 --- SIGCHLD {si_signo=SIGCHLD, …} ---
//! 4243  1733300000.127000 +++ exited with 0 +++
//! ```
//!
//! With `-f`, a call that another thread's line interrupts is split in two, its
//! `<unfinished ...>` half and its `<... NAME resumed>` half; the halves are paired by
//! thread id (a thread makes one call at a time) and the call is dated by its first.

use std::collections::{HashMap, HashSet};
use std::ops::Add;
use std::path::Path;

use serde::Serialize;

/// The system calls traced: every way a process creates, names, renames or removes a
/// file, or flushes one to disk. strace is given them with a `?` in front, which lets
/// it skip those an architecture lacks (aarch64 has no `open`, `creat`, `rename`…).
pub const TRACED: [&str; 17] = [
    "openat",
    "open",
    "creat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "unlink",
    "unlinkat",
    "fsync",
    "fdatasync",
    "sync_file_range",
];

/// The `-e trace=` expression for [`TRACED`].
pub fn trace_expression() -> String {
    let names: Vec<String> = TRACED.iter().map(|name| format!("?{name}")).collect();
    format!("trace={}", names.join(","))
}

/// What a successful call did to the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `open`/`openat` with `O_CREAT`, or `creat`.
    CreateFile,
    /// A [`Effect::CreateFile`] of a path the trace had already put in place and not
    /// removed since: the file was there, no inode was allocated.
    Reopen,
    /// `link`, `linkat`: a new name for an existing file (no inode).
    Link,
    /// `symlink`, `symlinkat`: a new name holding a path (a new inode).
    Symlink,
    /// `mkdir`, `mkdirat`.
    Mkdir,
    /// `rename`, `renameat`, `renameat2`.
    Rename,
    /// `unlink`, `unlinkat` (with `AT_REMOVEDIR` too: a directory removed).
    Unlink,
    /// `fsync`.
    Fsync,
    /// `fdatasync`.
    Fdatasync,
    /// `sync_file_range`.
    SyncFileRange,
}

/// What call `name` with the arguments `args` (as strace prints them) does, if it
/// is one that counts: an `openat` without `O_CREAT` only opens.
pub fn effect(name: &str, args: &str) -> Option<Effect> {
    Some(match name {
        "open" | "openat" if has_flag(args, "O_CREAT") => Effect::CreateFile,
        "creat" => Effect::CreateFile,
        "link" | "linkat" => Effect::Link,
        "symlink" | "symlinkat" => Effect::Symlink,
        "mkdir" | "mkdirat" => Effect::Mkdir,
        "rename" | "renameat" | "renameat2" => Effect::Rename,
        "unlink" | "unlinkat" => Effect::Unlink,
        "fsync" => Effect::Fsync,
        "fdatasync" => Effect::Fdatasync,
        "sync_file_range" => Effect::SyncFileRange,
        _ => return None,
    })
}

/// Whether the flag `flag` is among `args`, outside their quoted strings (a file may
/// well be named `O_CREAT`).
fn has_flag(args: &str, flag: &str) -> bool {
    let mut unquoted = String::with_capacity(args.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in args.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            // Keeps the tokens on either side of a string apart.
            unquoted.push(' ');
        } else {
            unquoted.push(c);
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|token| token == flag)
}

/// Successful calls, by what they did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Opens with `O_CREAT` and `creat`s, but for [`Counts::reopened`]. strace cannot
    /// tell whether a file made before the trace already existed.
    pub created_files: u64,
    /// Opens with `O_CREAT` of a file the trace had created, renamed or linked into
    /// place and not removed since (a file rewritten in place, as a spare is).
    pub reopened: u64,
    /// `link`s, `linkat`s, `symlink`s and `symlinkat`s.
    pub links: u64,
    /// `link`s and `linkat`s: of [`Counts::links`], those that allocate no inode.
    pub hard_links: u64,
    /// `mkdir`s and `mkdirat`s.
    pub mkdirs: u64,
    /// `rename`s, `renameat`s and `renameat2`s.
    pub renames: u64,
    /// `unlink`s and `unlinkat`s.
    pub unlinks: u64,
    /// `fsync`s.
    pub fsyncs: u64,
    /// `fdatasync`s.
    pub fdatasyncs: u64,
    /// `sync_file_range`s.
    pub sync_file_ranges: u64,
}

impl Counts {
    /// New names in the file system: files created, links, directories.
    pub fn created(&self) -> u64 {
        self.created_files + self.links + self.mkdirs
    }

    /// Inodes allocated: files created, symbolic links, directories.
    pub fn inodes(&self) -> u64 {
        self.created_files + self.links - self.hard_links + self.mkdirs
    }

    /// Flushes to disk, of any kind.
    pub fn syncs(&self) -> u64 {
        self.fsyncs + self.fdatasyncs + self.sync_file_ranges
    }

    fn count(&mut self, effect: Effect) {
        let counter = match effect {
            Effect::CreateFile => &mut self.created_files,
            Effect::Reopen => &mut self.reopened,
            Effect::Link => {
                self.hard_links += 1;
                &mut self.links
            }
            Effect::Symlink => &mut self.links,
            Effect::Mkdir => &mut self.mkdirs,
            Effect::Rename => &mut self.renames,
            Effect::Unlink => &mut self.unlinks,
            Effect::Fsync => &mut self.fsyncs,
            Effect::Fdatasync => &mut self.fdatasyncs,
            Effect::SyncFileRange => &mut self.sync_file_ranges,
        };
        *counter += 1;
    }
}

impl Add for Counts {
    type Output = Counts;

    fn add(self, o: Counts) -> Counts {
        Counts {
            created_files: self.created_files + o.created_files,
            reopened: self.reopened + o.reopened,
            links: self.links + o.links,
            hard_links: self.hard_links + o.hard_links,
            mkdirs: self.mkdirs + o.mkdirs,
            renames: self.renames + o.renames,
            unlinks: self.unlinks + o.unlinks,
            fsyncs: self.fsyncs + o.fsyncs,
            fdatasyncs: self.fdatasyncs + o.fdatasyncs,
            sync_file_ranges: self.sync_file_ranges + o.sync_file_ranges,
        }
    }
}

/// A log's successful calls, split into phases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// One entry per phase: phase `i` holds the calls that started at or after
    /// boundary `i - 1` and before boundary `i` (see [`tally`]).
    pub phases: Vec<Counts>,
    /// The calls on a path in one of the directories set aside, all phases together;
    /// not in `phases`.
    pub aside: Counts,
    /// Lines not understood (or, when there are boundaries, without a time); left
    /// out of the counts. Anything but zero means strace's format is not the one
    /// this reads.
    pub unparsed: usize,
    /// `resumed` halves without their `unfinished` half; left out of the counts.
    pub unpaired: usize,
}

/// One line of the log, as far as counting needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line<'a> {
    /// The thread that made the call (`-f`); lines without one share `None`.
    tid: Option<u32>,
    /// When the call started (`-ttt`), seconds since the epoch.
    time: Option<f64>,
    event: Event<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event<'a> {
    /// A call printed whole.
    Call {
        name: &'a str,
        args: &'a str,
        result: &'a str,
    },
    /// A call's first half; its result comes on a later `Resumed` line.
    Unfinished { name: &'a str, args: &'a str },
    /// A call's second half: the rest of its arguments, its result.
    Resumed {
        name: &'a str,
        args: &'a str,
        result: &'a str,
    },
    /// Signals delivered (`--- SIG… ---`) and exits (`+++ … +++`): no call.
    Note,
    /// Anything else.
    Unknown,
}

/// Parses one line (see the module's documentation).
fn parse_line(line: &str) -> Line<'_> {
    let mut rest = line.trim();
    let mut tid = None;
    // `[pid  N] ` is how strace prefixes lines written to a terminal or a pipe.
    if let Some(after) = rest.strip_prefix("[pid") {
        if let Some((n, after)) = after.split_once(']') {
            tid = n.trim().parse().ok();
            rest = after.trim_start();
        }
    } else if let Some((first, after)) = rest.split_once(char::is_whitespace) {
        if let Ok(n) = first.parse() {
            tid = Some(n);
            rest = after.trim_start();
        }
    }
    let mut time = None;
    if let Some((first, after)) = rest.split_once(char::is_whitespace) {
        if first.contains('.') && first.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            time = first.parse().ok();
            rest = after.trim_start();
        }
    }
    Line {
        tid,
        time,
        event: parse_event(rest),
    }
}

/// The call (or note) of a line, without its prefix.
fn parse_event(body: &str) -> Event<'_> {
    if body.starts_with("---") || body.starts_with("+++") {
        return Event::Note;
    }
    if let Some(after) = body.strip_prefix("<... ") {
        let Some((name, tail)) = after.split_once(" resumed>") else {
            return Event::Unknown;
        };
        return match split_result(tail) {
            Some((args, result)) => Event::Resumed { name, args, result },
            None => Event::Unknown,
        };
    }
    let Some((name, tail)) = body.split_once('(') else {
        return Event::Unknown;
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Event::Unknown;
    }
    if let Some(args) = tail.strip_suffix("<unfinished ...>") {
        return Event::Unfinished {
            name,
            args: args.trim_end(),
        };
    }
    match split_result(tail) {
        Some((args, result)) => Event::Call { name, args, result },
        None => Event::Unknown,
    }
}

/// `ARGS) = RESULT` into its arguments and its result. strace pads short calls to
/// align their results (`fsync(3)        = 0`). The result is after the *last* `)`,
/// spaces, `= `: a quoted path may contain one, the result cannot.
fn split_result(tail: &str) -> Option<(&str, &str)> {
    tail.rmatch_indices(" = ").find_map(|(at, _)| {
        let args = tail[..at].trim_end().strip_suffix(')')?;
        Some((args, tail[at + 3..].trim()))
    })
}

/// Every quoted string of `args` (a call's paths), escapes left as strace wrote them.
fn quoted(args: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (None, false);
    for (i, c) in args.char_indices() {
        match (start, escaped, c) {
            (None, _, '"') => start = Some(i + 1),
            (None, ..) => {}
            (Some(_), true, _) => escaped = false,
            (Some(_), false, '\\') => escaped = true,
            (Some(from), false, '"') => {
                out.push(&args[from..i]);
                start = None;
            }
            (Some(_), false, _) => {}
        }
    }
    out
}

/// The first quoted string of `args` (a call's path), escapes left as strace wrote
/// them.
fn first_path(args: &str) -> Option<&str> {
    let (_, rest) = args.split_once('"')?;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// A result that says the call succeeded: a number, not `-1 ERRNO (…)` nor `?`
/// (unknown: the thread exited, or the call is to be restarted).
fn succeeded(result: &str) -> bool {
    let value = result.split_whitespace().next().unwrap_or("");
    value.starts_with("0x") || value.parse::<u64>().is_ok()
}

/// Counts the successful calls of `log` by phase: with `boundaries` `[b0, b1, …]`
/// (seconds since the epoch, ascending), phase 0 is before `b0`, phase 1 from `b0` to
/// `b1`, and so on; with none, everything is phase 0. Calls whose (first) path is in
/// one of the directories `aside` are counted apart, in [`Tally::aside`].
pub fn tally(log: &str, boundaries: &[f64], aside: &[&Path]) -> Tally {
    let mut tally = Tally {
        phases: vec![Counts::default(); boundaries.len() + 1],
        ..Tally::default()
    };
    // Paths the trace put in place and has not removed since.
    let mut present: HashSet<String> = HashSet::new();
    // Each thread's call in progress: its name, its first arguments, when it started.
    let mut unfinished: HashMap<Option<u32>, (&str, &str, Option<f64>)> = HashMap::new();
    for raw in log.lines() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = parse_line(raw);
        let (name, args, result, time) = match line.event {
            Event::Note => continue,
            Event::Unknown => {
                tally.unparsed += 1;
                continue;
            }
            Event::Unfinished { name, args } => {
                unfinished.insert(line.tid, (name, args, line.time));
                continue;
            }
            Event::Call { name, args, result } => (name, args.to_owned(), result, line.time),
            Event::Resumed { name, args, result } => match unfinished.remove(&line.tid) {
                Some((first_name, first_args, time)) if first_name == name => {
                    (name, format!("{first_args}{args}"), result, time)
                }
                _ => {
                    tally.unpaired += 1;
                    continue;
                }
            },
        };
        if !succeeded(result) {
            continue;
        }
        let Some(mut effect) = effect(name, &args) else {
            continue;
        };
        let paths = quoted(&args);
        match effect {
            Effect::CreateFile => {
                if let Some(p) = paths.first() {
                    if !present.insert((*p).to_owned()) {
                        effect = Effect::Reopen;
                    }
                }
            }
            Effect::Link | Effect::Symlink => {
                if let Some(p) = paths.last() {
                    present.insert((*p).to_owned());
                }
            }
            Effect::Rename => {
                if let [from, .., to] = paths[..] {
                    // An exchange leaves both names in place.
                    if !has_flag(&args, "RENAME_EXCHANGE") {
                        present.remove(from);
                    }
                    present.insert(to.to_owned());
                }
            }
            Effect::Unlink => {
                if let Some(p) = paths.first() {
                    present.remove(*p);
                }
            }
            _ => {}
        }
        if first_path(&args).is_some_and(|p| aside.iter().any(|dir| Path::new(p).starts_with(dir)))
        {
            tally.aside.count(effect);
            continue;
        }
        let phase = match time {
            Some(t) => boundaries.iter().filter(|b| **b <= t).count(),
            None if boundaries.is_empty() => 0,
            None => {
                tally.unparsed += 1;
                continue;
            }
        };
        tally.phases[phase].count(effect);
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_expression_lets_strace_skip_missing_calls() {
        let expr = trace_expression();
        assert!(expr.starts_with("trace=?openat,?open,?creat,"));
        assert!(expr.ends_with(",?sync_file_range"));
    }

    #[test]
    fn o_creat_counts_only_as_a_flag() {
        assert_eq!(
            effect(
                "openat",
                r#"AT_FDCWD, "/u/raw/x", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600"#
            ),
            Some(Effect::CreateFile)
        );
        assert_eq!(
            effect("openat", r#"AT_FDCWD, "/u/O_CREAT", O_RDONLY|O_CLOEXEC"#),
            None
        );
        // An escaped quote does not end the string.
        assert_eq!(effect("open", r#""/u/a\" O_CREAT \"b", O_RDONLY"#), None);
        assert_eq!(
            effect("open", r#""/u/x", O_RDWR|O_CREAT, 0644"#),
            Some(Effect::CreateFile)
        );
        assert_eq!(effect("creat", r#""/u/x", 0644"#), Some(Effect::CreateFile));
        assert_eq!(effect("read", "3, \"\"..., 4096"), None);
        // A dedup entry is a symbolic link: a created name, and an inode.
        assert_eq!(
            effect("symlinkat", r#""0193ab", AT_FDCWD, "/u/dedup/k""#),
            Some(Effect::Symlink)
        );
        assert_eq!(
            effect("linkat", r#"AT_FDCWD, "/u/a", AT_FDCWD, "/u/b", 0"#),
            Some(Effect::Link)
        );
    }

    #[test]
    fn line_prefixes() {
        let line = parse_line(r#"4242  1733300000.123456 openat(AT_FDCWD, "/u/x", O_RDONLY) = 3"#);
        assert_eq!(line.tid, Some(4242));
        assert_eq!(line.time, Some(1733300000.123456));
        assert_eq!(
            line.event,
            Event::Call {
                name: "openat",
                args: r#"AT_FDCWD, "/u/x", O_RDONLY"#,
                result: "3"
            }
        );
        let line = parse_line("[pid  77] fsync(5) = 0");
        assert_eq!((line.tid, line.time), (Some(77), None));
        let line = parse_line("fsync(5) = 0");
        assert_eq!((line.tid, line.time), (None, None));
        assert_eq!(
            line.event,
            Event::Call {
                name: "fsync",
                args: "5",
                result: "0"
            }
        );
    }

    /// The calls of one job as a pixpool worker might make them, with another
    /// thread's lines in between, failures, and the notes strace adds.
    const LOG: &str = r#"
100  1000.000001 mkdirat(AT_FDCWD, "/u/claims/0", 0755) = 0
100  1000.000002 mkdir("/u/raw", 0755) = -1 EEXIST (File exists)
101  1000.500000 openat(AT_FDCWD, "/u/tmp/0/j1.part", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 9
101  1000.500100 fsync(9 <unfinished ...>
102  1000.500200 openat(AT_FDCWD, "/u/jobs/j1.json", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)
102  1000.500300 openat(AT_FDCWD, "/u/processed/j1-medium.jpg.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666 <unfinished ...>
101  1000.500400 <... fsync resumed>) = 0
102  1000.500500 <... openat resumed>) = 10
101  1000.500600 renameat2(AT_FDCWD, "/u/tmp/0/j1.part", AT_FDCWD, "/u/raw/j1.jpg", RENAME_NOREPLACE) = 0
101  1000.500700 linkat(AT_FDCWD, "/u/dedup/.k.tmp", AT_FDCWD, "/u/dedup/k", 0) = -1 EEXIST (File exists)
101  1000.500800 linkat(AT_FDCWD, "/u/dedup/.k2.tmp", AT_FDCWD, "/u/dedup/k2", 0) = 0
102  1000.500900 fdatasync(10)   = 0
102  1000.501000 sync_file_range(10, 0, 0, SYNC_FILE_RANGE_WRITE) = 0
101  1000.501100 unlinkat(AT_FDCWD, "/u/claims/0/j1", 0) = 0
101  1000.501200 unlink("/u/tmp/0/j1.pending") = -1 ENOENT (No such file or directory)
102  1000.501300 rename("/u/jobs/.j1.tmp", "/u/jobs/j1.json") = 0
103  1000.501400 fsync(11 <unfinished ...>
102  1000.501500 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=99, si_uid=0, si_status=0, si_utime=0, si_stime=0} ---
103  1000.501600 <... fsync resumed>) = ? ERESTARTSYS (To be restarted if SA_RESTART is set)
100  2000.000000 unlinkat(AT_FDCWD, "/u/run/worker-0.sock", 0) = 0
100  2000.000001 fsync(3) = ? <unavailable>
100  2000.000002 +++ exited with 0 +++
"#;

    #[test]
    fn only_successful_calls_count_in_their_phase() {
        let tally = tally(LOG, &[1000.5, 1500.0], &[]);
        assert_eq!((tally.unparsed, tally.unpaired), (0, 0));
        let [startup, jobs, shutdown] = tally.phases[..] else {
            panic!("three phases expected, got {:?}", tally.phases);
        };
        assert_eq!(
            startup,
            Counts {
                mkdirs: 1,
                ..Counts::default()
            }
        );
        assert_eq!(
            jobs,
            Counts {
                // The spool file, and the output (its open was unfinished).
                created_files: 2,
                reopened: 0,
                links: 1,
                hard_links: 1,
                mkdirs: 0,
                renames: 2,
                unlinks: 1,
                // The interrupted fsync does not count.
                fsyncs: 1,
                fdatasyncs: 1,
                sync_file_ranges: 1,
            }
        );
        assert_eq!((jobs.created(), jobs.syncs()), (3, 3));
        assert_eq!(
            shutdown,
            Counts {
                unlinks: 1,
                ..Counts::default()
            }
        );
        // Without boundaries, one phase holds it all.
        let whole = super::tally(LOG, &[], &[]);
        assert_eq!(whole.phases, vec![startup + jobs + shutdown]);
    }

    #[test]
    fn files_rewritten_in_place_and_hard_links_allocate_no_inode() {
        // A record swapped with a spare twice, the spare rewritten the second time; a
        // marker linked to the upload, renamed into a claim and unlinked; a file
        // unlinked and created again is new again.
        let log = r#"9 1.0 openat(AT_FDCWD, "/u/jobs/.a.json.1.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3
9 1.1 renameat2(AT_FDCWD, "/u/jobs/.a.json.1.tmp", AT_FDCWD, "/u/jobs/a.json", RENAME_NOREPLACE) = 0
9 1.2 openat(AT_FDCWD, "/u/jobs/.spare.1.0.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 4
9 1.3 renameat2(AT_FDCWD, "/u/jobs/.spare.1.0.tmp", AT_FDCWD, "/u/jobs/a.json", RENAME_EXCHANGE) = 0
9 1.4 openat(AT_FDCWD, "/u/jobs/.spare.1.0.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 4
9 1.5 renameat2(AT_FDCWD, "/u/jobs/.spare.1.0.tmp", AT_FDCWD, "/u/jobs/a.json", RENAME_EXCHANGE) = 0
9 1.6 openat(AT_FDCWD, "/u/tmp/0/a.part", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 5
9 1.7 linkat(AT_FDCWD, "/u/tmp/0/a.part", AT_FDCWD, "/u/tmp/0/a.pending", 0) = 0
9 1.8 symlink("a", "/u/dedup/k") = 0
9 1.9 rename("/u/tmp/0/a.pending", "/u/claims/0/a") = 0
9 2.0 unlink("/u/claims/0/a") = 0
9 2.1 unlink("/u/jobs/.spare.1.0.tmp") = 0
9 2.2 openat(AT_FDCWD, "/u/jobs/.spare.1.0.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 4
"#;
        let c = tally(log, &[], &[]).phases[0];
        assert_eq!(
            (c.created_files, c.reopened, c.links, c.hard_links),
            (4, 1, 2, 1)
        );
        // The record's temp file, the first spare, the upload, the dedup link, the
        // spare made again.
        assert_eq!(c.inodes(), 5);
        assert_eq!(c.created(), 6);
    }

    #[test]
    fn calls_in_a_directory_set_aside_are_counted_apart() {
        let log = r#"9 5.0 openat(AT_FDCWD, "/u/run/stats.json.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 13
9 5.1 rename("/u/run/stats.json.tmp", "/u/run/stats.json") = 0
9 5.2 rename("/u/running/x", "/u/running/y") = 0
9 5.3 fsync(13)        = 0
"#;
        let tally = tally(log, &[], &[Path::new("/u/run")]);
        assert_eq!(
            tally.aside,
            Counts {
                created_files: 1,
                renames: 1,
                ..Counts::default()
            }
        );
        // A sibling whose name merely starts the same is not inside; a call without
        // a path is not either.
        assert_eq!(
            tally.phases,
            vec![Counts {
                renames: 1,
                fsyncs: 1,
                ..Counts::default()
            }]
        );
    }

    #[test]
    fn padded_results_and_quoted_paths() {
        assert_eq!(split_result("3)        = 0"), Some(("3", "0")));
        assert_eq!(
            split_result(r#""/a) = 1") = -1 ENOENT (No such file or directory)"#),
            Some((r#""/a) = 1""#, "-1 ENOENT (No such file or directory)"))
        );
        assert_eq!(split_result("3 <unfinished ...>"), None);
        assert_eq!(first_path(r#"AT_FDCWD, "/u/a\"b", 0"#), Some(r#"/u/a\"b"#));
        assert_eq!(first_path(r#""/u/a\\", 0"#), Some(r#"/u/a\\"#));
        assert_eq!(first_path("13"), None);
    }

    #[test]
    fn a_resumed_half_is_paired_by_thread() {
        // Thread 2's open starts with O_CREAT, thread 1's without; their results
        // arrive crossed.
        let log = r#"1 10.0 openat(AT_FDCWD, "/a", O_RDONLY <unfinished ...>
2 10.1 openat(AT_FDCWD, "/b", O_WRONLY|O_CREAT, 0600 <unfinished ...>
1 10.2 <... openat resumed>) = 3
2 10.3 <... openat resumed>) = -1 EACCES (Permission denied)
3 10.4 <... fsync resumed>) = 0
"#;
        let tally = tally(log, &[], &[]);
        assert_eq!(tally.phases, vec![Counts::default()]);
        assert_eq!((tally.unparsed, tally.unpaired), (0, 1));
        let log = "2 10.1 openat(AT_FDCWD, \"/b\", O_WRONLY|O_CREAT, 0600 <unfinished ...>\n\
                   2 10.3 <... openat resumed>) = 4\n";
        assert_eq!(super::tally(log, &[], &[]).phases[0].created_files, 1);
    }

    #[test]
    fn a_resumed_call_is_dated_by_its_start() {
        let log = "7 99.9 fsync(3 <unfinished ...>\n7 100.1 <... fsync resumed>) = 0\n";
        let tally = tally(log, &[100.0], &[]);
        assert_eq!(tally.phases[0].fsyncs, 1);
        assert_eq!(tally.phases[1].fsyncs, 0);
    }

    #[test]
    fn strange_lines_are_counted_not_guessed() {
        let log = "strace: Process 5 attached\n5 1.0 fsync(3) = 0\n5 fsync(3) = 0\n";
        let tally = tally(log, &[0.5], &[]);
        // The banner, and the line without a time once phases need one.
        assert_eq!(tally.unparsed, 2);
        assert_eq!(tally.phases[1].fsyncs, 1);
    }

    #[test]
    fn a_quoted_result_lookalike_is_not_the_result() {
        let log = r#"5 1.0 renameat(AT_FDCWD, "/u/a) = 0", AT_FDCWD, "/u/b") = -1 ENOENT (No such file or directory)"#;
        assert_eq!(tally(log, &[], &[]).phases[0].renames, 0);
    }
}
