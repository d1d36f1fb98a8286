//! Open-loop pacing: operation `i` is due at `i / rate` after the phase starts, whatever happened
//! to earlier operations, and its latency is measured from that intended time, not from when a
//! free worker got round to sending it. A stalled server thus shows up in the latency of every
//! operation that was due during the stall ("coordinated omission", Gil Tene; the approach of
//! `wrk2`), not only in the one operation that hit it.

/// The intended send times of an open-loop phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoopSchedule {
    rate_per_s: f64,
}

impl OpenLoopSchedule {
    /// Operations sent at `rate_per_s` (> 0) per second in total, all workers together.
    pub fn new(rate_per_s: f64) -> OpenLoopSchedule {
        assert!(
            rate_per_s > 0.0 && rate_per_s.is_finite(),
            "rate must be > 0, got {rate_per_s}"
        );
        OpenLoopSchedule { rate_per_s }
    }

    /// The target rate, operations per second.
    pub fn rate_per_s(&self) -> f64 {
        self.rate_per_s
    }

    /// When operation `i` (0-based, in claim order) is due, ns after the phase start.
    pub fn intended_ns(&self, i: u64) -> u64 {
        (i as f64 * 1e9 / self.rate_per_s) as u64
    }
}

/// The times of one operation, ns since the phase start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpTimes {
    /// When the schedule wanted it sent (closed loop: when it was sent).
    pub intended_ns: u64,
    /// When it was sent.
    pub sent_ns: u64,
    /// When its answer arrived.
    pub done_ns: u64,
}

impl OpTimes {
    /// The latency reported: answer minus intended send time.
    pub fn latency_ns(&self) -> u64 {
        self.done_ns.saturating_sub(self.intended_ns)
    }

    /// The server's part as the client sees it: answer minus actual send time.
    pub fn service_ns(&self) -> u64 {
        self.done_ns.saturating_sub(self.sent_ns)
    }

    /// How late the client sent it (no free worker, or timer granularity).
    pub fn send_lag_ns(&self) -> u64 {
        self.sent_ns.saturating_sub(self.intended_ns)
    }
}

/// The rule the runner follows for operation `i`: the pacer releases it at its intended time and
/// the first free worker sends it, so it goes out at `max(intended, when a worker is free)`.
/// Pure, so that [`simulate`] and the tests apply the same rule.
pub fn send_time_ns(schedule: &OpenLoopSchedule, i: u64, now_ns: u64) -> (u64, u64) {
    let intended = schedule.intended_ns(i);
    (intended, intended.max(now_ns))
}

/// Simulates `workers` workers sharing one schedule against a server that takes `service_ns(i)`
/// for operation `i` (no queueing in the server): the same claim-then-send rule as the runner,
/// with simulated time. For tests and for explaining the accounting.
pub fn simulate(
    schedule: &OpenLoopSchedule,
    workers: usize,
    ops: u64,
    service_ns: impl Fn(u64) -> u64,
) -> Vec<OpTimes> {
    assert!(workers >= 1);
    let mut free_at = vec![0u64; workers];
    let mut out = Vec::with_capacity(ops as usize);
    for i in 0..ops {
        // The worker that becomes free first claims the next index (ties: lowest id).
        let (w, &now) = free_at
            .iter()
            .enumerate()
            .min_by_key(|&(w, &t)| (t, w))
            .expect("workers >= 1");
        let (intended_ns, sent_ns) = send_time_ns(schedule, i, now);
        let done_ns = sent_ns + service_ns(i);
        free_at[w] = done_ns;
        out.push(OpTimes {
            intended_ns,
            sent_ns,
            done_ns,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn intended_times_are_evenly_spaced() {
        let s = OpenLoopSchedule::new(1000.0);
        assert_eq!(s.intended_ns(0), 0);
        assert_eq!(s.intended_ns(1), MS);
        assert_eq!(s.intended_ns(2500), 2500 * MS);
        assert_eq!(send_time_ns(&s, 10, 3 * MS), (10 * MS, 10 * MS), "early worker waits");
        assert_eq!(
            send_time_ns(&s, 10, 15 * MS),
            (10 * MS, 15 * MS),
            "late worker sends now"
        );
    }

    #[test]
    fn a_stall_is_charged_to_every_operation_due_during_it() {
        // 1000 ops/s, one worker, 100 us per op, except op 100 which takes 1 s.
        let s = OpenLoopSchedule::new(1000.0);
        let t = simulate(&s, 1, 3000, |i| if i == 100 { 1000 * MS } else { MS / 10 });
        let over_100ms = t.iter().filter(|o| o.latency_ns() > 100 * MS).count();
        let service_over_100ms = t.iter().filter(|o| o.service_ns() > 100 * MS).count();
        // The ~1000 ops due during the 1 s stall (and while the backlog drains) are late.
        assert!((850..=1000).contains(&over_100ms), "{over_100ms} ops over 100 ms");
        // Timing from the actual send would hide the stall in a single op: coordinated omission.
        assert_eq!(service_over_100ms, 1);
        // The op right after the stall waited nearly the whole second.
        assert!(t[101].latency_ns() >= 998 * MS, "{:?}", t[101]);
        assert_eq!(t[101].service_ns(), MS / 10);
        // Once the backlog drains, latency is the service time again.
        assert_eq!(t[2999].latency_ns(), MS / 10);
        assert_eq!(t[2999].send_lag_ns(), 0);
    }

    #[test]
    fn enough_workers_absorb_a_single_slow_op() {
        // With 4 workers the other three keep the schedule while one is stuck.
        let s = OpenLoopSchedule::new(1000.0);
        let t = simulate(&s, 4, 3000, |i| if i == 100 { 1000 * MS } else { MS / 10 });
        let late = t.iter().filter(|o| o.latency_ns() > MS).count();
        assert_eq!(late, 1, "only the slow op itself");
    }

    #[test]
    fn overload_latency_grows_with_the_backlog() {
        // Offered 1000/s, served at most 500/s: op i waits about i ms by the end.
        let s = OpenLoopSchedule::new(1000.0);
        let t = simulate(&s, 1, 1000, |_| 2 * MS);
        assert_eq!(t[999].latency_ns(), 999 * 2 * MS + 2 * MS - 999 * MS);
        assert!(t.windows(2).all(|w| w[1].latency_ns() >= w[0].latency_ns()));
    }
}
