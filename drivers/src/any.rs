//! [`AnyDevice`]: the block-device backend chosen at start-up (from a hardware profile's
//! `[[device]] driver`), as one concrete type the node's composition root can name.

use crate::buf::{BufPool, IoBuf};
use crate::device::{BlockDevice, Completion, DeviceError, DeviceInfo, SubmitError};

/// One of the real backends.
pub enum AnyDevice {
    /// io_uring over a file or block device.
    Uring(crate::uring::UringDevice),
    /// The user-space NVMe driver over VFIO.
    Nvme(crate::nvme::NvmeDevice),
}

macro_rules! each {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDevice::Uring($d) => $e,
            AnyDevice::Nvme($d) => $e,
        }
    };
}

impl BlockDevice for AnyDevice {
    fn info(&self) -> &DeviceInfo {
        each!(self, d => d.info())
    }
    fn register_buffers(&mut self, pool: &BufPool) -> Result<(), DeviceError> {
        each!(self, d => d.register_buffers(pool))
    }
    fn submit_read(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        each!(self, d => d.submit_read(offset, buf, tag))
    }
    fn submit_write(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        each!(self, d => d.submit_write(offset, buf, tag))
    }
    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError> {
        each!(self, d => d.submit_flush(tag))
    }
    fn submit(&mut self) -> Result<usize, DeviceError> {
        each!(self, d => d.submit())
    }
    fn reap(&mut self, out: &mut Vec<Completion>, min_complete: usize) -> Result<usize, DeviceError> {
        each!(self, d => d.reap(out, min_complete))
    }
    fn in_flight(&self) -> usize {
        each!(self, d => d.in_flight())
    }
    fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        each!(self, d => d.completion_fd())
    }
    fn set_completion_signals(&mut self, on: bool) {
        each!(self, d => d.set_completion_signals(on))
    }
    fn has_completions(&mut self) -> bool {
        each!(self, d => d.has_completions())
    }
}
