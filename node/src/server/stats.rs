//! Transaction latency histograms for `latencies:` (wire spec §2.2; the server's `hist.c`).
//!
//! Each worker counts the transactions its connections complete into log2 millisecond buckets
//! (bucket 0: under 1 ms; bucket `b`: `[2^(b-1), 2^b)` ms), cumulative, in atomics only it
//! writes. Worker 0 closes a slice every [`SLICE`] (the server's `ticker-interval`): it
//! snapshots the counters under a mutex that nothing on the data path takes, and `latencies:`
//! reports the last closed slice.

use crate::proto::info::{LatencyHist, LatencySlice, LatencyUnits};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of a latency slice (the server's default `ticker-interval`).
pub const SLICE: Duration = Duration::from_secs(10);
/// Buckets per histogram: under 1 ms, then one per power of two up to 2^16 ms and beyond.
pub const BUCKETS: usize = 18;

/// The histograms, in the order `latencies:` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hist {
    /// Whole batch requests (`batch-index`).
    Batch = 0,
    /// Single-record reads (`{ns}-read`).
    Read = 1,
    /// Single-record writes, deletes, touches and operates that write (`{ns}-write`).
    Write = 2,
    /// Partition scans and queries without secondary index (`{ns}-pi-query`).
    Query = 3,
}

const N_HISTS: usize = 4;

type Counts = [[u64; BUCKETS]; N_HISTS];

/// The bucket of a transaction that took `elapsed`.
pub fn bucket(elapsed: Duration) -> usize {
    let ms = elapsed.as_millis();
    if ms == 0 {
        0
    } else {
        (128 - ms.leading_zeros() as usize).min(BUCKETS - 1)
    }
}

struct Ticker {
    at: Instant,
    counts: Counts,
    /// The last closed slice: its length in ms and its counts.
    slice: Option<(u64, Counts)>,
}

/// Every worker's latency counters and the last closed slice.
pub struct Latencies {
    counters: Vec<[[AtomicU64; BUCKETS]; N_HISTS]>,
    ticker: Mutex<Ticker>,
}

impl Latencies {
    pub fn new(workers: usize) -> Latencies {
        Latencies {
            counters: (0..workers)
                .map(|_| std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            ticker: Mutex::new(Ticker {
                at: Instant::now(),
                counts: [[0; BUCKETS]; N_HISTS],
                slice: None,
            }),
        }
    }

    /// Counts one transaction of `worker` (only that worker calls this for its index).
    pub fn record(&self, worker: usize, hist: Hist, elapsed: Duration) {
        self.counters[worker][hist as usize][bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> Counts {
        let mut c = [[0; BUCKETS]; N_HISTS];
        for w in &self.counters {
            for (h, hist) in w.iter().enumerate() {
                for (b, n) in hist.iter().enumerate() {
                    c[h][b] += n.load(Ordering::Relaxed);
                }
            }
        }
        c
    }

    /// Closes a slice when [`SLICE`] has passed since the last one (worker 0 calls this every
    /// turn; it costs one clock comparison otherwise).
    pub fn tick(&self, now: Instant) {
        let Ok(mut t) = self.ticker.try_lock() else { return };
        let elapsed = now.saturating_duration_since(t.at);
        if elapsed < SLICE {
            return;
        }
        let counts = self.totals();
        let mut diff = [[0; BUCKETS]; N_HISTS];
        for h in 0..N_HISTS {
            for b in 0..BUCKETS {
                diff[h][b] = counts[h][b].saturating_sub(t.counts[h][b]);
            }
        }
        t.slice = Some((elapsed.as_millis() as u64, diff));
        t.counts = counts;
        t.at = now;
    }

    /// The histograms for `latencies:`, names as the server's (`batch-index`, `{ns}-read`,
    /// `{ns}-write`, `{ns}-pi-query`), in milliseconds.
    pub fn hists(&self, namespace: &str) -> Vec<LatencyHist> {
        let slice = self
            .ticker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .slice;
        let names = [
            "batch-index".to_string(),
            format!("{{{namespace}}}-read"),
            format!("{{{namespace}}}-write"),
            format!("{{{namespace}}}-pi-query"),
        ];
        names
            .into_iter()
            .enumerate()
            .map(|(h, name)| LatencyHist {
                name,
                units: LatencyUnits::Msec,
                slice: slice.map(|(ms, c)| LatencySlice::from_log2_buckets(ms, &c[h])),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_milliseconds() {
        let ms = Duration::from_millis;
        assert_eq!(bucket(Duration::from_micros(999)), 0);
        assert_eq!(bucket(ms(1)), 1);
        assert_eq!(bucket(ms(2)), 2);
        assert_eq!(bucket(ms(3)), 2);
        assert_eq!(bucket(ms(4)), 3);
        assert_eq!(bucket(ms(65_535)), 16);
        assert_eq!(bucket(ms(65_536)), 17);
        assert_eq!(bucket(Duration::from_secs(1 << 30)), BUCKETS - 1);
    }

    #[test]
    fn a_slice_reports_only_its_own_transactions() {
        let l = Latencies::new(2);
        let t0 = Instant::now();
        assert!(
            l.hists("test").iter().all(|h| h.slice.is_none()),
            "no slice before the first tick"
        );
        l.record(0, Hist::Read, Duration::from_micros(10));
        l.record(1, Hist::Read, Duration::from_millis(9));
        l.tick(t0 + SLICE / 2);
        assert!(l.hists("test")[1].slice.is_none(), "a slice closes only after SLICE");
        l.tick(t0 + SLICE + Duration::from_millis(5));
        let h = l.hists("test");
        assert_eq!(h[1].name, "{test}-read");
        let s = h[1].slice.expect("closed");
        assert_eq!(s.ops, 2);
        assert_eq!(s.over[0], 1, "one read took 1 ms or more");
        assert_eq!(s.over[3], 1, "one took 8 ms or more");
        assert_eq!(s.over[4], 0);
        assert_eq!(h[2].slice.expect("closed").ops, 0);
        // The next slice starts from zero.
        l.record(0, Hist::Write, Duration::from_millis(70));
        l.tick(t0 + 2 * SLICE + Duration::from_millis(10));
        let h = l.hists("test");
        assert_eq!(h[1].slice.unwrap().ops, 0);
        let w = h[2].slice.unwrap();
        assert_eq!((w.ops, w.over[6], w.over[7]), (1, 1, 0));
    }
}
