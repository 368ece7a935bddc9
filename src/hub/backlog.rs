//! [`Backlog`]: whether the hub is behind on what it was handed to deliver.
//!
//! A subscriber task that finds a long run of messages already waiting on its Redis connection
//! (more than [`BEHIND_BATCH`] taken without waiting) is behind: messages arrive faster than
//! the instance hands them out. For [`BEHIND_FOR`] after that, a lone message for a connection
//! with nothing written for a write interval, which would go out at once, waits first (once),
//! for `max_write_interval` or until the queue is a quarter full, so that what else arrives
//! for it meanwhile shares the write (the driver's `holds_back_for_backlog`). Under a backlog
//! each write costs the machine about as much for one message as for several, and every write
//! saved is CPU for the backlog. Several messages waiting go out at once, as always.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Messages a subscriber task takes without waiting, beyond which the hub counts as behind.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const BEHIND_BATCH: usize = 32;
/// How long one sign of a backlog keeps the hub counted as behind.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
const BEHIND_FOR: Duration = Duration::from_millis(50);

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Backlog {
    base: Instant,
    /// Nanoseconds after `base` until which the hub counts as behind (0: not yet).
    until: AtomicU64,
}

impl Default for Backlog {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
        }
    }
}

impl Backlog {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A sign of a backlog, seen at `now`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn behind_at(&self, now: Instant) {
        self.until
            .fetch_max(self.nanos(now + BEHIND_FOR), Ordering::Relaxed);
    }

    /// Whether the hub counts as behind at `now`.
    pub(crate) fn is_behind(&self, now: Instant) -> bool {
        self.nanos(now) < self.until.load(Ordering::Relaxed)
    }
}
