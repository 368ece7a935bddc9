//! [`LogThrottle`]: log a recurring event at most once per interval, with a count of the rest.
//!
//! A flood of slow consumers or garbage must not become a flood of log lines.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Lets one event through per interval and counts the ones it held back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which events are suppressed.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// One log line a second.
    pub(crate) fn per_second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    /// `Some(n)` if this event should be logged, `n` being how many were suppressed since the
    /// last one that was; `None` if it should be counted and kept quiet.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.allow(), None);
        }
        let open = LogThrottle::new(Duration::ZERO);
        assert_eq!(open.allow(), Some(0));
        assert_eq!(open.allow(), Some(0));
    }

    /// What the docs promise everywhere: "logged at most once a second".
    #[test]
    fn per_second_is_one_second() {
        assert_eq!(LogThrottle::per_second().interval_ms, 1000);
    }
}
