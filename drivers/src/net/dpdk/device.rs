//! smoltcp's `Device` over one DPDK queue pair: a received frame is lent to the stack straight
//! from its mbuf; a frame to send is written by the stack straight into a fresh mbuf; both sides
//! move in bursts (`rte_eth_rx_burst`/`rte_eth_tx_burst` through the shim).
//!
//! Unsafe is allowed here: this module calls DPDK through `bolide-dpdk-sys`; every block says why
//! it is sound.
#![allow(unsafe_code)]

use super::eal::DpdkPort;
use crate::net::NetError;
use bolide_dpdk_sys as sys;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames moved per `rte_eth_rx_burst`/`rte_eth_tx_burst` call.
pub(crate) const BURST: usize = 32;
/// The port's MTU (IPv4 payload bytes per frame); no jumbo frames.
pub(crate) const MTU: usize = 1500;
const FRAME_MAX: usize = MTU + 14;

const _: () = assert!(FRAME_MAX + sys::RTE_PKTMBUF_HEADROOM as usize <= sys::RTE_MBUF_DEFAULT_BUF_SIZE as usize);

/// Counters of one queue's frames.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FrameCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames the stack built but that could not be sent (no mbuf, or the transmit ring full).
    pub tx_dropped: u64,
}

/// The transmit half: mbufs built and not yet handed to the NIC.
pub(crate) struct TxSide {
    port: u16,
    queue: u16,
    pool: *mut sys::rte_mempool,
    pending: [*mut sys::rte_mbuf; BURST],
    len: usize,
    pub(crate) counters: FrameCounters,
}

/// One queue pair as a smoltcp device; owns the queue (the port's `taken` flag) while it lives.
pub(crate) struct QueueDevice {
    owner: Arc<DpdkPort>,
    port: u16,
    queue: u16,
    rx: [*mut sys::rte_mbuf; BURST],
    rx_len: usize,
    rx_pos: usize,
    /// Frames the stack may still take in this pass ([`QueueDevice::set_rx_budget`]).
    rx_budget: usize,
    /// The last receive burst was full or the budget ran out: more frames may be waiting.
    pub(crate) rx_more: bool,
    scratch: Vec<u8>,
    /// Multi-segment frames received (copied into one buffer for the stack).
    pub(crate) rx_chained: u64,
    pub(crate) tx: TxSide,
}

// SAFETY: the mbuf pointers are owned by this device (received, or allocated and not yet
// sent); the pool lives as long as `owner`, which the device holds; the `taken` flag makes this
// the only device on (port, queue), used by one thread at a time, and DPDK's per-queue calls are
// safe from any single thread.
unsafe impl Send for QueueDevice {}

impl QueueDevice {
    /// The device of `queue` on `owner`, allocating from the queue's pool.
    ///
    /// # Errors
    /// `queue` is out of range, or another device owns it.
    pub(crate) fn claim(owner: &Arc<DpdkPort>, queue: u16) -> Result<QueueDevice, NetError> {
        if queue >= owner.queues {
            return Err(NetError::other(
                "dpdk queue",
                format!("queue {queue} of a port with {} queues", owner.queues),
            ));
        }
        if owner.taken[queue as usize].swap(true, Ordering::AcqRel) {
            return Err(NetError::other("dpdk queue", format!("queue {queue} is already in use")));
        }
        let port = owner.port_id;
        let pool = owner.pools[queue as usize].0;
        Ok(QueueDevice {
            owner: Arc::clone(owner),
            port,
            queue,
            rx: [std::ptr::null_mut(); BURST],
            rx_len: 0,
            rx_pos: 0,
            rx_budget: usize::MAX,
            rx_more: false,
            scratch: Vec::with_capacity(FRAME_MAX),
            rx_chained: 0,
            tx: TxSide {
                port,
                queue,
                pool,
                pending: [std::ptr::null_mut(); BURST],
                len: 0,
                counters: FrameCounters::default(),
            },
        })
    }

    /// Lets the stack take at most `n` more frames before `receive` says "nothing".
    pub(crate) fn set_rx_budget(&mut self, n: usize) {
        self.rx_budget = n;
        self.rx_more = false;
    }

    /// Hands every built frame to the NIC.
    pub(crate) fn flush(&mut self) {
        self.tx.flush();
    }
}

