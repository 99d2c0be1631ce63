//! What the calling thread has cost so far: its CPU time and how often it left the CPU.
//!
//! The switches say why a thread that moves frames between other threads costs more per
//! frame than a loop that only sends: each time the worker sleeps for lack of work it
//! leaves the CPU (a voluntary switch), and each time it wakes a thread that then takes
//! its CPU it is preempted (an involuntary one). On a virtual machine each of those costs
//! microseconds; README, "Where the worker's CPU goes at 1514 B".

/// A thread's own counts since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadUsage {
    /// User + system time from the thread's CPU clock; 0 if the clock is unreadable.
    pub cpu_ns: u64,
    /// Times the thread gave up the CPU to wait (blocked in a system call).
    pub voluntary_switches: u64,
    /// Times the scheduler took the CPU from it (a woken thread or its time slice).
    pub involuntary_switches: u64,
}

impl ThreadUsage {
    /// The calling thread's usage. The switch counts are Linux's (`RUSAGE_THREAD`); other
    /// systems keep no per-thread count, and there they are 0.
    pub fn now() -> ThreadUsage {
        let (voluntary_switches, involuntary_switches) = switches();
        ThreadUsage {
            cpu_ns: thread_cpu_ns(),
            voluntary_switches,
            involuntary_switches,
        }
    }

    /// What the thread used between `earlier` and `self`.
    pub fn since(&self, earlier: &ThreadUsage) -> ThreadUsage {
        ThreadUsage {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(earlier.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(earlier.involuntary_switches),
        }
    }
}

/// CPU time this thread has used (user + system), from its own clock: what the device
/// costs, apart from the guest and proxy threads sharing the process. 0 if unreadable.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(target_os = "linux")]
fn switches() -> (u64, u64) {
    // SAFETY: an all-zero rusage is a valid value for the call to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage for the call to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return (0, 0);
    }
    (ru.ru_nvcsw as u64, ru.ru_nivcsw as u64)
}

/// XNU's `getrusage` has no per-thread form, and its thread info carries no switch count.
#[cfg(not(target_os = "linux"))]
fn switches() -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn cpu_time_grows_with_work_and_not_with_sleep() {
        let start = ThreadUsage::now();
        std::thread::sleep(Duration::from_millis(50));
        let slept = ThreadUsage::now().since(&start);
        assert!(slept.cpu_ns < 40_000_000, "{slept:?}");
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = ThreadUsage::now().since(&start);
        assert!(worked.cpu_ns > slept.cpu_ns + 1_000_000, "{worked:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sleeping_is_a_voluntary_switch_counted_for_this_thread_only() {
        let start = ThreadUsage::now();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let slept = ThreadUsage::now().since(&start);
        assert!(slept.voluntary_switches >= 5, "{slept:?}");
        // Another thread's sleeps are not ours.
        let before = ThreadUsage::now();
        std::thread::spawn(|| {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .join()
        .unwrap();
        let ours = ThreadUsage::now().since(&before);
        // Joining blocks once or a few times; the other thread slept 20 times.
        assert!(ours.voluntary_switches < 20, "{ours:?}");
    }

    #[test]
    fn since_never_underflows() {
        let later = ThreadUsage::now();
        let earlier = ThreadUsage {
            cpu_ns: u64::MAX,
            voluntary_switches: u64::MAX,
            involuntary_switches: u64::MAX,
        };
        assert_eq!(later.since(&earlier), ThreadUsage::default());
    }
}
