//! How fast a request body must arrive. Two bounds, both counted only while
//! the front is waiting for the client (never while it is busy writing the
//! spool file), so a slow disk is not blamed on the client:
//! - an idle limit: no chunk at all for [`Pace::idle`] ends the body;
//! - a minimum rate: each [`RATE_WINDOW`] of waiting must bring at least
//!   [`Pace::min_bytes_per_sec`] × the window. Without it, a client sending a
//!   byte just under the idle limit holds a connection and a spool file for
//!   days.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// The span over which the minimum rate is averaged. Long enough that a
/// mobile link's stalls and TCP slow start average out (the first window is
/// the grace period), short enough that a trickling client is cut within
/// seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The boxed error a paced body fails with (what multer takes).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pace a request body must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// No chunk for this long ends the body.
    pub idle: Duration,
    /// Bytes per second, averaged over each [`RATE_WINDOW`]; 0: no minimum.
    pub min_bytes_per_sec: u64,
}

/// Why a body was cut off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaceError {
    /// Nothing arrived for the idle limit.
    #[error("request body idle for more than {} s", .0.as_secs())]
    Idle(Duration),
    /// Too little arrived over a window.
    #[error("request body slower than {min_bytes_per_sec} bytes/s: {got} bytes in {} s", window.as_secs())]
    TooSlow {
        /// The minimum rate.
        min_bytes_per_sec: u64,
        /// Bytes received in the window that failed.
        got: u64,
        /// The window.
        window: Duration,
    },
}

/// What one window has seen so far.
#[derive(Debug, Default)]
struct Window {
    /// Time spent waiting for the client in this window.
    waited: Duration,
    /// Bytes received in this window.
    bytes: u64,
}

