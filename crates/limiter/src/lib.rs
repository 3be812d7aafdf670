//! Per-client rate limits shared by every front of a tree, as nginx's `limit_req`
//! shares its zone: a table of clients in a shared memory file, each slot the
//! client's key and its theoretical arrival time (GCRA, the generic cell rate
//! algorithm: a token bucket kept as one timestamp), changed by compare-and-swap.
//!
//! The supervisor creates the table at start ([`Table::create`]); every front maps it
//! ([`Table::open`]). A client whose connections land on different fronts spends one
//! budget, and a front that restarts maps the same table again: nobody's budget is
//! reset by it. The table has a fixed size; beyond as many clients as it has slots
//! within one probe run, the stalest client's slot is reused (that client starts
//! afresh, as after a long pause).
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod shm;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A rate and its burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a pause.
    pub burst: u32,
}

/// Why a rate was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a rate like 5/s, 300/min or 1000/h")]
pub struct RateError(pub String);

impl Rate {
    /// `spec` (`N/s`, `N/min`, `N/h`) with `burst`, or by default twice the rate
    /// per second (at least 1).
    pub fn parse(spec: &str, burst: Option<u32>) -> Result<Rate, RateError> {
        let per_second: PerSecond = spec.parse()?;
        let burst = burst.unwrap_or_else(|| {
            let twice = (per_second.0 * 2.0).ceil();
            if twice >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                // In range by the test above; at least one.
                (twice as u32).max(1)
            }
        });
        if burst == 0 {
            return Err(RateError(format!("{spec} with a burst of 0")));
        }
        Ok(Rate {
            per_second: per_second.0,
            burst,
        })
    }

    /// The time one request "costs", in nanoseconds (the emission interval).
    fn interval_ns(&self) -> u64 {
        let ns = 1e9 / self.per_second;
        if ns >= u64::MAX as f64 {
            u64::MAX
        } else {
            ns as u64
        }
    }

    /// How far ahead of now a client's schedule may run and still be served.
    fn tolerance_ns(&self) -> u64 {
        self.interval_ns()
            .saturating_mul(u64::from(self.burst.saturating_sub(1)))
    }

    /// The seconds a full quota takes to come back (the `w` of `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        (f64::from(self.burst) / self.per_second).ceil() as u64
    }
}

/// A rate per second parsed from `N/s`, `N/min`, `N/h`.
struct PerSecond(f64);

impl FromStr for PerSecond {
    type Err = RateError;

    fn from_str(spec: &str) -> Result<PerSecond, RateError> {
        let err = || RateError(spec.to_string());
        let (n, unit) = spec.trim().split_once('/').ok_or_else(err)?;
        let n: f64 = n.trim().parse().map_err(|_| err())?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(err()),
        };
        let rate = n / seconds;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) {
            return Err(err());
        }
        Ok(PerSecond(rate))
    }
}

/// What the table said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Served (`true`) or refused.
    pub allowed: bool,
    /// Requests the client may still make at once.
    pub remaining: u32,
    /// Until the client's full quota is back.
    pub reset: Duration,
    /// For a refusal, until the next request would be served.
    pub retry_after: Duration,
}

/// Why the table could not be made or mapped.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file could not be created, opened, sized or mapped.
    #[error("rate-limit table {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a table of this layout.
    #[error("rate-limit table {0}: not a table of this version")]
    Layout(String),
}

/// Slots in a table made by [`Table::create`]: 65,536 clients in 1 MiB.
pub const DEFAULT_SLOTS: usize = 1 << 16;

/// Slots looked at for a client before the stalest of them is reused.
const PROBES: usize = 32;

/// The shared table of clients.
#[derive(Debug)]
pub struct Table {
    map: shm::Mapping,
}

impl Table {
    /// Creates (or empties) the table at `path` with `slots` slots (a power of two).
    pub fn create(path: &Path, slots: usize) -> Result<(), TableError> {
        shm::Mapping::create(path, slots)
    }

    /// Maps the table at `path`.
    pub fn open(path: &Path) -> Result<Table, TableError> {
        Ok(Table {
            map: shm::Mapping::open(path)?,
        })
    }

    /// Counts one request of `client` against `rate` at `now` (nanoseconds of the
    /// system-wide monotonic clock, [`now_ns`]).
    pub fn check(&self, client: &[u8], rate: &Rate, now: u64) -> Decision {
        let key = key_of(client);
        let tat = self.slot(key);
        let (interval, tolerance) = (rate.interval_ns(), rate.tolerance_ns());
        loop {
            let stored = tat.load(Ordering::Acquire);
            let start = stored.max(now);
            let ahead = start - now;
            if ahead > tolerance {
                return Decision {
                    allowed: false,
                    remaining: 0,
                    reset: Duration::from_nanos(ahead),
                    retry_after: Duration::from_nanos(ahead - tolerance),
                };
            }
            let next = start.saturating_add(interval);
            if tat
                .compare_exchange(stored, next, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let ahead = next - now;
            let remaining = if ahead > tolerance {
                0
            } else {
                ((tolerance - ahead) / interval.max(1)).saturating_add(1)
            };
            return Decision {
                allowed: true,
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                reset: Duration::from_nanos(ahead),
                retry_after: Duration::ZERO,
            };
        }
    }

    /// The arrival-time word of `key`'s slot: its own, a free one taken, or the stalest
    /// of the run reused.
    fn slot(&self, key: u64) -> &AtomicU64 {
        let slots = self.map.slots();
        let mask = slots - 1;
        let start = (key as usize) & mask;
        let mut stalest: Option<(usize, u64, u64)> = None;
        for probe in 0..PROBES.min(slots) {
            let i = (start + probe) & mask;
            let (k, tat) = self.map.slot(i);
            let held = k.load(Ordering::Acquire);
            if held == key {
                return tat;
            }
            if held == 0 {
                match k.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        tat.store(0, Ordering::Release);
                        return tat;
                    }
                    Err(now_held) if now_held == key => return tat,
                    Err(_) => continue,
                }
            }
            let t = tat.load(Ordering::Acquire);
            if stalest.is_none_or(|(_, _, oldest)| t < oldest) {
                stalest = Some((i, held, t));
            }
        }
        let (i, held, _) = stalest.unwrap_or((start, 0, 0));
        let (k, tat) = self.map.slot(i);
        // Whoever wins the slot starts with a full quota.
        if k.compare_exchange(held, key, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tat.store(0, Ordering::Release);
        }
        tat
    }
}

