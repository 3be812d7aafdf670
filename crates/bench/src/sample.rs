//! Measurements taken while a burst runs: `/health` latency and resident memory.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::http::Conn;
use crate::procs::{self, Role, TreeProc};
use crate::server::ServerKind;

/// A probe slower than this counts as failed (and as this long).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many probes in flight; more would mean the prober measures itself.
const MAX_PROBES_IN_FLIGHT: usize = 200;

/// The resource sampler rediscovers the process tree every this many samples (a respawned
/// process is picked up within that time; reading every `/proc/*/stat` each 50 ms
/// would cost the shared CPU more than the rest of the sampling).
const RESCAN_EVERY: u64 = 10;

/// One `/health` probe.
#[derive(Debug, Clone, Copy)]
pub struct HealthSample {
    /// When the probe started (before connecting).
    pub at: Instant,
    /// Connect + request + whole response; [`PROBE_TIMEOUT`] if it timed out.
    pub latency: Duration,
    /// A `200` arrived in time.
    pub ok: bool,
}

/// Probes `GET /health` on a new connection every period, without waiting for the
/// previous probe to answer, until [`HealthProber::finish`].
///
/// The prober has a thread and an event loop of its own: on the benchmark's runtime
/// a probe would wait behind the upload tasks, and their client-side delay would be
/// counted as the server's.
#[derive(Debug)]
pub struct HealthProber {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Vec<HealthSample>>>,
}

impl HealthProber {
    /// Starts probing `addr` every `every`.
    pub fn start(addr: SocketAddr, every: Duration) -> anyhow::Result<HealthProber> {
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("could not start the /health prober's runtime")?;
        let thread = std::thread::Builder::new()
            .name("health-prober".into())
            .spawn(move || runtime.block_on(probe_loop(addr, every, stopped)))
            .context("could not start the /health prober thread")?;
        Ok(HealthProber {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops probing, waits for the probes in flight, returns every sample.
    pub async fn finish(mut self) -> anyhow::Result<Vec<HealthSample>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self
            .thread
            .take()
            .context("the prober was already finished")?;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("the /health prober could not be joined")?
            .map_err(|_| anyhow::anyhow!("the /health prober thread panicked"))
    }
}

impl Drop for HealthProber {
    fn drop(&mut self) {
        // Dropping the sender stops the loop; the thread ends on its own.
        self.stop.take();
    }
}

async fn probe_loop(
    addr: SocketAddr,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> Vec<HealthSample> {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut probes = JoinSet::new();
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = ticker.tick() => {
                if probes.len() < MAX_PROBES_IN_FLIGHT {
                    probes.spawn(probe(addr));
                }
            }
            Some(done) = probes.join_next() => {
                if let Ok(sample) = done {
                    samples.push(sample);
                }
            }
        }
    }
    while let Some(done) = probes.join_next().await {
        if let Ok(sample) = done {
            samples.push(sample);
        }
    }
    samples
}

async fn probe(addr: SocketAddr) -> HealthSample {
    let at = Instant::now();
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut conn = Conn::open(addr).await?;
        conn.get("/health").await
    })
    .await;
    let ok = matches!(&answer, Ok(Ok(resp)) if resp.status == StatusCode::OK);
    let latency = if answer.is_ok() {
        at.elapsed()
    } else {
        PROBE_TIMEOUT
    };
    HealthSample { at, latency, ok }
}

/// Peak resident memory of one role.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RolePeak {
    /// The largest single process of the role, over every sample.
    pub max_process_kib: u64,
    /// The largest sum over the role's processes within one sample.
    pub max_sum_kib: u64,
    /// The most processes of the role seen in one sample.
    pub max_processes: usize,
}

/// Peak resident memory per role over a sampling period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssPeaks {
    /// Per role present in the tree.
    pub roles: BTreeMap<Role, RolePeak>,
    /// The largest sum over the whole tree within one sample.
    pub max_tree_kib: u64,
    /// Samples taken.
    pub samples: u64,
}

impl RssPeaks {
    /// Folds in one sample: `(role, VmRSS KiB)` of each live process.
    pub fn record(&mut self, sample: &[(Role, u64)]) {
        let mut sums: BTreeMap<Role, (u64, usize)> = BTreeMap::new();
        for &(role, kib) in sample {
            let peak = self.roles.entry(role).or_default();
            peak.max_process_kib = peak.max_process_kib.max(kib);
            let sum = sums.entry(role).or_default();
            sum.0 += kib;
            sum.1 += 1;
        }
        for (role, (kib, count)) in sums {
            let peak = self.roles.entry(role).or_default();
            peak.max_sum_kib = peak.max_sum_kib.max(kib);
            peak.max_processes = peak.max_processes.max(count);
        }
        let tree: u64 = sample.iter().map(|(_, kib)| kib).sum();
        self.max_tree_kib = self.max_tree_kib.max(tree);
        self.samples += 1;
    }
}

/// CPU time used during a sampling period, from `/proc` (see [`procs::USER_HZ`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// The sampling period, s.
    pub wall_s: f64,
    /// CPUs of the machine (from `/proc/stat`'s total time over the period).
    pub cores: f64,
    /// CPU seconds used by the server's processes, per role.
    pub server_s: BTreeMap<Role, f64>,
    /// CPU seconds used by the whole server tree.
    pub server_total_s: f64,
    /// CPU seconds used by this benchmark (uploaders, long-polls, probes, sampling).
    pub bench_s: f64,
    /// CPU seconds used by everything else on the machine: other people's work on a
    /// shared machine, i.e. noise in this run's numbers.
    pub other_s: f64,
}