/// `body` (the chunks of a request body), failing with a [`PaceError`] when
/// it does not keep `pace`.
pub fn paced<S, E>(body: S, pace: Pace) -> impl Stream<Item = Result<Bytes, BoxError>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    let window = (pace.min_bytes_per_sec > 0).then_some(RATE_WINDOW);
    // What a window must bring: the rate over the window (saturating: a
    // huge setting means "as fast as possible", not an overflow).
    let due = pace.min_bytes_per_sec.saturating_mul(RATE_WINDOW.as_secs());
    let start = (body, Duration::ZERO, Window::default());
    futures_util::stream::unfold(Some(start), move |state| async move {
        let (mut body, mut idle_for, mut current) = state?;
        loop {
            // Wake up at whichever comes first: the idle limit or the window's end.
            let mut wait = pace.idle.saturating_sub(idle_for);
            if let Some(w) = window {
                wait = wait.min(w.saturating_sub(current.waited));
            }
            let started = tokio::time::Instant::now();
            let next = tokio::time::timeout(wait, body.next()).await;
            let waited = started.elapsed();
            current.waited += waited;
            idle_for += waited;
            let chunk = match next {
                Ok(Some(Ok(chunk))) => {
                    idle_for = Duration::ZERO;
                    current.bytes = current.bytes.saturating_add(chunk.len() as u64);
                    Some(chunk)
                }
                Ok(Some(Err(e))) => return Some((Err(e.into()), None)),
                Ok(None) => return None,
                Err(_) if idle_for >= pace.idle => {
                    return Some((Err(Box::new(PaceError::Idle(pace.idle)) as BoxError), None))
                }
                Err(_) => None,
            };
            if let Some(w) = window.filter(|w| current.waited >= *w) {
                if current.bytes < due {
                    let err = PaceError::TooSlow {
                        min_bytes_per_sec: pace.min_bytes_per_sec,
                        got: current.bytes,
                        window: w,
                    };
                    return Some((Err(Box::new(err) as BoxError), None));
                }
                current = Window::default();
            }
            if let Some(chunk) = chunk {
                return Some((Ok(chunk), Some((body, idle_for, current))));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body sending `chunk` bytes every `every`, `count` times.
    fn trickle(
        chunk: usize,
        every: Duration,
        count: usize,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        Box::pin(futures_util::stream::unfold(0, move |n| async move {
            if n == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![0u8; chunk])), n + 1))
        }))
    }

    /// Drains a paced body: (bytes received, its error, when it ended).
    async fn drain(
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
        pace: Pace,
    ) -> (u64, Option<PaceError>, Duration) {
        let started = tokio::time::Instant::now();
        let mut paced = Box::pin(paced(body, pace));
        let mut bytes = 0;
        while let Some(item) = paced.next().await {
            match item {
                Ok(b) => bytes += b.len() as u64,
                Err(e) => {
                    let e = e
                        .downcast_ref::<PaceError>()
                        .cloned()
                        .expect("a pace error");
                    return (bytes, Some(e), started.elapsed());
                }
            }
        }
        (bytes, None, started.elapsed())
    }

    const PACE: Pace = Pace {
        idle: Duration::from_secs(30),
        min_bytes_per_sec: 1000,
    };

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_idle_limit_is_cut_at_the_end_of_the_first_window() {
        // One byte every 29 s: never idle for 30 s, and far below 1000 B/s.
        let (bytes, err, took) = drain(trickle(1, Duration::from_secs(29), 10_000), PACE).await;
        assert!(
            matches!(err, Some(PaceError::TooSlow { got: 0, .. })),
            "{err:?}"
        );
        assert_eq!((bytes, took), (0, RATE_WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_start_does_not_buy_a_slow_finish() {
        // 100 KB at once, then 10 B/s: the second window fails on its own.
        let fast = trickle(100_000, Duration::from_millis(1), 1);
        let slow = trickle(10, Duration::from_secs(1), 1000);
        let (bytes, err, took) = drain(fast.chain(slow), PACE).await;
        assert!(matches!(err, Some(PaceError::TooSlow { .. })), "{err:?}");
        assert!(bytes >= 100_000, "{bytes}");
        assert_eq!(took, RATE_WINDOW * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_completes() {
        // 1000 B/s for a minute: exactly the minimum.
        let (bytes, err, _) = drain(trickle(100, Duration::from_millis(100), 600), PACE).await;
        assert_eq!((bytes, err), (60_000, None));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_an_idle_timeout_when_there_is_no_minimum_rate() {
        let pace = Pace {
            idle: Duration::from_secs(5),
            min_bytes_per_sec: 0,
        };
        let (bytes, err, took) = drain(trickle(1, Duration::from_secs(4), 3), pace).await;
        assert_eq!((bytes, err), (3, None), "4 s gaps are under the idle limit");
        let (_, err, took_idle) = drain(trickle(1, Duration::from_secs(6), 3), pace).await;
        assert_eq!(err, Some(PaceError::Idle(Duration::from_secs(5))));
        assert_eq!(
            (took, took_idle),
            (Duration::from_secs(12), Duration::from_secs(5))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_server_spends_elsewhere_is_not_counted() {
        // The consumer stalls 20 s after each chunk (a slow disk): measured on
        // the wall clock, 5 KB per 20 s would be too slow; the client is not
        // waited on then, so its (fast) body is not cut off.
        let mut paced = Box::pin(paced(trickle(5_000, Duration::from_millis(10), 5), PACE));
        let mut bytes = 0;
        while let Some(item) = paced.next().await {
            bytes += item.expect("not cut off").len();
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        assert_eq!(bytes, 25_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_minimum_saturates_instead_of_overflowing() {
        let pace = Pace {
            idle: Duration::from_secs(30),
            min_bytes_per_sec: u64::MAX,
        };
        let (_, err, took) = drain(trickle(1000, Duration::from_secs(1), 100), pace).await;
        assert!(matches!(err, Some(PaceError::TooSlow { .. })), "{err:?}");
        assert_eq!(took, RATE_WINDOW);
    }
}
