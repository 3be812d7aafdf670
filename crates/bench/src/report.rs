//! The medians across repetitions, the markdown report, its `RESULT` line, and the
//! JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::corpus::Corpus;
use crate::procs::Role;
use crate::runner::{Plan, RunResult};
use crate::sample::CpuUse;
use crate::server::{Launch, ServerKind};
use crate::stats::median;
use crate::syscall_pass::{self, Accounting};
use crate::syscalls::Counts;

const KIB_PER_MIB: f64 = 1024.0;

/// Medians of one role's peak RSS over the runs where it was present.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoleSummary {
    /// Median of each run's largest single process, MiB.
    pub max_process_mib: Option<f64>,
    /// Median of each run's largest sum over the role, MiB.
    pub max_sum_mib: Option<f64>,
    /// The most processes of the role seen at once.
    pub processes: usize,
}

/// One server's medians across its runs.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// Which server.
    pub server: ServerKind,
    /// Runs.
    pub runs: usize,
    /// Jobs done over all runs.
    pub done: usize,
    /// Uploads over all runs.
    pub uploads: usize,
    /// 503s retried over all runs.
    pub retries_503: usize,
    /// Median images/s.
    pub images_per_s: Option<f64>,
    /// Median wall time, s.
    pub wall_s: Option<f64>,
    /// Median of the runs' 202 latency p50, ms.
    pub accept_p50_ms: Option<f64>,
    /// Median of the runs' 202 latency p99, ms.
    pub accept_p99_ms: Option<f64>,
    /// Median of the runs' time-to-processed p50, ms.
    pub ttp_p50_ms: Option<f64>,
    /// Median of the runs' time-to-processed p99, ms.
    pub ttp_p99_ms: Option<f64>,
    /// Median of the runs' `/health` p50, ms.
    pub health_p50_ms: Option<f64>,
    /// Median of the runs' `/health` p99, ms.
    pub health_p99_ms: Option<f64>,
    /// Median of the runs' slowest `/health`, ms.
    pub health_max_ms: Option<f64>,
    /// `/health` probes over all runs.
    pub health_probes: usize,
    /// Failed `/health` probes over all runs.
    pub health_errors: usize,
    /// Peak RSS per role.
    pub rss: BTreeMap<Role, RoleSummary>,
    /// Median of the runs' largest whole-tree RSS, MiB.
    pub tree_mib: Option<f64>,
    /// Per photo, the median time-to-processed when uploaded alone (`--per-image`), ms
    /// (`None` if it never ended done).
    pub per_image_ms: BTreeMap<String, Option<f64>>,
    /// Median CPU time of the whole server tree per job done, ms.
    pub cpu_ms_per_image: Option<f64>,
    /// Median CPU time of the image role per job done, ms.
    pub image_cpu_ms_per_image: Option<f64>,
    /// Median share of the machine used by other processes during the bursts, %.
    pub other_cpu_pct: Option<f64>,
    /// The largest such share in one burst, %.
    pub other_cpu_pct_max: Option<f64>,
}

/// `cpu_s` per job done, in ms.
fn per_job_ms(r: &RunResult, cpu_s: f64) -> Option<f64> {
    (r.done > 0).then(|| cpu_s * 1e3 / r.done as f64)
}

/// A run during which other processes used more than this share of the machine is
/// flagged as noisy.
const NOISY_OTHER_PCT: f64 = 10.0;

