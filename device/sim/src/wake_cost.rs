//! What one sleep and wake-up between two threads costs on the machine at hand.
//!
//! The device worker sits between the guest and the proxy: it sleeps when neither has
//! work for it and wakes one of them with most batches it hands on. The raw loop the
//! throughput bench compares it with almost never does either, so the worker's CPU per
//! frame against the raw sender's depends on this price as much as on the device's code,
//! and the price differs by machine by an order of magnitude: on a virtual machine whose
//! idle vCPUs halt without polling, each wake-up of a thread on another vCPU goes through
//! the hypervisor (README, "What a sleep and a wake-up cost on this machine"). The bench
//! prints it, across CPUs as its threads run and on one CPU, so a ratio can be read
//! against the machine that produced it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vnet_device::thread_usage::ThreadUsage;

/// Two threads passing one byte back and forth over a Unix stream socket pair, each
/// blocking in `read` until the other answers: per round trip each thread wakes the other
/// once and sleeps once.
#[derive(Clone, Copy, Debug)]
pub struct WakeCost {
    pub round_trips: u64,
    /// Wall-clock time of one round trip: two wake-ups and what each woken thread waits
    /// before it runs.
    pub wall_ns_per_round_trip: f64,
    /// CPU time of one thread per round trip (the mean of the two): one `write` that
    /// wakes the other thread, one `read` that sleeps and is woken.
    pub cpu_ns_per_side: f64,
    /// Voluntary context switches of one thread per round trip (mean of the two): about
    /// 1 when each `read` really slept, which is what the CPU figure is meant to price;
    /// 0 where the system keeps no per-thread count (macOS).
    pub sleeps_per_side: f64,
}

/// Runs round trips until `max_round_trips` or `budget` is reached, whichever is first.
/// The threads are not pinned, like the device's and the bench's threads.
pub fn measure(max_round_trips: u64, budget: Duration) -> std::io::Result<WakeCost> {
    let (mut near, mut far) = UnixStream::pair()?;
    // The far thread answers every byte until the near end closes.
    let echo = std::thread::spawn(move || -> std::io::Result<ThreadUsage> {
        let start = ThreadUsage::now();
        let mut byte = [0u8; 1];
        while far.read(&mut byte)? == 1 {
            far.write_all(&byte)?;
        }
        Ok(ThreadUsage::now().since(&start))
    });
    let start = ThreadUsage::now();
    let t = Instant::now();
    let mut round_trips = 0;
    let mut byte = [0u8; 1];
    while round_trips < max_round_trips && t.elapsed() < budget {
        near.write_all(&byte)?;
        near.read_exact(&mut byte)?;
        round_trips += 1;
    }
    let wall = t.elapsed();
    let near_usage = ThreadUsage::now().since(&start);
    drop(near);
    let far_usage = echo.join().expect("the echo thread panicked")?;
    let n = round_trips.max(1) as f64;
    Ok(WakeCost {
        round_trips,
        wall_ns_per_round_trip: wall.as_nanos() as f64 / n,
        cpu_ns_per_side: (near_usage.cpu_ns + far_usage.cpu_ns) as f64 / 2.0 / n,
        sleeps_per_side: (near_usage.voluntary_switches + far_usage.voluntary_switches) as f64
            / 2.0
            / n,
    })
}

/// The same round trips with both threads held to the CPU the caller is on: what a sleep
/// and a wake-up cost when no other CPU has to be woken. The caller's CPU affinity is put
/// back afterwards. Linux only: macOS has no way to hold a thread to a CPU.
#[cfg(target_os = "linux")]
pub fn measure_on_one_core(max_round_trips: u64, budget: Duration) -> std::io::Result<WakeCost> {
    let affinity = |set: &mut libc::cpu_set_t, get: bool| {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `set` is a valid cpu_set_t of `size` bytes; pid 0 is the calling thread.
        let rc = unsafe {
            if get {
                libc::sched_getaffinity(0, size, set)
            } else {
                libc::sched_setaffinity(0, size, set)
            }
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    affinity(&mut before, true)?;
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from the kernel, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu as usize, &mut one) };
    affinity(&mut one, false)?;
    // The echo thread is created inside and inherits the one-CPU set.
    let cost = measure(max_round_trips, budget);
    affinity(&mut before, false)?;
    cost
}

#[cfg(not(target_os = "linux"))]
pub fn measure_on_one_core(_: u64, _: Duration) -> std::io::Result<WakeCost> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no per-thread CPU affinity on this system",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_trip_costs_both_threads_cpu_and_on_linux_a_sleep() {
        let cost = measure(2000, Duration::from_secs(5)).unwrap();
        assert_eq!(cost.round_trips, 2000);
        // Two system calls per side cannot take less than a few hundred ns of CPU, nor a
        // round trip less wall time than one side's CPU.
        assert!(cost.cpu_ns_per_side > 200.0, "{cost:?}");
        assert!(
            cost.wall_ns_per_round_trip >= cost.cpu_ns_per_side,
            "{cost:?}"
        );
        if cfg!(target_os = "linux") {
            // Each read waits for an answer the other thread has not written yet, so it
            // sleeps, unless the answer came while it was still on its way into `read`:
            // rare, so well over half of the reads sleep even on a busy machine.
            assert!(
                cost.sleeps_per_side > 0.5 && cost.sleeps_per_side < 1.5,
                "{cost:?}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn one_core_holds_both_threads_and_then_lets_the_caller_go() {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let count = || {
            // SAFETY: an all-zero cpu_set_t is the empty set, filled by the call.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
            assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
            // SAFETY: reads the set filled above.
            unsafe { libc::CPU_COUNT(&set) }
        };
        let cpus = count();
        let cost = measure_on_one_core(1000, Duration::from_secs(5)).unwrap();
        assert_eq!(count(), cpus, "the caller's affinity was not put back");
        assert_eq!(cost.round_trips, 1000);
        // On one CPU the woken thread runs only when the writer sleeps or is preempted,
        // so the writer's next read finds no answer yet, unless it was preempted first.
        assert!(cost.sleeps_per_side > 0.5, "{cost:?}");
    }

    #[test]
    fn the_budget_ends_a_long_measurement() {
        let t = Instant::now();
        let cost = measure(u64::MAX, Duration::from_millis(50)).unwrap();
        assert!(
            cost.round_trips > 0 && cost.round_trips < u64::MAX,
            "{cost:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
