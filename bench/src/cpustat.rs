//! The machine's CPU time by state (`/proc/stat`): how much of a run the cores were idle, and
//! how much the hypervisor took from them (steal).
//!
//! Both say how far a run's wall-clock figures can be trusted. A run with idle cores was not
//! limited by CPU; a run with steal time lost CPU that no process on the machine was charged
//! for, so its throughput and latency are worse than the CPU times in the report would
//! explain. On a shared VM steal comes and goes within minutes: when one side of a pair had
//! much more of it than the other, that pair's ratio says more about the host than about the
//! servers.

/// Machine-wide CPU time by state, in milliseconds, summed over all cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MachineCpu {
    /// Time no task wanted a core (`idle` + `iowait`).
    pub idle_ms: u64,
    /// Time the hypervisor ran something else on the VM's cores (`steal`).
    pub steal_ms: u64,
}

impl MachineCpu {
    /// Reads the counters now; `None` where `/proc/stat` is missing or unreadable (not Linux).
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse(&stat, clock_ticks_per_second()?)
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            idle_ms: self.idle_ms.saturating_sub(earlier.idle_ms),
            steal_ms: self.steal_ms.saturating_sub(earlier.steal_ms),
        }
    }
}

/// `USER_HZ`, the unit of `/proc/stat`.
fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0)
}

/// The aggregate `cpu` line: `user nice system idle iowait irq softirq steal ...`, in ticks.
fn parse(stat: &str, ticks_per_second: u64) -> Option<MachineCpu> {
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let ms = |t: u64| t * 1000 / ticks_per_second;
    Some(MachineCpu {
        idle_ms: ms(ticks.get(3)? + ticks.get(4)?),
        // Kernels before 2.6.11 have no steal column.
        steal_ms: ms(ticks.get(7).copied().unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_iowait_count_as_idle_and_steal_is_the_eighth_column() {
        let stat = "\
cpu  34086 0 16289 153065 428 0 6851 127 0 0
cpu0 17000 0 8000 76000 200 0 3400 60 0 0
intr 123
";
        let cpu = parse(stat, 100).expect("parses");
        assert_eq!(
            cpu,
            MachineCpu {
                idle_ms: (153_065 + 428) * 10,
                steal_ms: 1270,
            }
        );
    }

    #[test]
    fn a_difference_never_underflows() {
        let earlier = MachineCpu {
            idle_ms: 100,
            steal_ms: 50,
        };
        let later = MachineCpu {
            idle_ms: 400,
            steal_ms: 40,
        };
        assert_eq!(
            later.since(earlier),
            MachineCpu {
                idle_ms: 300,
                steal_ms: 0,
            }
        );
    }

    #[test]
    fn a_line_that_is_not_numbers_is_no_reading() {
        assert_eq!(parse("cpu  1 2 x 4 5\n", 100), None);
        assert_eq!(parse("intr 1 2 3\n", 100), None);
    }
}
