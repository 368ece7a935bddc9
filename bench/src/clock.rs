//! One monotonic clock for the whole load-generator process.
//!
//! Publishers and subscribers live in the same process, so a send timestamp written into a
//! payload can be compared with the receive time directly: both are nanoseconds since the same
//! [`Instant`], with no wall-clock adjustments in between.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide origin of [`now_ns`]. Call once early so that timestamps start near zero.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `instant` as nanoseconds since [`epoch`] (0 for an instant before it).
pub fn ns_at(instant: Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}
