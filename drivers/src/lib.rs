//! Bolide's device layer.
//!
//! Everything that touches hardware sits behind a small trait here (`DESIGN.md`, "Drivers"):
//! [`BlockDevice`] is one core's queue to one block device. Backends:
//!
//! * [`uring::UringDevice`]: io_uring, `O_DIRECT`, registered buffers and files (Linux; the
//!   default on dev machines and CI).
//! * [`nvme::NvmeDevice`]: Bolide's user-space NVMe driver over VFIO, one polled queue pair per
//!   core (Linux; lab machines and the emulated-machine test).
//! * [`sim::SimDevice`]: a deterministic, seeded, in-memory device that injects crashes (torn and
//!   lost in-flight writes), read and write errors, bit flips and latency. No unsafe.
//!
//! [`conformance`] is the one behaviour suite every backend must pass.
//!
//! [`net::NetQueue`] is one core's queue to the network, with backends `epoll`, `uring` and
//! `sim` and its own suite ([`net::conformance`]).
//!
//! Buffers handed to a device are [`IoBuf`]s: 4 KiB-aligned, owned by the driver while the I/O is
//! in flight and given back in the [`Completion`].
//!
//! Unsafe code is allowed only in the modules that talk to the kernel or the hardware (`uring`,
//! `nvme::vfio`, `nvme::dma`); every other
//! module forbids it.
#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod any;
pub mod buf;
pub mod conformance;
pub mod device;
pub mod fault;
pub mod net;
#[cfg(target_os = "linux")]
pub mod nvme;
pub mod sim;
#[cfg(target_os = "linux")]
pub mod uring;

pub use buf::{BufPool, IoBuf, RegSlot, SECTOR_SIZE};
pub use device::{BlockDevice, Completion, DeviceError, DeviceInfo, IoKind, IoStatus, SubmitError};
