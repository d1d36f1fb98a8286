//! Recording: HdrHistograms of latency per operation kind, errors by result code, and the
//! per-second intervals behind the progress lines and the throughput-over-time series.
//!
//! Values are recorded in ns with 3 significant digits between 1 µs and 60 s (larger values are
//! clamped to 60 s and counted in `clamped`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use super::schedule::OpTimes;
use super::workload::OpKind;

/// Lowest latency told apart, ns.
pub const HIST_LOW_NS: u64 = 1_000;
/// Highest latency recorded, ns; larger ones are recorded as this.
pub const HIST_HIGH_NS: u64 = 60_000_000_000;

/// Aerospike's latency buckets (`asadm`'s `show latencies`, ACT): share of operations over
/// 1 ms, 8 ms and 64 ms.
pub const BUCKETS_MS: [u64; 3] = [1, 8, 64];

/// An empty latency histogram with this module's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).expect("valid histogram bounds")
}

/// Totals of one operation kind over a phase.
#[derive(Clone, Debug)]
pub struct KindStats {
    /// Latency of successful operations, ns: from the intended send time (open loop) or the
    /// send time (closed loop).
    pub latency: Histogram<u64>,
    /// Open loop only: answer minus actual send time, ns.
    pub service: Option<Histogram<u64>>,
    /// Open loop only: actual minus intended send time, ns (the client's lateness).
    pub send_lag: Option<Histogram<u64>>,
    /// Failed operations by result code (server codes >= 0, the client's own codes < 0, as the
    /// `aerospike` crate's `Error::result_code`).
    pub errors: BTreeMap<i32, u64>,
    /// Latencies over [`HIST_HIGH_NS`], recorded as that.
    pub clamped: u64,
}

impl KindStats {
    fn new(open_loop: bool) -> KindStats {
        KindStats {
            latency: new_histogram(),
            service: open_loop.then(new_histogram),
            send_lag: open_loop.then(new_histogram),
            errors: BTreeMap::new(),
            clamped: 0,
        }
    }

    /// Successful operations.
    pub fn ok(&self) -> u64 {
        self.latency.len()
    }

    /// Failed operations.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, o: &KindStats) {
        self.latency.add(&o.latency).expect("same bounds");
        if let (Some(a), Some(b)) = (&mut self.service, &o.service) {
            a.add(b).expect("same bounds");
        }
        if let (Some(a), Some(b)) = (&mut self.send_lag, &o.send_lag) {
            a.add(b).expect("same bounds");
        }
        for (c, n) in &o.errors {
            *self.errors.entry(*c).or_default() += n;
        }
        self.clamped += o.clamped;
    }
}

/// Share of `h`'s values over `threshold_ns`, percent (0 when empty).
pub fn over_pct(h: &Histogram<u64>, threshold_ns: u64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let at_or_below = h.count_between(0, threshold_ns);
    100.0 * (h.len() - at_or_below.min(h.len())) as f64 / h.len() as f64
}

fn record_clamped(h: &mut Histogram<u64>, ns: u64) -> bool {
    let clamped = ns > HIST_HIGH_NS;
    h.saturating_record(ns.clamp(HIST_LOW_NS, HIST_HIGH_NS));
    clamped
}

/// One second (or so) of operations, all recorded, warm-up included.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Latency of successful operations per kind, ns (`None` when the kind had none).
    pub latency: [Option<Histogram<u64>>; 5],
    /// Failed operations, all kinds.
    pub failed: u64,
}

impl Interval {
    fn new() -> Interval {
        Interval {
            latency: Default::default(),
            failed: 0,
        }
    }

    fn merge(&mut self, o: &Interval) {
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            if let Some(b) = b {
                a.get_or_insert_with(new_histogram).add(b).expect("same bounds");
            }
        }
        self.failed += o.failed;
    }

    /// Successful operations of `kind` in the interval.
    pub fn ok(&self, kind: OpKind) -> u64 {
        self.latency[kind.index()].as_ref().map_or(0, Histogram::len)
    }

    /// Successful operations, all kinds.
    pub fn ok_total(&self) -> u64 {
        OpKind::ALL.iter().map(|&k| self.ok(k)).sum()
    }
}

struct Shard {
    total: [Option<KindStats>; 5],
    interval: Interval,
}

/// Where workers record; shared by reference. Workers are spread over a few mutex-guarded shards
/// so that they rarely wait for each other; the progress reporter takes each shard's interval
/// once a second.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    open_loop: bool,
}