impl ServerSummary {
    fn of(server: ServerKind, runs: &[&RunResult]) -> ServerSummary {
        let med = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let mut rss = BTreeMap::new();
        for role in Role::ALL {
            let peaks: Vec<_> = runs.iter().filter_map(|r| r.rss.roles.get(&role)).collect();
            if peaks.is_empty() {
                continue;
            }
            let mib = |kib: u64| kib as f64 / KIB_PER_MIB;
            rss.insert(
                role,
                RoleSummary {
                    max_process_mib: median(
                        &peaks
                            .iter()
                            .map(|p| mib(p.max_process_kib))
                            .collect::<Vec<_>>(),
                    ),
                    max_sum_mib: median(
                        &peaks.iter().map(|p| mib(p.max_sum_kib)).collect::<Vec<_>>(),
                    ),
                    processes: peaks.iter().map(|p| p.max_processes).max().unwrap_or(0),
                },
            );
        }
        let mut per_image: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for record in runs.iter().flat_map(|r| &r.solo) {
            let times = per_image.entry(record.photo.clone()).or_default();
            if let (Some(ms), "done") = (record.ttp_ms, record.state.as_str()) {
                times.push(ms);
            }
        }
        ServerSummary {
            server,
            runs: runs.len(),
            done: runs.iter().map(|r| r.done).sum(),
            uploads: runs.iter().map(|r| r.uploads).sum(),
            retries_503: runs.iter().map(|r| r.retries_503).sum(),
            images_per_s: med(&|r| Some(r.images_per_s)),
            wall_s: med(&|r| Some(r.wall_s)),
            accept_p50_ms: med(&|r| r.accept_ms.p50),
            accept_p99_ms: med(&|r| r.accept_ms.p99),
            ttp_p50_ms: med(&|r| r.ttp_ms.p50),
            ttp_p99_ms: med(&|r| r.ttp_ms.p99),
            health_p50_ms: med(&|r| r.health_ms.p50),
            health_p99_ms: med(&|r| r.health_ms.p99),
            health_max_ms: med(&|r| r.health_ms.max),
            health_probes: runs.iter().map(|r| r.health_ms.n).sum(),
            health_errors: runs.iter().map(|r| r.health_errors).sum(),
            rss,
            tree_mib: med(&|r| Some(r.rss.max_tree_kib as f64 / KIB_PER_MIB)),
            per_image_ms: per_image
                .into_iter()
                .map(|(photo, times)| (photo, median(&times)))
                .collect(),
            cpu_ms_per_image: med(&|r| per_job_ms(r, r.cpu.server_total_s)),
            image_cpu_ms_per_image: med(&|r| {
                per_job_ms(r, r.cpu.server_s.get(&Role::Image).copied().unwrap_or(0.0))
            }),
            other_cpu_pct: med(&|r| Some(r.cpu.other_pct())),
            other_cpu_pct_max: runs.iter().map(|r| r.cpu.other_pct()).reduce(f64::max),
        }
    }

    /// The image role's median largest process, MiB.
    pub fn image_worker_mib(&self) -> Option<f64> {
        self.rss.get(&Role::Image).and_then(|r| r.max_process_mib)
    }
}

/// The benchmark's settings, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Image workers per server.
    pub workers: u32,
    /// HTTP processes per server.
    pub fronts: u32,
    /// Corpus rounds per run.
    pub rounds: u32,
    /// Uploads in flight.
    pub concurrency: u32,
    /// Repetitions.
    pub reps: u32,
    /// Warm-up uploads per run.
    pub warmup: u32,
    /// Sampling period, ms.
    pub sample_ms: u64,
}

/// Everything the report says.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Every run valid (every upload accepted, every job done).
    pub valid: bool,
    /// What made runs invalid, prefixed with the run.
    pub problems: Vec<String>,
    /// The settings.
    pub settings: Settings,
    /// The whole benchmark's duration, s.
    pub elapsed_s: f64,
    /// pixpool, then the peer if it ran.
    pub servers: Vec<ServerSummary>,
    /// The syscall-accounting pass (`None` with `--no-syscalls`).
    pub syscalls: Option<syscall_pass::Outcome>,
    /// The report's last line.
    pub result_line: String,
}