/// A client's key: 64 bits of its BLAKE3 hash, never 0 (a free slot).
fn key_of(client: &[u8]) -> u64 {
    let hash = blake3::hash(client);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process of the machine.
pub fn now_ns() -> u64 {
    shm::monotonic_ns()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, slots: usize) -> (Table, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("pixpool-limiter-{}-{name}", std::process::id()));
        Table::create(&path, slots).expect("create");
        (Table::open(&path).expect("open"), path)
    }

    #[test]
    fn rates_parse_with_a_default_burst_of_twice_the_rate_per_second() {
        assert_eq!(
            Rate::parse("5/s", None),
            Ok(Rate {
                per_second: 5.0,
                burst: 10
            })
        );
        assert_eq!(
            Rate::parse("300/min", None),
            Ok(Rate {
                per_second: 5.0,
                burst: 10
            })
        );
        assert_eq!(
            Rate::parse("12/min", None),
            Ok(Rate {
                per_second: 0.2,
                burst: 1
            })
        );
        assert_eq!(
            Rate::parse("3600/h", Some(7)),
            Ok(Rate {
                per_second: 1.0,
                burst: 7
            })
        );
        for bad in ["5", "5/day", "-1/s", "0/s", "x/s", "1e9/s"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Rate::parse("5/s", Some(0)).is_err());
        assert_eq!(Rate::parse("300/min", None).expect("rate").window_secs(), 2);
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let (t, path) = table("burst", 64);
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let at = |ms: u64| 1_000_000_000_000 + ms * 1_000_000;
        let allowed: Vec<(bool, u32)> = (0..4)
            .map(|_| t.check(b"a", &rate, at(0)))
            .map(|d| (d.allowed, d.remaining))
            .collect();
        assert_eq!(allowed, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let refused = t.check(b"a", &rate, at(0));
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        // Another client is unaffected.
        assert!(t.check(b"b", &rate, at(0)).allowed);
        // Half a second later, one more.
        assert!(t.check(b"a", &rate, at(500)).allowed);
        assert!(!t.check(b"a", &rate, at(500)).allowed);
        // After a long pause, the whole burst again.
        let later: Vec<bool> = (0..4)
            .map(|_| t.check(b"a", &rate, at(60_000)).allowed)
            .collect();
        assert_eq!(later, [true, true, true, false]);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn two_mappings_share_one_budget_and_a_new_one_keeps_it() {
        let (a, path) = table("shared", 64);
        let b = Table::open(&path).expect("second mapping");
        let rate = Rate {
            per_second: 1.0,
            burst: 2,
        };
        let now = 5_000_000_000;
        assert!(a.check(b"c", &rate, now).allowed);
        assert!(b.check(b"c", &rate, now).allowed);
        assert!(!a.check(b"c", &rate, now).allowed);
        drop(b);
        // A front restarted: it maps the table again, the budget is still spent.
        let c = Table::open(&path).expect("mapped again");
        assert!(!c.check(b"c", &rate, now).allowed);
        let _ = std::fs::remove_file(path);
    }

    /// Racing requests (threads here, fronts in a tree) never get more than the burst.
    #[test]
    fn racing_requests_get_the_burst_and_no_more() {
        let (t, path) = table("race", 64);
        let t = std::sync::Arc::new(t);
        let rate = Rate {
            per_second: 0.001,
            burst: 25,
        };
        let now = 9_000_000_000;
        let served: u32 = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .filter(|_| t.check(b"racer", &rate, now).allowed)
                        .count() as u32
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(served, 25);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_full_table_reuses_the_stalest_slot() {
        let (t, path) = table("full", 8);
        let rate = Rate {
            per_second: 1.0,
            burst: 1,
        };
        for n in 0..8u64 {
            assert!(t.check(&n.to_le_bytes(), &rate, 1_000_000_000 + n).allowed);
        }
        // A ninth client still gets served, taking the stalest client's place.
        assert!(t.check(b"ninth", &rate, 2_000_000_000).allowed);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn other_files_are_refused() {
        let path =
            std::env::temp_dir().join(format!("pixpool-limiter-{}-junk", std::process::id()));
        std::fs::write(&path, vec![1u8; 4096]).expect("write");
        assert!(matches!(Table::open(&path), Err(TableError::Layout(_))));
        let _ = std::fs::remove_file(path);
    }
}
