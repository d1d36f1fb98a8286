//! Scan streams (wire spec §7.3), both sides: the connection's worker splits the partitions
//! by owner, forwards the owners' chunks of record messages, cuts the stream at `max_records`
//! on a record boundary and ends it with LAST; each owner runs a [`ScanTask`] that sends one
//! chunk per credit. Credit is given only while the connection keeps up (fewer than
//! [`STREAM_HIGH_WATER_BYTES`] unsent) and the scan is within its RECORDS_PER_SECOND, so a slow
//! client holds back the scan instead of filling memory.

use super::codec::ScanSpec;
use super::conn::Job;
use super::msg::{CoreMsg, ScanMsg};
use super::reactor::Core;
use super::scan::ScanTask;
use crate::clock::Clock;
use crate::proto;
use crate::proto::msg::Reply as W;
use crate::proto::scan::ScanPartition;
use bolide_drivers::net::{ConnId, Doorbell};
use bolide_drivers::BlockDevice;
use std::sync::Arc;
use std::time::Instant;

/// A scan chunk is forwarded and the next one asked for only while the connection has fewer
/// than this many bytes not yet sent.
pub const STREAM_HIGH_WATER_BYTES: usize = 1 << 20;

/// A scan being answered on a connection.
#[derive(Debug)]
pub struct ScanRun {
    pub id: u64,
    /// Workers whose part is still running.
    pub owners: Vec<usize>,
    /// Record messages forwarded so far, and the cap (0 = none).
    sent: u64,
    max_records: u64,
    /// Workers whose chunk was forwarded but who got no new credit yet (the socket is behind,
    /// or the scan is ahead of its rate).
    owed: Vec<usize>,
    /// RECORDS_PER_SECOND (0 = unlimited) and when the scan started.
    records_per_second: u32,
    started: Instant,
}

impl ScanRun {
    /// Records per chunk: a tenth of a second of the rate, shared by the parts still running.
    fn budget(&self) -> u64 {
        if self.records_per_second == 0 {
            return u64::MAX;
        }
        (u64::from(self.records_per_second) / 10 / self.owners.len().max(1) as u64).max(1)
    }

    /// Whether more records were sent than the rate allows by `now`.
    fn ahead_of_rate(&self, now: Instant) -> bool {
        self.records_per_second > 0
            && self.sent as f64 > f64::from(self.records_per_second) * now.duration_since(self.started).as_secs_f64()
    }

    /// How many of `n` new records may still go out, and whether that reaches the cap.
    fn take(&self, n: usize) -> (usize, bool) {
        if self.max_records > 0 && self.sent + n as u64 >= self.max_records {
            ((self.max_records - self.sent) as usize, true)
        } else {
            (n, false)
        }
    }
}

impl<D: BlockDevice, C: Clock, B: Doorbell> Core<D, C, B> {
    // ----- the coordinator (the connection's worker) -----

    pub(crate) fn start_scan(&mut self, conn: ConnId, spec: Arc<ScanSpec>, parts: Vec<ScanPartition>) {
        let n = self.rings.workers();
        let mut shares: Vec<Vec<ScanPartition>> = vec![Vec::new(); n];
        for p in parts {
            shares[self.shared.pmap.master(p.pid)].push(p);
        }
        self.next_scan_id += 1;
        let scan_id = self.next_scan_id;
        let owners: Vec<usize> = (0..n).filter(|&w| !shares[w].is_empty()).collect();
        let run = ScanRun {
            id: scan_id,
            owners: owners.clone(),
            sent: 0,
            max_records: spec.max_records,
            owed: Vec::new(),
            records_per_second: spec.records_per_second,
            started: Instant::now(),
        };
        let budget = run.budget();
        let Some(c) = self.conns.get_mut(conn) else { return };
        if owners.is_empty() {
            // No partition to scan: an empty stream.
            if let Some(out) = self.conns.out(conn) {
                W::last_proto(out, proto::result_code::OK);
            }
            self.answered(conn);
            return;
        }
        c.job = Some(Job::Scan(run));
        for w in owners {
            let parts = std::mem::take(&mut shares[w]);
            self.post(
                w,
                CoreMsg::Scan(ScanMsg::Start {
                    from: self.id,
                    conn,
                    scan_id,
                    spec: Arc::clone(&spec),
                    parts,
                    budget,
                }),
            );
        }
    }

