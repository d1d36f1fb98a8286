//! Batch streams (wire spec §7.1–7.2): the connection's worker turns each row into a
//! single-record command for its partition's owner, at most [`BATCH_WINDOW`] of one batch in
//! flight (so one batch cannot flood the rings), writes each row's reply as it arrives (the
//! row's index in `transaction_ttl`), and ends the stream with LAST once every row answered.

use super::codec::{self, BatchItem};
use super::conn::Job;
use super::exec::{Command, Reply};
use super::msg::Origin;
use super::reactor::Core;
use crate::clock::Clock;
use crate::proto;
use crate::proto::msg::Reply as W;
use bolide_drivers::net::{ConnId, Doorbell};
use bolide_drivers::BlockDevice;
use std::collections::VecDeque;

/// Rows of one batch in flight at once.
pub const BATCH_WINDOW: usize = 64;

/// A batch being answered on a connection.
#[derive(Debug, Default)]
pub struct BatchRun {
    /// Rows not yet started, with their owners.
    queue: VecDeque<(usize, u32, Box<Command>)>,
    in_flight: usize,
    /// Rows not yet answered.
    remaining: usize,
}

impl BatchRun {
    /// The next row to start, if the window has room.
    fn next_row(&mut self) -> Option<(usize, u32, Box<Command>)> {
        if self.in_flight >= BATCH_WINDOW {
            return None;
        }
        let row = self.queue.pop_front()?;
        self.in_flight += 1;
        Some(row)
    }

    /// A row answered; returns whether it was the last.
    fn row_answered(&mut self) -> bool {
        self.in_flight -= 1;
        self.remaining -= 1;
        self.remaining == 0
    }

    fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }
}

impl<D: BlockDevice, C: Clock, B: Doorbell> Core<D, C, B> {
    pub(crate) fn start_batch(&mut self, conn: ConnId, items: Vec<BatchItem>) {
        let mut run = BatchRun {
            queue: VecDeque::with_capacity(items.len()),
            in_flight: 0,
            remaining: 0,
        };
        let mut early = Vec::new();
        for item in items {
            match item.cmd {
                Ok(cmd) => {
                    let owner = self.owner(&cmd.digest);
                    run.queue.push_back((owner, item.index, cmd));
                }
                Err(code) => early.extend_from_slice(&codec::encode_row(&Reply::code(code), item.index)),
            }
        }
        run.remaining = run.queue.len();
        let Some(out) = self.conns.out(conn) else { return };
        out.extend_from_slice(&early);
        if run.remaining == 0 {
            W::last_proto(out, proto::result_code::OK);
            self.answered(conn);
            return;
        }
        if let Some(c) = self.conns.get_mut(conn) {
            c.job = Some(Job::Batch(run));
        }
        self.batch_conns.push(conn);
    }

    /// Starts more rows of every batch with rows waiting, up to [`BATCH_WINDOW`] in flight each.
    pub(crate) fn pump_batches(&mut self) {
        let mut i = 0;
        while i < self.batch_conns.len() {
            let conn = self.batch_conns[i];
            loop {
                let next = match self.conns.get_mut(conn).and_then(|c| c.job.as_mut()) {
                    Some(Job::Batch(b)) => b.next_row(),
                    _ => None,
                };
                let Some((owner, index, cmd)) = next else { break };
                let origin = Origin {
                    worker: self.id,
                    conn,
                    row: Some(index),
                };
                self.dispatch(owner, origin, cmd);
            }
            let waiting = matches!(
                self.conns.get(conn).and_then(|c| c.job.as_ref()),
                Some(Job::Batch(b)) if b.waiting()
            );
            if waiting {
                i += 1;
            } else {
                self.batch_conns.swap_remove(i);
            }
        }
    }

    /// A batch row's reply reached the connection's worker.
    pub(crate) fn row_done(&mut self, conn: ConnId, bytes: &[u8]) {
        let last = match self.conns.get_mut(conn).and_then(|c| c.job.as_mut()) {
            Some(Job::Batch(b)) => b.row_answered(),
            _ => return,
        };
        let Some(out) = self.conns.out(conn) else { return };
        out.extend_from_slice(bytes);
        if last {
            W::last_proto(out, proto::result_code::OK);
            if let Some(c) = self.conns.get_mut(conn) {
                c.job = None;
            }
            self.answered(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn cmd(i: u8) -> Box<Command> {
        Box::new(Command {
            digest: Digest([i; 20]),
            set_name: Vec::new(),
            key: None,
            info1: 0,
            info2: 0,
            info3: 0,
            generation: 0,
            record_ttl: 0,
            ops: Vec::new(),
            filter_exp: Vec::new(),
        })
    }

    #[test]
    fn a_batch_keeps_at_most_its_window_in_flight_and_ends_after_the_last_row() {
        let n = BATCH_WINDOW + 10;
        let mut run = BatchRun {
            queue: (0..n).map(|i| (0, i as u32, cmd(i as u8))).collect(),
            in_flight: 0,
            remaining: n,
        };
        let mut started = Vec::new();
        while let Some((_, i, _)) = run.next_row() {
            started.push(i);
        }
        assert_eq!(started, (0..BATCH_WINDOW as u32).collect::<Vec<_>>(), "the window bounds rows in flight, in order");
        // Each answer frees one place; the batch ends with the n-th answer and not before.
        let mut answered = 0;
        loop {
            let last = run.row_answered();
            answered += 1;
            if last {
                break;
            }
            if let Some((_, i, _)) = run.next_row() {
                started.push(i);
            }
            assert!(run.in_flight <= BATCH_WINDOW);
        }
        assert_eq!(answered, n);
        assert_eq!(started, (0..n as u32).collect::<Vec<_>>(), "every row started once");
        assert!(!run.waiting());
    }
}