impl Summary {
    /// Summarises `results` and the syscall pass.
    pub fn new(
        results: &[RunResult],
        syscalls: Option<syscall_pass::Outcome>,
        plan: &Plan,
        launch: &Launch,
        reps: u32,
        elapsed: Duration,
    ) -> Summary {
        let mut servers = Vec::new();
        // The order of the columns: the compared pair's numerator first.
        for kind in [
            ServerKind::Distributed,
            ServerKind::SplitTwo,
            ServerKind::Pixpool,
            ServerKind::Peer,
            ServerKind::SplitOne,
        ] {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.server == kind).collect();
            if !runs.is_empty() {
                servers.push(ServerSummary::of(kind, &runs));
            }
        }
        let problems: Vec<String> = results
            .iter()
            .flat_map(|r| {
                r.problems
                    .iter()
                    .map(move |p| format!("rep {} {}: {p}", r.rep, r.server.name()))
            })
            .chain(
                syscalls
                    .iter()
                    .flat_map(|o| o.problems())
                    .map(|p| format!("syscall pass: {p}")),
            )
            .collect();
        let valid = problems.is_empty();
        let result_line = result_line(&servers, valid, problems.len());
        Summary {
            valid,
            problems,
            settings: Settings {
                workers: launch.workers,
                fronts: launch.fronts,
                rounds: plan.rounds,
                concurrency: plan.concurrency,
                reps,
                warmup: plan.warmup,
                sample_ms: plan.sample_every.as_millis() as u64,
            },
            elapsed_s: elapsed.as_secs_f64(),
            servers,
            syscalls,
            result_line,
        }
    }

    fn server(&self, kind: ServerKind) -> Option<&ServerSummary> {
        self.servers.iter().find(|s| s.server == kind)
    }
}

/// The two servers a run compares, numerator first: pixpool and its peer; the
/// distributed mode and the embedded one; two worker hosts and one.
pub fn comparison(kinds: &[ServerKind]) -> Option<(ServerKind, ServerKind)> {
    let has = |k| kinds.contains(&k);
    use ServerKind::*;
    [
        (Pixpool, Peer),
        (Distributed, Pixpool),
        (SplitTwo, SplitOne),
    ]
    .into_iter()
    .find(|&(a, b)| has(a) && has(b))
}

/// `RESULT pixpool_img_s=… peer_img_s=… ratio=… health_p99_ms=… worker_rss_mb=…
/// peer_worker_rss_mb=…` (`na` where unknown; `invalid=N` appended when N problems
/// were found). Against the embedded mode: `RESULT embedded_img_s=…
/// distributed_img_s=… distributed_ratio=… health_p99_ms=…`; the scaling run:
/// `RESULT one_worker_host_img_s=… two_worker_hosts_img_s=… scaling_ratio=…`.
fn result_line(servers: &[ServerSummary], valid: bool, problems: usize) -> String {
    let find = |k| servers.iter().find(|s| s.server == k);
    let ips = |k| find(k).and_then(|s| s.images_per_s);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let kinds: Vec<ServerKind> = servers.iter().map(|s| s.server).collect();
    let mut line = match comparison(&kinds) {
        Some((ServerKind::Distributed, _)) => {
            let (d, e) = (ips(ServerKind::Distributed), ips(ServerKind::Pixpool));
            format!(
                "RESULT embedded_img_s={} distributed_img_s={} distributed_ratio={} health_p99_ms={}",
                num(e, 2),
                num(d, 2),
                num(ratio(d, e), 2),
                num(find(ServerKind::Distributed).and_then(|s| s.health_p99_ms), 1),
            )
        }
        Some((ServerKind::SplitTwo, _)) => {
            let (two, one) = (ips(ServerKind::SplitTwo), ips(ServerKind::SplitOne));
            format!(
                "RESULT one_worker_host_img_s={} two_worker_hosts_img_s={} scaling_ratio={}",
                num(one, 2),
                num(two, 2),
                num(ratio(two, one), 2),
            )
        }
        _ => {
            let (pix, peer) = (find(ServerKind::Pixpool), find(ServerKind::Peer));
            let (pix_ips, peer_ips) = (ips(ServerKind::Pixpool), ips(ServerKind::Peer));
            format!(
                "RESULT pixpool_img_s={} peer_img_s={} ratio={} health_p99_ms={} worker_rss_mb={} peer_worker_rss_mb={}",
                num(pix_ips, 2),
                num(peer_ips, 2),
                num(ratio(pix_ips, peer_ips), 2),
                num(pix.and_then(|s| s.health_p99_ms), 1),
                num(pix.and_then(ServerSummary::image_worker_mib), 1),
                num(peer.and_then(ServerSummary::image_worker_mib), 1),
            )
        }
    };
    if !valid {
        let _ = write!(line, " invalid={problems}");
    }
    line
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "na".into(),
    }
}

