//! [`Backoff`]: capped exponential reconnect delays with jitter.

use std::time::Duration;

use super::envelope::random_u64;

/// Doubling delays from `min` to `max`; each delay drawn between half and all of the nominal
/// one, so instances that lost Redis together do not all come back in the same millisecond.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// The nominal delay of the next attempt: `min`, doubled at each failure up to `max`.
    nominal: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            nominal: min.min(max),
            failures: 0,
            rng: random_u64() | 1,
        }
    }

    /// The delay before the next attempt (and one more failure counted).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal;
        self.nominal = nominal.saturating_mul(2).min(self.max);
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
        self.nominal = self.min.min(self.max);
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

    /// However far `max` is from `min`, the delays keep doubling until they reach it (they
    /// used to stop at `min` × 65 536 after 16 failures: 65 s for 1 ms to 120 s).
    #[test]
    fn delays_reach_a_distant_cap() {
        let min = Duration::from_millis(1);
        let max = Duration::from_secs(120);
        let mut backoff = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|delay| *delay <= max));
        // Nominal `max` from the 18th failure on (2^17 ms > 120 s): each at least half of it.
        assert!(
            delays[17..].iter().all(|delay| *delay >= max / 2),
            "{delays:?}"
        );
    }
}