impl TxSide {
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: pending[..len] are valid mbufs this side owns; tx_burst takes ownership of
        // the first `sent`.
        let sent = unsafe { sys::bolide_tx_burst(self.port, self.queue, self.pending.as_mut_ptr(), self.len as u16) } as usize;
        self.counters.tx_frames += sent as u64;
        for m in &self.pending[sent..self.len] {
            // SAFETY: not taken by the NIC: still ours to free. TCP retransmits what is lost.
            unsafe { sys::bolide_pktmbuf_free(*m) };
            self.counters.tx_dropped += 1;
        }
        self.len = 0;
    }
}

impl Drop for QueueDevice {
    fn drop(&mut self) {
        self.tx.flush();
        for m in &self.rx[self.rx_pos..self.rx_len] {
            // SAFETY: received and not given to the stack: ours to free.
            unsafe { sys::bolide_pktmbuf_free(*m) };
        }
        self.owner.taken[self.queue as usize].store(false, Ordering::Release);
    }
}

/// An mbuf owned by the code holding this guard: freed when the guard drops.
struct Mbuf(*mut sys::rte_mbuf);

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: the guard owns the mbuf (received and not yet freed).
        unsafe { sys::bolide_pktmbuf_free(self.0) };
    }
}

/// A received frame (its mbuf, freed once the stack has read it or the token is dropped).
pub(crate) struct RxToken<'a> {
    m: Mbuf,
    scratch: &'a mut Vec<u8>,
    chained: &'a mut u64,
}

/// Room to build one frame.
pub(crate) struct TxToken<'a> {
    tx: &'a mut TxSide,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let RxToken { m, scratch, chained } = self;
        // SAFETY: m.0 is a valid received mbuf owned by the guard; each segment holds
        // data_len bytes at mtod; the chain ends with a NULL next.
        unsafe {
            if sys::bolide_pktmbuf_nb_segs(m.0) == 1 {
                let p = sys::bolide_pktmbuf_mtod(m.0);
                let n = sys::bolide_pktmbuf_data_len(m.0) as usize;
                f(std::slice::from_raw_parts(p, n))
            } else {
                *chained += 1;
                scratch.clear();
                let mut seg = m.0;
                while !seg.is_null() {
                    let p = sys::bolide_pktmbuf_mtod(seg);
                    let n = sys::bolide_pktmbuf_data_len(seg) as usize;
                    scratch.extend_from_slice(std::slice::from_raw_parts(p, n));
                    seg = sys::bolide_pktmbuf_next(seg);
                }
                f(scratch)
            }
        }
        // m drops here: the frame goes back to its pool after the stack read it.
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        assert!(len <= FRAME_MAX, "smoltcp built a {len}-byte frame over the MTU");
        let tx = self.tx;
        if tx.len == BURST {
            tx.flush();
        }
        // SAFETY: the pool is valid (QueueDevice::new's contract).
        let m = unsafe { sys::bolide_pktmbuf_alloc(tx.pool) };
        if m.is_null() {
            // No mbuf: build the frame into a scratch buffer and drop it (TCP retransmits).
            tx.counters.tx_dropped += 1;
            let mut buf = vec![0u8; len];
            return f(&mut buf);
        }
        // SAFETY: m is a fresh mbuf with at least FRAME_MAX bytes of tailroom (const assert).
        let p = unsafe { sys::bolide_pktmbuf_append(m, len as u16) };
        assert!(!p.is_null(), "a fresh mbuf has room for one frame");
        // SAFETY: p points at len writable bytes inside m.
        let r = f(unsafe { std::slice::from_raw_parts_mut(p, len) });
        tx.pending[tx.len] = m;
        tx.len += 1;
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.rx_budget == 0 {
            self.rx_more = true;
            return None;
        }
        if self.rx_pos == self.rx_len {
            // SAFETY: rx has room for BURST pointers; the mbufs received become ours.
            let n = unsafe { sys::bolide_rx_burst(self.port, self.queue, self.rx.as_mut_ptr(), BURST as u16) } as usize;
            self.rx_pos = 0;
            self.rx_len = n;
            if n == BURST {
                self.rx_more = true;
            }
            if n == 0 {
                return None;
            }
        }
        let m = self.rx[self.rx_pos];
        self.rx_pos += 1;
        self.rx_budget -= 1;
        self.tx.counters.rx_frames += 1;
        Some((
            RxToken {
                m: Mbuf(m),
                scratch: &mut self.scratch,
                chained: &mut self.rx_chained,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = FRAME_MAX;
        c.max_burst_size = Some(BURST);
        c
    }
}