/// One line per run, for the progress output.
pub fn progress_line(r: &RunResult) -> String {
    let mut line = format!(
        "pixpool-bench: rep {} {:<7} {}/{} done in {:.1} s = {:.2} img/s · 202 p50/p99 {}/{} ms · processed p50/p99 {}/{} ms · /health p99 {} ms · image worker RSS {} MiB · server CPU {:.1} s · others {:.0}% of the machine",
        r.rep,
        r.server.name(),
        r.done,
        r.uploads,
        r.wall_s,
        r.images_per_s,
        num(r.accept_ms.p50, 1),
        num(r.accept_ms.p99, 1),
        num(r.ttp_ms.p50, 0),
        num(r.ttp_ms.p99, 0),
        num(r.health_ms.p99, 1),
        num(
            r.rss
                .roles
                .get(&Role::Image)
                .map(|p| p.max_process_kib as f64 / KIB_PER_MIB),
            1
        ),
        r.cpu.server_total_s,
        r.cpu.other_pct(),
    );
    if !r.valid() {
        let _ = write!(line, " · PROBLEMS: {}", r.problems.join("; "));
    }
    line
}

/// `pair.0`'s images/s over `pair.1`'s, rep by rep, from `(rep, server, images/s)` of
/// the valid runs (reps with both), ascending.
fn per_rep_ratios(
    pair: (ServerKind, ServerKind),
    runs: impl IntoIterator<Item = (u32, ServerKind, f64)>,
) -> Vec<f64> {
    let mut by_rep: BTreeMap<u32, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for (rep, server, images_per_s) in runs {
        let entry = by_rep.entry(rep).or_default();
        if server == pair.0 {
            entry.0 = Some(images_per_s);
        } else if server == pair.1 {
            entry.1 = Some(images_per_s);
        }
    }
    let mut ratios: Vec<f64> = by_rep
        .values()
        .filter_map(|pair| match *pair {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// The markdown report; its last line is the `RESULT` line.
pub fn render(summary: &Summary, results: &[RunResult], corpus: &Corpus) -> String {
    let mut out = String::new();
    let s = &summary.settings;
    let kinds: Vec<ServerKind> = summary.servers.iter().map(|s| s.server).collect();
    let pair = comparison(&kinds);
    let title = match pair {
        Some((ServerKind::Pixpool, _)) => "pixpool vs peer (node-sharp)",
        Some((ServerKind::Distributed, _)) => {
            "pixpool distributed (NATS + S3 on this host) vs embedded"
        }
        Some(_) => "pixpool distributed: two worker-only hosts vs one (each one pinned CPU)",
        None => "pixpool",
    };
    let _ = writeln!(out, "\n## {title}: median of {} reps\n", s.reps);
    let _ = writeln!(
        out,
        "{} workers + {} fronts each · {} photos ({:.1} MB) × {} rounds = {} uploads per run · concurrency {} · {} warm-up uploads · output 800 px wide JPEG q80 · samples every {} ms · whole benchmark {:.0} s\n",
        s.workers,
        s.fronts,
        corpus.photos.len(),
        corpus.total_bytes() as f64 / 1e6,
        s.rounds,
        corpus.photos.len() as u64 * u64::from(s.rounds),
        s.concurrency,
        s.warmup,
        s.sample_ms,
        summary.elapsed_s,
    );

    // The main table: one column per server.
    let cols: Vec<&ServerSummary> = kinds.iter().filter_map(|k| summary.server(*k)).collect();
    let two = cols.len() == 2;
    let mut header = "| metric |".to_string();
    let mut rule = "| --- |".to_string();
    for c in &cols {
        let _ = write!(header, " {} |", c.server.name());
        rule.push_str(" ---: |");
    }
    if two {
        let _ = write!(
            header,
            " {} ÷ {} |",
            cols[0].server.name(),
            cols[1].server.name()
        );
        rule.push_str(" ---: |");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let mut row = |label: &str, cell: &dyn Fn(&ServerSummary) -> String, ratio: Option<String>| {
        let mut line = format!("| {label} |");
        for c in &cols {
            let _ = write!(line, " {} |", cell(c));
        }
        if two {
            let _ = write!(line, " {} |", ratio.unwrap_or_default());
        }
        let _ = writeln!(out, "{line}");
    };
    let ratio = |f: &dyn Fn(&ServerSummary) -> Option<f64>| {
        let (a, b) = (
            cols.first().and_then(|c| f(c)),
            cols.get(1).and_then(|c| f(c)),
        );
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(format!("{:.2}", a / b)),
            _ => None,
        }
    };
    row(
        "**images/s** (jobs done ÷ wall time)",
        &|c| format!("**{}**", num(c.images_per_s, 2)),
        ratio(&|c| c.images_per_s),
    );
    if let (true, Some(pair)) = (two, pair) {
        // Each rep runs both servers back to back: their ratio is immune to the
        // machine's drift over the benchmark, which the medians above are not.
        let ratios = per_rep_ratios(
            pair,
            results
                .iter()
                .filter(|r| r.valid())
                .map(|r| (r.rep, r.server, r.images_per_s)),
        );
        let spread = match (median(&ratios), ratios.first(), ratios.last()) {
            (Some(m), Some(lo), Some(hi)) => format!("{m:.2} ({lo:.2}–{hi:.2})"),
            _ => "–".to_owned(),
        };
        row(
            "images/s ratio within each rep: median (min–max)",
            &|_| String::new(),
            Some(spread),
        );
    }
    row("wall time (s)", &|c| num(c.wall_s, 2), None);
    row(
        "jobs done / uploads (all runs)",
        &|c| format!("{}/{}", c.done, c.uploads),
        None,
    );
    row(
        "202 latency p50 / p99 (ms)",
        &|c| format!("{} / {}", num(c.accept_p50_ms, 1), num(c.accept_p99_ms, 1)),
        None,
    );
    row(
        "time-to-processed p50 / p99 (ms)",
        &|c| format!("{} / {}", num(c.ttp_p50_ms, 0), num(c.ttp_p99_ms, 0)),
        None,
    );
    row(
        "/health under load p50 / **p99** / max (ms)",
        &|c| {
            format!(
                "{} / **{}** / {}",
                num(c.health_p50_ms, 1),
                num(c.health_p99_ms, 1),
                num(c.health_max_ms, 1)
            )
        },
        None,
    );
    row(
        "/health probes failed / sent (all runs)",
        &|c| format!("{}/{}", c.health_errors, c.health_probes),
        None,
    );
    for role in Role::ALL {
        if !cols.iter().any(|c| c.rss.contains_key(&role)) {
            continue;
        }
        let label = format!(
            "peak RSS {} (MiB): largest process (max sum of n)",
            cols.iter()
                .map(|c| role.label(c.server))
                .collect::<Vec<_>>()
                .join(" · ")
        );
        row(
            &label,
            &|c| match c.rss.get(&role) {
                None => "–".into(),
                Some(r) if r.processes <= 1 => num(r.max_process_mib, 1),
                Some(r) => format!(
                    "{} ({} of {})",
                    num(r.max_process_mib, 1),
                    num(r.max_sum_mib, 1),
                    r.processes
                ),
            },
            None,
        );
    }
    row(
        "peak RSS whole tree (MiB)",
        &|c| num(c.tree_mib, 1),
        ratio(&|c| c.tree_mib),
    );
    row(
        "server CPU time per image (ms): whole tree · image role",
        &|c| {
            format!(
                "{} · {}",
                num(c.cpu_ms_per_image, 0),
                num(c.image_cpu_ms_per_image, 0)
            )
        },
        ratio(&|c| c.cpu_ms_per_image),
    );
    row(
        "other processes' CPU during the bursts (% of machine): median · max",
        &|c| {
            format!(
                "{} · {}",
                num(c.other_cpu_pct, 0),
                num(c.other_cpu_pct_max, 0)
            )
        },
        None,
    );
    row(
        "503s retried (all runs)",
        &|c| c.retries_503.to_string(),
        None,
    );

    // Every run, to see the spread.
    let _ = writeln!(
        out,
        "\nEvery run (order within a rep alternates):\n\n| rep | # | server | images/s | wall s | 202 p99 ms | processed p50 / p99 ms | /health p99 ms | image worker RSS MiB (largest) | server CPU s | others' CPU % | valid |\n| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} / {} | {} | {} | {:.1} | {:.0} | {} |",
            r.rep,
            r.position,
            r.server.name(),
            r.images_per_s,
            r.wall_s,
            num(r.accept_ms.p99, 1),
            num(r.ttp_ms.p50, 0),
            num(r.ttp_ms.p99, 0),
            num(r.health_ms.p99, 1),
            num(
                r.rss
                    .roles
                    .get(&Role::Image)
                    .map(|p| p.max_process_kib as f64 / KIB_PER_MIB),
                1
            ),
            r.cpu.server_total_s,
            r.cpu.other_pct(),
            if r.valid() { "yes" } else { "**no**" },
        );
    }

    // Per photo, uploaded alone.
    if cols.iter().any(|c| !c.per_image_ms.is_empty()) {
        let solo_noise = results
            .iter()
            .filter_map(|r| r.solo_cpu.as_ref().map(CpuUse::other_pct))
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "\nEach photo uploaded alone after the burst (time-to-processed, median over reps, ms; other processes took at most {solo_noise:.0}% of the machine during these passes):\n"
        );
        let mut header = "| photo |".to_string();
        let mut rule = "| --- |".to_string();
        for c in &cols {
            let _ = write!(header, " {} |", c.server.name());
            rule.push_str(" ---: |");
        }
        if two {
            header.push_str(" peer ÷ pixpool |");
            rule.push_str(" ---: |");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for photo in &corpus.photos {
            let mut line = format!("| {} |", photo.name);
            let times: Vec<Option<f64>> = cols
                .iter()
                .map(|c| c.per_image_ms.get(&photo.name).copied().flatten())
                .collect();
            for t in &times {
                let _ = write!(line, " {} |", num(*t, 0));
            }
            if two {
                let r = match (times[0], times[1]) {
                    (Some(a), Some(b)) if a > 0.0 => Some(b / a),
                    _ => None,
                };
                let _ = write!(line, " {} |", num(r, 2));
            }
            let _ = writeln!(out, "{line}");
        }
    }

    if let Some(outcome) = &summary.syscalls {
        out.push_str(&render_syscalls(outcome));
    }

    let noisy = results
        .iter()
        .map(|r| r.cpu.other_pct())
        .fold(0.0, f64::max);
    if noisy > NOISY_OTHER_PCT {
        let _ = writeln!(
            out,
            "\n**Noisy machine**: other processes used up to {noisy:.0}% of its CPU during a burst; compare with care, or run again when it is quiet."
        );
    }
    if !summary.problems.is_empty() {
        let _ = writeln!(out, "\n**Invalid runs** (failures are not throughput):\n");
        for p in &summary.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    let _ = writeln!(out, "\n{}", summary.result_line);
    out
}

/// The syscall pass's section of the report: its table, or why there is none.
pub fn render_syscalls(outcome: &syscall_pass::Outcome) -> String {
    let a = match outcome {
        syscall_pass::Outcome::Measured(a) => a,
        syscall_pass::Outcome::Skipped { reason } => {
            return format!("\nSyscall accounting skipped: {reason}.\n");
        }
        syscall_pass::Outcome::Failed { error } => {
            return format!("\n**Syscall accounting failed**: {error}\n");
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### pixpool's file-system calls per job\n\n`strace -f` on pixpool alone ({} workers + {} fronts): {} uploads at concurrency {}, {} jobs done. Successful calls only. Files created: opens with `O_CREAT` and `creat`s (but for those of a file the trace had put in place and not removed: re-opened), links and symbolic links, directories. Inodes: files created, symbolic links and directories (a hard link or a re-opened file allocates none). fsyncs: `fsync`, `fdatasync`, `sync_file_range`. Per job: the jobs phase (first upload to SIGTERM) ÷ jobs done; start-up and shutdown apart; calls in pixpool's run directory (last row) in no other row.\n",
        a.workers, a.fronts, a.uploads, a.concurrency, a.jobs
    );
    let _ = writeln!(
        out,
        "| | files created (O_CREAT · link or symlink · mkdir) | inodes (re-opened files) | renames | unlinks | fsyncs (fsync · fdatasync · sync_file_range) |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    if let Some(p) = &a.per_job {
        let per = |n: u64| n as f64 / a.jobs as f64;
        let c = &a.jobs_phase;
        let _ = writeln!(
            out,
            "| **per job** | **{:.2}** ({:.2} · {:.2} · {:.2}) | **{:.2}** ({:.2}) | **{:.2}** | **{:.2}** | **{:.2}** ({:.2} · {:.2} · {:.2}) |",
            p.created,
            per(c.created_files),
            per(c.links),
            per(c.mkdirs),
            p.inodes,
            per(c.reopened),
            p.renames,
            p.unlinks,
            p.fsyncs,
            per(c.fsyncs),
            per(c.fdatasyncs),
            per(c.sync_file_ranges),
        );
    }
    for (label, counts) in [
        (format!("jobs phase ({} jobs)", a.jobs), &a.jobs_phase),
        ("start-up".to_owned(), &a.startup),
        ("shutdown".to_owned(), &a.shutdown),
        ("whole run".to_owned(), &a.total),
    ] {
        let _ = writeln!(out, "| {label} | {} |", counts_cells(counts));
    }
    let _ = writeln!(
        out,
        "| set aside: pixpool's run directory, whole run (sockets; the dashboard's summary, rewritten every second whatever the load) | {} |",
        counts_cells(&a.run_dir)
    );
    if !a.problems.is_empty() {
        let _ = writeln!(out, "\nProblems: {}", a.problems.join("; "));
    }
    out
}

/// One table row's cells for `c`, totals with their parts.
fn counts_cells(c: &Counts) -> String {
    format!(
        "{} ({} · {} · {}) | {} ({}) | {} | {} | {} ({} · {} · {})",
        c.created(),
        c.created_files,
        c.links,
        c.mkdirs,
        c.inodes(),
        c.reopened,
        c.renames,
        c.unlinks,
        c.syncs(),
        c.fsyncs,
        c.fdatasyncs,
        c.sync_file_ranges
    )
}

/// One line for the progress output.
pub fn syscalls_progress_line(outcome: &syscall_pass::Outcome) -> String {
    let a: &Accounting = match outcome {
        syscall_pass::Outcome::Measured(a) => a,
        syscall_pass::Outcome::Skipped { reason } => {
            return format!("pixpool-bench: syscall pass skipped: {reason}");
        }
        syscall_pass::Outcome::Failed { error } => {
            return format!("pixpool-bench: syscall pass failed: {error}");
        }
    };
    let mut line = match &a.per_job {
        Some(p) => format!(
            "pixpool-bench: syscalls per job ({} jobs under strace): {:.2} files created · {:.2} inodes · {:.2} renames · {:.2} unlinks · {:.2} fsyncs",
            a.jobs, p.created, p.inodes, p.renames, p.unlinks, p.fsyncs
        ),
        None => "pixpool-bench: syscall pass: no job done".to_owned(),
    };
    if !a.problems.is_empty() {
        let _ = write!(line, " · PROBLEMS: {}", a.problems.join("; "));
    }
    line
}

/// Writes the summary and every run (each upload included) as JSON.
pub fn write_json(path: &Path, summary: &Summary, results: &[RunResult]) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct File<'a> {
        summary: &'a Summary,
        runs: &'a [RunResult],
    }
    let json = serde_json::to_vec_pretty(&File {
        summary,
        runs: results,
    })
    .context("could not serialise the results")?;
    std::fs::write(path, json).with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_formats() {
        let mut pix = ServerSummary::of(ServerKind::Pixpool, &[]);
        pix.images_per_s = Some(12.0);
        pix.health_p99_ms = Some(3.26);
        let mut peer = ServerSummary::of(ServerKind::Peer, &[]);
        peer.images_per_s = Some(8.0);
        let line = result_line(&[pix.clone(), peer], true, 0);
        assert_eq!(
            line,
            "RESULT pixpool_img_s=12.00 peer_img_s=8.00 ratio=1.50 health_p99_ms=3.3 worker_rss_mb=na peer_worker_rss_mb=na"
        );
        let alone = result_line(std::slice::from_ref(&pix), false, 2);
        assert!(alone.contains("peer_img_s=na ratio=na"));
        assert!(alone.ends_with(" invalid=2"));

        let mut dist = ServerSummary::of(ServerKind::Distributed, &[]);
        dist.images_per_s = Some(10.2);
        dist.health_p99_ms = Some(4.0);
        assert_eq!(
            result_line(&[dist, pix], true, 0),
            "RESULT embedded_img_s=12.00 distributed_img_s=10.20 distributed_ratio=0.85 health_p99_ms=4.0"
        );
        let mut one = ServerSummary::of(ServerKind::SplitOne, &[]);
        one.images_per_s = Some(5.0);
        let mut two = ServerSummary::of(ServerKind::SplitTwo, &[]);
        two.images_per_s = Some(9.5);
        assert_eq!(
            result_line(&[two, one], true, 0),
            "RESULT one_worker_host_img_s=5.00 two_worker_hosts_img_s=9.50 scaling_ratio=1.90"
        );
    }

    #[test]
    fn syscall_table_divides_by_the_jobs_done() {
        let jobs_phase = Counts {
            created_files: 320,
            links: 40,
            mkdirs: 2,
            renames: 240,
            unlinks: 120,
            fsyncs: 442,
            ..Counts::default()
        };
        let startup = Counts {
            mkdirs: 8,
            fsyncs: 10,
            ..Counts::default()
        };
        let outcome = syscall_pass::Outcome::Measured(Box::new(Accounting {
            uploads: 40,
            jobs: 40,
            concurrency: 8,
            workers: 2,
            fronts: 2,
            per_job: syscall_pass::PerJob::of(&jobs_phase, 40),
            startup,
            jobs_phase,
            shutdown: Counts::default(),
            total: startup + jobs_phase,
            run_dir: Counts::default(),
            unparsed_lines: 0,
            unpaired_lines: 0,
            problems: Vec::new(),
        }));
        let table = render_syscalls(&outcome);
        assert!(table.contains(
            "| **per job** | **9.05** (8.00 · 1.00 · 0.05) | **9.05** (0.00) | **6.00** | **3.00** | **11.05** (11.05 · 0.00 · 0.00) |"
        ));
        assert!(table.contains(
            "| whole run | 370 (320 · 40 · 10) | 370 (0) | 240 | 120 | 452 (452 · 0 · 0) |"
        ));
        assert!(syscalls_progress_line(&outcome).ends_with(
            "9.05 files created · 9.05 inodes · 6.00 renames · 3.00 unlinks · 11.05 fsyncs"
        ));
        let skipped = syscall_pass::Outcome::Skipped {
            reason: "strace is not on PATH".into(),
        };
        assert_eq!(
            syscalls_progress_line(&skipped),
            "pixpool-bench: syscall pass skipped: strace is not on PATH"
        );
    }

    #[test]
    fn ratios_pair_the_runs_of_each_rep() {
        use ServerKind::{Peer, Pixpool};
        let runs = [
            (1, Pixpool, 50.0),
            (1, Peer, 25.0),
            (2, Peer, 20.0),
            (2, Pixpool, 30.0),
            // A rep whose peer run is missing (invalid) pairs nothing.
            (3, Pixpool, 90.0),
        ];
        assert_eq!(per_rep_ratios((Pixpool, Peer), runs), vec![1.5, 2.0]);
        assert!(per_rep_ratios((Pixpool, Peer), [(1, Pixpool, 10.0), (1, Peer, 0.0)]).is_empty());
    }
}
