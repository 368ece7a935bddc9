//! [`Backoff`]: capped exponential reconnect delays with jitter.

use std::time::Duration;

use super::envelope::random_u64;

/// Doubling delays from `min` to `max`; each delay drawn between half and all of the nominal
/// one, so instances that lost Redis together do not all come back in the same millisecond.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: 0,
            rng: random_u64() | 1,
        }
    }

    /// The delay before the next attempt (and one more failure counted).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self
            .min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        // xorshift64: cheap, good enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = nominal / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(self.rng % spread)
    }

    /// Attempts that failed in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_under_the_cap_and_reset() {
        let min = Duration::from_millis(50);
        let max = Duration::from_millis(500);
        let mut backoff = Backoff::new(min, max);
        let first = backoff.next_delay();
        assert!(first >= min / 2 && first <= min, "{first:?}");
        for _ in 0..40 {
            let delay = backoff.next_delay();
            assert!(delay <= max, "{delay:?}");
        }
        let late = backoff.next_delay();
        assert!(late >= max / 2, "{late:?}");
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.next_delay() <= min);
    }
}
