//! Fault injection around any backend: a device that dies on command.
//!
//! [`Faulty`] wraps a [`BlockDevice`] and passes every call through until its [`FaultSwitch`] is
//! tripped (from any thread). From then on it behaves as a dead device: every submit is refused
//! with [`SubmitError::Failed`], and every I/O still in flight completes with
//! [`IoStatus::Failed`] (a read returns no data; a write may or may not have reached the inner
//! device, as with a real device that drops off the bus mid-write). It is how the replication
//! tests fail one device of a running node (the `fail-device` info command, enabled by the
//! `fault_injection` config key) on io_uring files and on the simulator alike.
//!
//! Cost when not tripped: one relaxed atomic load per call.

use crate::buf::{BufPool, IoBuf};
use crate::device::{BlockDevice, Completion, DeviceError, DeviceInfo, IoKind, IoStatus, SubmitError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Trips a [`Faulty`] device; clone it to keep a handle outside the device's thread.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    pub fn new() -> FaultSwitch {
        FaultSwitch::default()
    }

    /// Fails the device: later submits are refused, in-flight I/Os complete with an error.
    pub fn trip(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A device that fails every I/O once its switch is tripped. See the module docs.
pub struct Faulty<D: BlockDevice> {
    inner: D,
    switch: FaultSwitch,
}

impl<D: BlockDevice> Faulty<D> {
    pub fn new(inner: D, switch: FaultSwitch) -> Faulty<D> {
        Faulty { inner, switch }
    }

    pub fn switch(&self) -> &FaultSwitch {
        &self.switch
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    fn dead(&self, op: IoKind, offset: u64, len: usize) -> DeviceError {
        DeviceError {
            op,
            device: self.inner.info().name.clone(),
            offset,
            len,
            status: IoStatus::Failed,
        }
    }
}

impl<D: BlockDevice> BlockDevice for Faulty<D> {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }

    fn register_buffers(&mut self, pool: &BufPool) -> Result<(), DeviceError> {
        self.inner.register_buffers(pool)
    }

    fn submit_read(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        if self.switch.is_tripped() {
            let e = self.dead(IoKind::Read, offset, buf.len());
            return Err(SubmitError::Failed(e, Some(buf)));
        }
        self.inner.submit_read(offset, buf, tag)
    }

    fn submit_write(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        if self.switch.is_tripped() {
            let e = self.dead(IoKind::Write, offset, buf.len());
            return Err(SubmitError::Failed(e, Some(buf)));
        }
        self.inner.submit_write(offset, buf, tag)
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError> {
        if self.switch.is_tripped() {
            return Err(SubmitError::Failed(self.dead(IoKind::Flush, 0, 0), None));
        }
        self.inner.submit_flush(tag)
    }

    fn submit(&mut self) -> Result<usize, DeviceError> {
        self.inner.submit()
    }

    /// Reaps the inner device; once tripped, every completion is turned into a failure.
    fn reap(&mut self, out: &mut Vec<Completion>, min_complete: usize) -> Result<usize, DeviceError> {
        let start = out.len();
        let n = self.inner.reap(out, min_complete)?;
        if self.switch.is_tripped() {
            for c in &mut out[start..] {
                if c.result.is_ok() {
                    let len = c.buf.as_ref().map_or(0, IoBuf::len);
                    c.result = Err(self.dead(c.kind, c.offset, len));
                }
            }
        }
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.completion_fd()
    }
    fn set_completion_signals(&mut self, on: bool) {
        self.inner.set_completion_signals(on);
    }
    fn has_completions(&mut self) -> bool {
        self.inner.has_completions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, SimDevice};
    use crate::SECTOR_SIZE;

    #[test]
    fn passes_through_until_tripped_then_fails_everything() {
        let sw = FaultSwitch::new();
        let mut d = Faulty::new(SimDevice::new(SimConfig::new("f0", 1 << 20, 1)), sw.clone());
        let mut b = IoBuf::new(SECTOR_SIZE);
        b.as_mut_slice().fill(7);
        d.submit_write(0, b, 1).expect("healthy write");
        d.submit().expect("submit");
        let mut out = Vec::new();
        d.reap(&mut out, 1).expect("reap");
        assert!(out[0].result.is_ok());

        // One read in flight when the switch trips: it completes with an error.
        d.submit_read(0, IoBuf::new(SECTOR_SIZE), 2).expect("read");
        d.submit().expect("submit");
        sw.trip();
        out.clear();
        d.reap(&mut out, 1).expect("reap");
        let e = out[0].result.as_ref().expect_err("in-flight read fails");
        assert_eq!(e.status, IoStatus::Failed);
        assert_eq!(e.op, IoKind::Read);

        // Later submits are refused and give the buffer back.
        let err = d.submit_write(0, IoBuf::new(SECTOR_SIZE), 3).expect_err("refused");
        assert!(matches!(err, SubmitError::Failed(_, Some(_))));
        assert!(matches!(d.submit_flush(4), Err(SubmitError::Failed(_, None))));
    }
}