    /// Gives the scan parts of `conn` that wait for credit their next chunk, unless the
    /// connection is still behind or the scan is ahead of its RECORDS_PER_SECOND (then it stays
    /// throttled and is retried every turn).
    pub(crate) fn grant_owed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let pending = c.unsent_bytes();
        let Some(Job::Scan(s)) = &mut c.job else { return };
        if s.owed.is_empty() || pending >= STREAM_HIGH_WATER_BYTES {
            return;
        }
        if s.ahead_of_rate(Instant::now()) {
            if !self.throttled.contains(&conn) {
                self.throttled.push(conn);
            }
            return;
        }
        let (scan_id, budget, owed) = (s.id, s.budget(), std::mem::take(&mut s.owed));
        for o in owed {
            self.post(
                o,
                CoreMsg::Scan(ScanMsg::Credit {
                    from: self.id,
                    scan_id,
                    budget,
                }),
            );
        }
    }

    /// Retries the scans held back by their rate.
    pub(crate) fn release_throttled(&mut self) {
        if self.throttled.is_empty() {
            return;
        }
        for conn in std::mem::take(&mut self.throttled) {
            self.grant_owed(conn);
        }
    }

    /// A chunk of a scan reached the connection's worker: forward it (cut at `max_records`),
    /// then end the stream or ask for more.
    #[allow(clippy::too_many_arguments)]
    fn scan_chunk(&mut self, from: usize, conn: ConnId, scan_id: u64, bytes: &[u8], ends: &[u32], done: bool, error: u8) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(Job::Scan(s)) = &mut c.job else { return };
        if s.id != scan_id {
            return; // a part of a scan that already ended
        }
        let (take, capped) = s.take(ends.len());
        s.sent += take as u64;
        if done {
            s.owners.retain(|&o| o != from);
        }
        let finished = error != 0 || capped || s.owners.is_empty();
        let cancel = if finished { std::mem::take(&mut s.owners) } else { Vec::new() };
        if !finished && !done {
            s.owed.push(from);
        }
        if finished {
            c.job = None;
        }
        let Some(out) = self.conns.out(conn) else { return };
        if take > 0 {
            let end = ends[take - 1] as usize;
            let start = W::begin(out);
            out.extend_from_slice(&bytes[..end]);
            W::finish(out, start, proto::PROTO_TYPE_MSG);
        }
        if finished {
            W::last_proto(out, error);
            for o in cancel {
                self.post(
                    o,
                    CoreMsg::Scan(ScanMsg::Cancel {
                        from: self.id,
                        scan_id,
                    }),
                );
            }
            self.answered(conn);
        } else if !done {
            self.grant_owed(conn);
        }
    }

    // ----- the owners -----

    pub(crate) fn on_scan_msg(&mut self, m: ScanMsg) {
        match m {
            ScanMsg::Start {
                from,
                conn,
                scan_id,
                spec,
                parts,
                budget,
            } => {
                let mut task = ScanTask::new(from, conn, scan_id, spec, parts);
                task.budget = budget;
                self.scans.insert((from, scan_id), task);
            }
            ScanMsg::Chunk {
                from,
                conn,
                scan_id,
                bytes,
                ends,
                done,
                error,
            } => self.scan_chunk(from, conn, scan_id, &bytes, &ends, done, error),
            ScanMsg::Credit { from, scan_id, budget } => {
                if let Some(t) = self.scans.get_mut(&(from, scan_id)) {
                    t.credit = true;
                    t.budget = budget;
                }
            }
            ScanMsg::Cancel { from, scan_id } => {
                // Reads still in flight complete into nothing (their tokens find no task).
                self.scans.remove(&(from, scan_id));
            }
        }
    }

    /// Advances every scan part of this worker: issue reads, move read records into the chunk,
    /// send the chunk when due and credited.
    pub(crate) fn run_scans(&mut self) {
        if self.scans.is_empty() {
            return;
        }
        let keys: Vec<(usize, u64)> = self.scans.keys().copied().collect();
        for key in keys {
            let Some(mut t) = self.scans.remove(&key) else { continue };
            let now_ms = self.shard.clock().now_cl_ms();
            loop {
                let emitted = t.emit(&self.truncate, now_ms);
                if t.chunk_due() {
                    break;
                }
                let filled = t.fill(&mut self.shard, &self.truncate, &mut self.scan_reads, key);
                if !filled && !emitted {
                    break;
                }
            }
            if t.credit && t.chunk_due() {
                let done = t.finished();
                t.credit = false;
                let msg = ScanMsg::Chunk {
                    from: self.id,
                    conn: t.conn,
                    scan_id: t.scan_id,
                    bytes: std::mem::take(&mut t.chunk),
                    ends: std::mem::take(&mut t.ends),
                    done,
                    error: t.error,
                };
                let coord = t.coord;
                if !done {
                    self.scans.insert(key, t);
                }
                self.post(coord, CoreMsg::Scan(msg));
            } else {
                self.scans.insert(key, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max_records: u64, rps: u32, owners: usize) -> ScanRun {
        ScanRun {
            id: 1,
            owners: (0..owners).collect(),
            sent: 0,
            max_records,
            owed: Vec::new(),
            records_per_second: rps,
            started: Instant::now(),
        }
    }

    #[test]
    fn max_records_cuts_on_a_record_boundary() {
        let mut r = run(10, 0, 2);
        assert_eq!(r.take(4), (4, false));
        r.sent += 4;
        assert_eq!(r.take(4), (4, false));
        r.sent += 4;
        assert_eq!(r.take(4), (2, true), "only two more of four may go, and that is the end");
        let unlimited = run(0, 0, 1);
        assert_eq!(unlimited.take(1_000_000), (1_000_000, false));
    }

    #[test]
    fn a_rate_limited_scan_shares_a_tenth_of_a_second_among_its_parts() {
        assert_eq!(run(0, 1000, 2).budget(), 50);
        assert_eq!(run(0, 5, 4).budget(), 1, "at least one record per chunk");
        assert_eq!(run(0, 0, 3).budget(), u64::MAX);
        let mut r = run(0, 100, 1);
        r.started = Instant::now() - std::time::Duration::from_secs(1);
        r.sent = 50;
        assert!(!r.ahead_of_rate(Instant::now()));
        r.sent = 500;
        assert!(r.ahead_of_rate(Instant::now()));
    }
}
