//! The server's process tree, read from `/proc`: parents (`/proc/<pid>/stat`), command
//! lines (`/proc/<pid>/cmdline`), resident memory (`VmRSS` of `/proc/<pid>/status`),
//! and each process's role.

use serde::Serialize;

use crate::server::ServerKind;

/// What a process of a server's tree does. The same three roles exist in both designs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The root: pixpool's supervisor, the peer's cluster master.
    Root,
    /// HTTP processes: pixpool's fronts, the peer's cluster (web) workers.
    Http,
    /// Image processes: pixpool's workers, the peer's forked image workers.
    Image,
    /// Anything else found in the tree.
    Other,
}

impl Role {
    /// All roles, in report order.
    pub const ALL: [Role; 4] = [Role::Root, Role::Http, Role::Image, Role::Other];

    /// The role's name in `kind`'s own vocabulary.
    pub fn label(self, kind: ServerKind) -> &'static str {
        match (kind, self) {
            (ServerKind::Peer, Role::Root) => "master",
            (ServerKind::Peer, Role::Http) => "web worker",
            (ServerKind::Peer, Role::Image) => "image worker",
            (_, Role::Root) => "supervisor",
            (_, Role::Http) => "front",
            (_, Role::Image) => "worker",
            (_, Role::Other) => "other",
        }
    }
}

/// The role of a process of `kind`'s tree, from whether it is the root and its argv.
///
/// pixpool's children are exec'd as `pixpool front --slot N …` and
/// `pixpool worker --slot N …`. The peer's web workers are `node:cluster` forks, which
/// run the master's own script (`node …/src/cluster_initializer.js`); its image workers
/// are `child_process.fork()`s of `…/src/image_worker.js`.
pub fn classify(kind: ServerKind, is_root: bool, argv: &[String]) -> Role {
    if is_root {
        return Role::Root;
    }
    match kind {
        ServerKind::Peer => {
            let runs = |script: &str| argv.iter().skip(1).any(|a| a.ends_with(script));
            if runs("image_worker.js") {
                Role::Image
            } else if runs("cluster_initializer.js") {
                Role::Http
            } else {
                Role::Other
            }
        }
        _ => match argv.get(1).map(String::as_str) {
            Some("front") => Role::Http,
            Some("worker") => Role::Image,
            _ => Role::Other,
        },
    }
}

/// The kernel's unit for CPU times in `/proc` (`USER_HZ`): 100 per second on every
/// Linux architecture this runs on (it is part of the user-space ABI, independent of
/// the kernel's internal tick rate).
pub const USER_HZ: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, …
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// CPU time used so far, user + system, in [`USER_HZ`] ticks.
    pub cpu_ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so the fields are read
/// after the *last* `)`: state, ppid, … utime (14th field of the line), stime (15th).
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status` (`VmRSS:   123456 kB`).
/// Kernel threads have none.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value),
        _ => None,
    }
}

/// The machine's CPU time from the text of `/proc/stat` (its first `cpu` line, all
/// cores together), in [`USER_HZ`] ticks: `(busy, total)`, where busy is user + nice
/// + system + irq + softirq + steal and total adds idle and iowait.
pub fn parse_machine_cpu(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq, steal) =
        (at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7));
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

/// The machine's CPU time so far: `(busy, total)` ticks (see [`parse_machine_cpu`]).
pub fn machine_cpu() -> Option<(u64, u64)> {
    parse_machine_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `/proc/<pid>/stat` fields of `pid`, if it still exists.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks used so far by this process (all its threads).
pub fn own_cpu_ticks() -> Option<u64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?).map(|s| s.cpu_ticks)
}

/// The resident memory of `pid` in KiB, if it still exists.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status)
}

/// The argv of `pid` (empty if it is gone or a kernel thread).
pub fn cmdline(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `(pid, stat)` of every live (non-zombie) process.
fn all_processes() -> Vec<(i32, Stat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = stat(pid)?;
            (stat.state != 'Z').then_some((pid, stat))
        })
        .collect()
}

/// `root` and all its live descendants, root first, with their stat fields.
pub fn tree(root: i32) -> Vec<(i32, Stat)> {
    let all = all_processes();
    let mut out: Vec<(i32, Stat)> = all
        .iter()
        .filter(|(pid, _)| *pid == root)
        .copied()
        .collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].0;
        out.extend(all.iter().filter(|(_, s)| s.ppid == parent).copied());
        i += 1;
    }
    out
}

/// One process of a server's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeProc {
    /// Its pid.
    pub pid: i32,
    /// What it does.
    pub role: Role,
    /// CPU ticks used so far.
    pub cpu_ticks: u64,
}

/// The processes of `root`'s tree with their roles.
pub fn classified_tree(kind: ServerKind, root: i32) -> Vec<TreeProc> {
    tree(root)
        .into_iter()
        .map(|(pid, stat)| TreeProc {
            pid,
            role: classify(kind, pid == root, &cmdline(pid)),
            cpu_ticks: stat.cpu_ticks,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn stat_with_parentheses_in_the_name() {
        let stat = "4242 (node (web) x) S 4100 4242 4242 0 -1 4194560 1 0 0 0 250 31 0 0 20 0 11";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                state: 'S',
                ppid: 4100,
                cpu_ticks: 281
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0 1 1"), None);
    }

    #[test]
    fn machine_cpu_line() {
        let text = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(parse_machine_cpu(text), Some((160, 980)));
        assert_eq!(parse_machine_cpu("intr 1 2 3"), None);
    }

    #[test]
    fn vm_rss() {
        let status = "Name:\tpixpool\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(51234));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn roles() {
        use ServerKind::{Peer, Pixpool};
        assert_eq!(classify(Pixpool, true, &argv("pixpool serve")), Role::Root);
        assert_eq!(
            classify(Pixpool, false, &argv("pixpool front --slot 0")),
            Role::Http
        );
        assert_eq!(
            classify(Pixpool, false, &argv("pixpool worker --slot 1")),
            Role::Image
        );
        assert_eq!(
            classify(Peer, false, &argv("node /x/src/cluster_initializer.js")),
            Role::Http
        );
        assert_eq!(
            classify(Peer, false, &argv("/usr/bin/node /x/src/image_worker.js")),
            Role::Image
        );
        assert_eq!(classify(Peer, false, &argv("sh -c true")), Role::Other);
    }

    #[test]
    fn own_tree_contains_self() {
        let me = std::process::id() as i32;
        assert_eq!(tree(me).first().map(|(pid, _)| *pid), Some(me));
        assert!(own_cpu_ticks().is_some());
        assert!(machine_cpu().is_some_and(|(busy, total)| busy <= total));
        assert!(vm_rss_kib(me).is_some_and(|kib| kib > 0));
    }
}
