//! Setting the guest clock from `/init`'s host time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sets the system clock if it is more than 50 ms off `t`.
pub fn set_clock(t: SystemTime) {
    let now = SystemTime::now();
    let off = now.duration_since(t).or_else(|_| t.duration_since(now)).unwrap_or_default();
    if off < Duration::from_millis(50) {
        return;
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64);
    match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        Ok(()) => tracing::info!(off_ms = off.as_millis() as u64, "guest clock set from host time"),
        Err(e) => tracing::warn!(error = %e, "cannot set the clock"),
    }
}