impl CpuUse {
    /// [`CpuUse::other_s`] as a share of the machine's capacity over the period, %.
    pub fn other_pct(&self) -> f64 {
        let capacity = self.wall_s * self.cores;
        if capacity > 0.0 {
            100.0 * self.other_s / capacity
        } else {
            0.0
        }
    }
}

/// What [`ResourceSampler`] measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// Peak resident memory per role.
    pub rss: RssPeaks,
    /// CPU time over the period.
    pub cpu: CpuUse,
}

/// Samples `VmRSS` of every process of a server's tree, and accounts the CPU time of
/// the tree, of this benchmark and of the rest of the machine, on a thread of its own
/// (plain file reads; no async runtime needed), until [`ResourceSampler::finish`].
#[derive(Debug)]
pub struct ResourceSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Resources>>,
}

impl ResourceSampler {
    /// Starts sampling the tree rooted at `root` every `every`.
    pub fn start(kind: ServerKind, root: i32, every: Duration) -> anyhow::Result<ResourceSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("resource-sampler".into())
            .spawn(move || sample_loop(kind, root, every, &flag))
            .context("could not start the resource sampler thread")?;
        Ok(ResourceSampler {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sampling and returns what was measured.
    pub fn finish(mut self) -> anyhow::Result<Resources> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .context("the resource sampler was already finished")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the resource sampler thread panicked"))
    }
}

impl Drop for ResourceSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CPU ticks of each process seen in the tree: role, first and last reading.
type CpuByPid = HashMap<i32, (Role, u64, u64)>;

fn account(cpu: &mut CpuByPid, tree: &[TreeProc]) {
    for p in tree {
        let entry = cpu
            .entry(p.pid)
            .or_insert((p.role, p.cpu_ticks, p.cpu_ticks));
        entry.2 = entry.2.max(p.cpu_ticks);
    }
}

fn sample_loop(kind: ServerKind, root: i32, every: Duration, stop: &AtomicBool) -> Resources {
    let started = Instant::now();
    let machine_start = procs::machine_cpu();
    let own_start = procs::own_cpu_ticks();
    let mut peaks = RssPeaks::default();
    let mut cpu = CpuByPid::new();
    let mut tree = Vec::new();
    let mut next = started;
    let mut tick: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if tick.is_multiple_of(RESCAN_EVERY) {
            tree = procs::classified_tree(kind, root);
            account(&mut cpu, &tree);
        }
        let sample: Vec<(Role, u64)> = tree
            .iter()
            .filter_map(|p| procs::vm_rss_kib(p.pid).map(|kib| (p.role, kib)))
            .collect();
        if !sample.is_empty() {
            peaks.record(&sample);
        }
        tick += 1;
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Fell behind (a busy machine): keep the period from now on.
            next = now;
        }
    }
    account(&mut cpu, &procs::classified_tree(kind, root));
    let wall_s = started.elapsed().as_secs_f64();
    let secs = |ticks: u64| ticks as f64 / procs::USER_HZ;
    let mut server_s: BTreeMap<Role, f64> = BTreeMap::new();
    for (role, first, last) in cpu.values() {
        *server_s.entry(*role).or_default() += secs(last - first);
    }
    let server_total_s = server_s.values().sum();
    let bench_s = match (own_start, procs::own_cpu_ticks()) {
        (Some(a), Some(b)) => secs(b.saturating_sub(a)),
        _ => 0.0,
    };
    let (machine_busy_s, cores) = match (machine_start, procs::machine_cpu()) {
        (Some((busy0, total0)), Some((busy1, total1))) if wall_s > 0.0 => (
            secs(busy1.saturating_sub(busy0)),
            secs(total1.saturating_sub(total0)) / wall_s,
        ),
        _ => (0.0, 0.0),
    };
    Resources {
        rss: peaks,
        cpu: CpuUse {
            wall_s,
            cores,
            server_s,
            server_total_s,
            bench_s,
            other_s: (machine_busy_s - server_total_s - bench_s).max(0.0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_accounted_from_first_to_last_reading() {
        let proc_ = |pid, ticks| TreeProc {
            pid,
            role: Role::Image,
            cpu_ticks: ticks,
        };
        let mut cpu = CpuByPid::new();
        account(&mut cpu, &[proc_(1, 100)]);
        account(&mut cpu, &[proc_(1, 150), proc_(2, 7)]);
        account(&mut cpu, &[proc_(1, 180), proc_(2, 9)]);
        assert_eq!(cpu[&1], (Role::Image, 100, 180));
        assert_eq!(cpu[&2], (Role::Image, 7, 9));
    }

    #[test]
    fn peaks_keep_max_process_and_max_sum() {
        let mut peaks = RssPeaks::default();
        peaks.record(&[(Role::Image, 100), (Role::Image, 300), (Role::Root, 10)]);
        peaks.record(&[(Role::Image, 350), (Role::Image, 10), (Role::Root, 5)]);
        let image = peaks.roles[&Role::Image];
        assert_eq!(image.max_process_kib, 350);
        assert_eq!(image.max_sum_kib, 400);
        assert_eq!(image.max_processes, 2);
        assert_eq!(peaks.roles[&Role::Root].max_process_kib, 10);
        assert_eq!(peaks.max_tree_kib, 410);
        assert_eq!(peaks.samples, 2);
    }
}
