//! One submission/completion queue pair in DMA memory and its two doorbells (Base spec 3.3,
//! "Queue Mechanism"): the host writes entries at the SQ tail and rings the tail doorbell; the
//! controller posts completions whose phase tag flips each lap; the host consumes them and writes
//! the CQ head doorbell. Used for the admin queue (id 0) and every I/O queue.

use super::dma::DmaRegion;
use super::spec::{Cqe, Sqe, CQE_BYTES, REG_DOORBELL_BASE, SQE_BYTES};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

pub struct QueuePair {
    pub qid: u16,
    entries: u16,
    sq: DmaRegion,
    cq: DmaRegion,
    bar: Arc<super::ctrl::Bar>,
    sq_tail: u16,
    /// The controller's SQ head, as last reported in a completion.
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    /// Tail value written to the doorbell last.
    rung_tail: u16,
}

impl QueuePair {
    /// `sq` and `cq` must hold `entries` entries each and be zeroed.
    pub fn new(qid: u16, entries: u16, sq: DmaRegion, cq: DmaRegion, bar: Arc<super::ctrl::Bar>) -> QueuePair {
        assert!(entries >= 2);
        assert!(sq.len() >= entries as usize * SQE_BYTES && cq.len() >= entries as usize * CQE_BYTES);
        cq.zero(0, entries as usize * CQE_BYTES);
        QueuePair {
            qid,
            entries,
            sq,
            cq,
            bar,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            rung_tail: 0,
        }
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    pub fn sq_iova(&self) -> u64 {
        self.sq.iova(0)
    }

    pub fn cq_iova(&self) -> u64 {
        self.cq.iova(0)
    }

    /// Free SQ slots (one is always left empty: full is tail + 1 == head).
    pub fn sq_free(&self) -> usize {
        let used = (self.sq_tail as usize + self.entries as usize - self.sq_head as usize) % self.entries as usize;
        self.entries as usize - 1 - used
    }

    /// Writes `sqe` at the tail. The controller sees it at the next [`QueuePair::ring`].
    ///
    /// # Panics
    /// If the SQ is full (callers check [`QueuePair::sq_free`]).
    pub fn push(&mut self, sqe: &Sqe) {
        assert!(self.sq_free() > 0, "SQ {} overflow", self.qid);
        self.sq.write(self.sq_tail as usize * SQE_BYTES, &sqe.to_bytes());
        self.sq_tail = (self.sq_tail + 1) % self.entries;
    }

    /// Whether entries were pushed since the last ring.
    pub fn unrung(&self) -> bool {
        self.sq_tail != self.rung_tail
    }

    /// Rings the SQ tail doorbell if entries were pushed since the last ring.
    pub fn ring(&mut self) {
        if self.sq_tail != self.rung_tail {
            // The entries must be in memory before the controller reads the doorbell.
            fence(Ordering::SeqCst);
            self.bar.doorbell(2 * self.qid as usize, self.sq_tail as u32);
            self.rung_tail = self.sq_tail;
        }
    }

    /// Whether the controller has posted a completion not yet consumed (one volatile load).
    pub fn has_completion(&self) -> bool {
        let dw3 = self.cq.read32_volatile(self.cq_head as usize * CQE_BYTES + 12);
        ((dw3 >> 16) & 1 == 1) == self.phase
    }

    /// The next completion, if the controller posted one; consumes it.
    pub fn poll(&mut self) -> Option<Cqe> {
        let off = self.cq_head as usize * CQE_BYTES;
        let dw3 = self.cq.read32_volatile(off + 12);
        if ((dw3 >> 16) & 1 == 1) != self.phase {
            return None;
        }
        // The rest of the entry must not be read before the phase tag.
        fence(Ordering::Acquire);
        let c = Cqe::decode(self.cq.read32_volatile(off), self.cq.read32_volatile(off + 8), dw3);
        self.sq_head = c.sq_head % self.entries;
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        Some(c)
    }

    /// Writes the CQ head doorbell (after a batch of [`QueuePair::poll`]s).
    pub fn ack(&mut self) {
        self.bar.doorbell(2 * self.qid as usize + 1, self.cq_head as u32);
    }
}

impl super::ctrl::Bar {
    /// Writes doorbell `index` (2·qid for SQ tail, 2·qid + 1 for CQ head).
    pub fn doorbell(&self, index: usize, value: u32) {
        self.mmio.write32(REG_DOORBELL_BASE + index * self.doorbell_stride_bytes, value);
    }
}

