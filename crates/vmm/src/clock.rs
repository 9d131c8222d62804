//! The guest's clock under TCG. QEMU's emulated TSC ticks with the host's, but a guest kernel
//! cannot calibrate it (the microvm machine has no PIT, HPET or PM timer to measure against), so
//! it marks the TSC unstable and keeps time in jiffies: then the periodic tick never stops and
//! every idle guest takes 250 emulated timer interrupts a second per vCPU. Telling the kernel the
//! TSC's frequency (`tsc_early_khz=`) and that it is reliable gives it the `tsc` clocksource, so
//! idle vCPUs go tickless. Under KVM the guest has kvm-clock and needs none of this.

use std::time::{Duration, Instant};

/// How long the host's TSC is timed against its monotonic clock.
const MEASURE: Duration = Duration::from_millis(100);

/// The guest kernel arguments that give a TCG guest the TSC as its clocksource, if the host's
/// TSC is invariant (`constant_tsc` and `nonstop_tsc`): its frequency rounded to the MHz, so
/// that the arguments (and the template snapshots keyed by them) stay the same from run to run.
pub fn tcg_kernel_args() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    if !invariant_tsc(&cpuinfo) {
        return None;
    }
    let mhz = host_tsc_mhz()?;
    Some(format!("tsc_early_khz={} tsc=reliable", mhz * 1000))
}

/// Whether the first CPU's flags say its TSC runs at a constant rate, also in deep idle.
fn invariant_tsc(cpuinfo: &str) -> bool {
    let Some(flags) = cpuinfo.lines().find(|l| l.starts_with("flags")) else { return false };
    let flags: Vec<&str> = flags.split_whitespace().collect();
    flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
}

/// The host TSC's frequency in MHz, timed against the monotonic clock.
fn host_tsc_mhz() -> Option<u64> {
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(MEASURE);
    let (c1, elapsed) = (tsc(), t0.elapsed());
    let ticks = c1.checked_sub(c0)?;
    let mhz = (ticks as f64 / elapsed.as_secs_f64() / 1e6).round();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (100.0..100_000.0).contains(&mhz).then_some(mhz as u64)
}

#[cfg(target_arch = "x86_64")]
fn tsc() -> u64 {
    // SAFETY: RDTSC reads the time-stamp counter; it has no memory effects and every x86_64 CPU
    // has it.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invariant_tsc_needs_both_flags() {
        assert!(invariant_tsc("processor: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n"));
        assert!(!invariant_tsc("flags\t\t: fpu tsc constant_tsc\n"));
        assert!(!invariant_tsc("processor: 0\n"));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_host_tsc_is_timed_to_a_stable_mhz() {
        let (a, b) = (host_tsc_mhz().expect("a TSC"), host_tsc_mhz().expect("a TSC"));
        assert!((100..100_000).contains(&a), "{a}");
        // Two timings agree within a MHz (they round to the same figure, or neighbours).
        assert!(a.abs_diff(b) <= 1, "{a} {b}");
    }
}