impl Recorder {
    /// A recorder with `shards` (>= 1) shards; `open_loop` also keeps service and send-lag
    /// histograms.
    pub fn new(shards: usize, open_loop: bool) -> Recorder {
        assert!(shards >= 1);
        Recorder {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        total: Default::default(),
                        interval: Interval::new(),
                    })
                })
                .collect(),
            open_loop,
        }
    }

    /// Records one operation from worker `worker`. `measured` false (warm-up) counts it only in
    /// the interval. `result` is `Err(result_code)` for a failed operation.
    pub fn record(&self, worker: usize, kind: OpKind, t: OpTimes, result: Result<(), i32>, measured: bool) {
        let mut s = self.shards[worker % self.shards.len()]
            .lock()
            .expect("recorder poisoned");
        match result {
            Ok(()) => {
                let h = s.interval.latency[kind.index()].get_or_insert_with(new_histogram);
                record_clamped(h, t.latency_ns());
            }
            Err(_) => s.interval.failed += 1,
        }
        if !measured {
            return;
        }
        let open_loop = self.open_loop;
        let k = s.total[kind.index()].get_or_insert_with(|| KindStats::new(open_loop));
        match result {
            Ok(()) => {
                if record_clamped(&mut k.latency, t.latency_ns()) {
                    k.clamped += 1;
                }
                if let Some(h) = &mut k.service {
                    record_clamped(h, t.service_ns());
                }
                if let Some(h) = &mut k.send_lag {
                    record_clamped(h, t.send_lag_ns());
                }
            }
            Err(code) => *k.errors.entry(code).or_default() += 1,
        }
    }

    /// The operations recorded since the last call, all shards merged; resets the intervals.
    pub fn take_interval(&self) -> Interval {
        let mut out = Interval::new();
        for s in &self.shards {
            let taken = std::mem::replace(&mut s.lock().expect("recorder poisoned").interval, Interval::new());
            out.merge(&taken);
        }
        out
    }

    /// The measured totals per kind (only kinds that saw an operation), all shards merged.
    pub fn totals(&self) -> BTreeMap<OpKind, KindStats> {
        let mut out: BTreeMap<OpKind, KindStats> = BTreeMap::new();
        for s in &self.shards {
            let s = s.lock().expect("recorder poisoned");
            for k in OpKind::ALL {
                if let Some(st) = &s.total[k.index()] {
                    out.entry(k).or_insert_with(|| KindStats::new(self.open_loop)).merge(st);
                }
            }
        }
        out
    }
}

/// A result code's name: the server's codes as the `aerospike` crate spells them, negative ones
/// the client's own.
pub fn result_code_name(code: i32) -> String {
    if code < 0 {
        aerospike::ClientResultCode::from(code).into_string()
    } else {
        aerospike::ResultCode::from(code.min(255) as u8).into_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(latency_us: u64) -> OpTimes {
        OpTimes {
            intended_ns: 0,
            sent_ns: 0,
            done_ns: latency_us * 1000,
        }
    }

    #[test]
    fn warm_up_counts_in_intervals_only_and_shards_merge() {
        let r = Recorder::new(3, false);
        for w in 0..6 {
            r.record(w, OpKind::Read, t(100), Ok(()), false);
            r.record(w, OpKind::Read, t(200 + w as u64), Ok(()), true);
        }
        r.record(1, OpKind::Update, t(50), Err(2), true);
        r.record(2, OpKind::Update, t(50), Err(2), true);
        r.record(2, OpKind::Update, t(50), Err(-8), true);
        let i = r.take_interval();
        assert_eq!(i.ok(OpKind::Read), 12);
        assert_eq!(i.failed, 3);
        assert_eq!(r.take_interval().ok_total(), 0, "interval was reset");
        let tot = r.totals();
        assert_eq!(tot[&OpKind::Read].ok(), 6, "warm-up excluded");
        assert!(tot[&OpKind::Read].latency.min() >= 199_000);
        assert_eq!(tot[&OpKind::Update].ok(), 0);
        assert_eq!(tot[&OpKind::Update].errors, BTreeMap::from([(-8, 1), (2, 2)]));
        assert!(!tot.contains_key(&OpKind::Insert));
    }

    #[test]
    fn buckets_and_percentiles() {
        let r = Recorder::new(1, false);
        // 1000 ops: 900 at 0.5 ms, 90 at 2 ms, 9 at 10 ms, 1 at 100 ms.
        for (n, us) in [(900, 500), (90, 2000), (9, 10_000), (1, 100_000)] {
            for _ in 0..n {
                r.record(0, OpKind::Read, t(us), Ok(()), true);
            }
        }
        let h = &r.totals()[&OpKind::Read].latency;
        assert!((over_pct(h, 1_000_000) - 10.0).abs() < 1e-9);
        assert!((over_pct(h, 8_000_000) - 1.0).abs() < 1e-9);
        assert!((over_pct(h, 64_000_000) - 0.1).abs() < 1e-9);
        let near = |a: u64, b: u64| (a as f64 - b as f64).abs() <= b as f64 * 0.001;
        assert!(near(h.value_at_quantile(0.5), 500_000));
        assert!(near(h.value_at_quantile(0.95), 2_000_000));
        assert!(near(h.value_at_quantile(0.999), 10_000_000));
        assert!(near(h.max(), 100_000_000));
    }

    #[test]
    fn open_loop_keeps_service_and_lag() {
        let r = Recorder::new(1, true);
        let late = OpTimes {
            intended_ns: 1_000_000,
            sent_ns: 5_000_000,
            done_ns: 6_000_000,
        };
        r.record(0, OpKind::Update, late, Ok(()), true);
        r.record(0, OpKind::Update, t(120_000_000_000), Ok(()), true);
        let k = &r.totals()[&OpKind::Update];
        let near = |a: u64, b: u64| (a as f64 - b as f64).abs() <= b as f64 * 0.001;
        assert!(near(k.latency.min(), 5_000_000));
        assert!(near(k.service.as_ref().unwrap().min(), 1_000_000));
        assert!(near(k.send_lag.as_ref().unwrap().max(), 4_000_000));
        assert_eq!(k.clamped, 1, "120 s is over the histogram's 60 s");
    }

    #[test]
    fn result_codes_have_names() {
        assert!(
            result_code_name(2).to_lowercase().contains("not found"),
            "{}",
            result_code_name(2)
        );
        assert!(!result_code_name(-8).is_empty());
    }
}
