//! Time sources for the storage engine.
//!
//! The engine needs two clocks: a monotonic one for timers (`flush_max_ms`, expiry sweeps) and
//! a wall clock in the Citrusleaf epoch (seconds/milliseconds since 2010-01-01 00:00:00 UTC,
//! wire spec §10.5) for void-times and last-update times. Tests drive [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// 2010-01-01T00:00:00Z as Unix seconds (wire spec §10.5).
pub const CITRUSLEAF_EPOCH_UNIX_S: u64 = 1_262_304_000;

/// A source of time.
pub trait Clock: Send {
    /// Milliseconds from an arbitrary fixed start; never goes backwards.
    fn mono_ms(&self) -> u64;
    /// Wall clock, milliseconds since 2010-01-01 UTC.
    fn now_cl_ms(&self) -> u64;
    /// Wall clock, whole seconds since 2010-01-01 UTC (the unit of void-times).
    fn now_cl_s(&self) -> u32 {
        (self.now_cl_ms() / 1000) as u32
    }
}

/// The machine's clocks.
#[derive(Clone, Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock { start: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn mono_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn now_cl_ms(&self) -> u64 {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        unix_ms.saturating_sub(CITRUSLEAF_EPOCH_UNIX_S * 1000)
    }
}

/// A clock moved by hand (simulation and tests); clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    mono_ms: Arc<AtomicU64>,
    cl_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// Starts at monotonic 0 and wall clock `cl_ms` (ms since 2010).
    pub fn new(cl_ms: u64) -> ManualClock {
        ManualClock {
            mono_ms: Arc::new(AtomicU64::new(0)),
            cl_ms: Arc::new(AtomicU64::new(cl_ms)),
        }
    }
    /// Moves both clocks forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.mono_ms.fetch_add(ms, Ordering::Relaxed);
        self.cl_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn mono_ms(&self) -> u64 {
        self.mono_ms.load(Ordering::Relaxed)
    }
    fn now_cl_ms(&self) -> u64 {
        self.cl_ms.load(Ordering::Relaxed)
    }
}
