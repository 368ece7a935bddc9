//! [`DeadlineTimer`]: waits for an [`Instant`] to within a few microseconds, for the publishers'
//! schedule in rate mode.
//!
//! tokio's timer works in whole milliseconds: it rounds a deadline up to the next millisecond
//! tick, and its driver parks for a whole number of milliseconds. A publisher that waited for
//! each message's due time with `tokio::time::sleep_until` sent it 0–2 ms late (about 1 ms on
//! average), and since latency counts from the due time (see `publisher`), that lag of the load
//! generator's own was in every latency figure of both servers: a fifth of a `rate100` median.
//!
//! On Linux the timer is a `timerfd` (a high-resolution kernel timer) registered with the
//! runtime's reactor: the task is woken when the kernel fires it, not at the next tick, and the
//! thread stays free for other tasks meanwhile. Elsewhere it falls back to tokio's timer.

use std::io;
use std::time::Instant;

/// A one-shot timer, re-armed for each deadline. See the [module docs](self).
pub struct DeadlineTimer {
    #[cfg(target_os = "linux")]
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

#[cfg(target_os = "linux")]
impl DeadlineTimer {
    /// A timer on `CLOCK_MONOTONIC` (the clock [`Instant`] reads on Linux). Must be called
    /// within a tokio runtime with I/O enabled.
    ///
    /// # Errors
    ///
    /// `timerfd_create` failing (out of file descriptors), or the reactor refusing the fd.
    pub fn new() -> io::Result<Self> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: plain system call; the flags are valid for timerfd_create.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` is a valid, open descriptor, and the `AsyncFd` owns it (nothing
        // else can close or replace it) for as long as it lives.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }?;
        Ok(Self { fd })
    }

    /// Waits until `deadline`; returns at once if it has passed.
    ///
    /// # Errors
    ///
    /// `timerfd_settime` or the read of the expiry count failing, which does not happen with
    /// a valid timer.
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(());
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                // A wait past `time_t` (a 32-bit one: 68 years) is cut to the longest it holds.
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a valid `itimerspec`; the old value is not asked for.
        let armed =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if armed < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                let mut expirations = 0u64;
                // SAFETY: reads 8 bytes into a valid, writable u64, as a timerfd requires.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        (&raw mut expirations).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => {
                    // The expiry is read: the next wait must not find this readiness and pay
                    // a read that comes back empty.
                    guard.clear_ready();
                    return result;
                }
                // Not fired yet (a readiness left over from an earlier deadline): wait again.
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl DeadlineTimer {
    /// tokio's timer (whole milliseconds) where there is no `timerfd`.
    ///
    /// # Errors
    ///
    /// None here; the signature matches the Linux timer's.
    pub fn new() -> io::Result<Self> {
        Ok(Self {})
    }

    /// Waits until `deadline`, to tokio's timer's millisecond.
    ///
    /// # Errors
    ///
    /// None.
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        tokio::time::sleep_until(deadline.into()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::*;

    /// Never wakes before the deadline, whether it is below a millisecond away, a few
    /// milliseconds, or already passed; and a timer serves one deadline after another.
    #[tokio::test]
    async fn wakes_at_or_after_each_deadline() {
        let mut timer = DeadlineTimer::new().unwrap();
        for micros in [0, 1, 150, 900, 1_500, 4_000, 10_000] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            tokio::time::timeout(Duration::from_secs(5), timer.sleep_until(deadline))
                .await
                .expect("the timer fired")
                .unwrap();
            assert!(Instant::now() >= deadline, "woke early for {micros} µs");
        }
        let passed = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokio::time::timeout(Duration::from_secs(5), timer.sleep_until(passed))
            .await
            .expect("a passed deadline returns at once")
            .unwrap();
    }

    /// A timer that fired for an abandoned wait (its expiry never read) does not end the next
    /// wait early: re-arming it for a later deadline discards the stale expiry.
    #[tokio::test]
    async fn a_stale_expiry_does_not_end_the_next_wait() {
        let mut timer = DeadlineTimer::new().unwrap();
        {
            let abandoned = timer.sleep_until(Instant::now() + Duration::from_millis(1));
            let mut abandoned = std::pin::pin!(abandoned);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                abandoned.as_mut().poll(&mut cx).is_pending(),
                "armed, not fired yet"
            );
        }
        // It fires now and the reactor records the readiness, but nobody reads the expiry.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let later = Instant::now() + Duration::from_millis(20);
        timer.sleep_until(later).await.unwrap();
        assert!(
            Instant::now() >= later,
            "woke at the abandoned deadline's expiry"
        );
    }

    /// Other tasks on the same single-threaded runtime run while a publisher waits (the
    /// thread is not blocked): the other task has finished by the time the wait ends.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_does_not_block_the_thread() {
        let mut timer = DeadlineTimer::new().unwrap();
        let other = tokio::spawn(async {});
        timer
            .sleep_until(Instant::now() + Duration::from_millis(50))
            .await
            .unwrap();
        assert!(other.is_finished(), "the other task waited for the timer");
    }
}
