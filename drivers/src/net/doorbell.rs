//! Doorbells: how one core wakes another that is parked in its [`super::NetQueue::poll`].
//!
//! The waking side holds the doorbell (shared: `Send + Sync`) and rings it; the parked side has
//! registered the doorbell's descriptor with its network queue ([`super::NetQueue::watch_fd`])
//! and drains it after waking. Ringing costs a system call (an eventfd write), so callers ring
//! only a core that said it is parked (the node's reactor keeps that flag beside the doorbell).

use std::os::fd::RawFd;
#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The waking side of a core's doorbell.
pub trait Doorbell: Send + Sync {
    /// Wakes the core (idempotent until it drains).
    fn ring(&self);
    /// The descriptor the parked core watches, if the doorbell has one.
    fn fd(&self) -> Option<RawFd>;
    /// Called by the owning core after it woke: clears the doorbell. Returns whether it had
    /// been rung.
    fn drain(&self) -> bool;
    /// Times [`Doorbell::ring`] was called (each one a system call for an eventfd).
    fn rings(&self) -> u64;
}

#[cfg(target_os = "linux")]
/// A doorbell on a Linux eventfd (non-blocking, semaphore off: one read clears every ring).
#[derive(Debug)]
pub struct EventFdDoorbell {
    fd: OwnedFd,
    rings: AtomicU64,
}

#[cfg(target_os = "linux")]
impl EventFdDoorbell {
    /// # Errors
    /// `eventfd(2)` failed.
    pub fn new() -> std::io::Result<EventFdDoorbell> {
        #[allow(unsafe_code)]
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that we
        // own from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFdDoorbell {
            fd,
            rings: AtomicU64::new(0),
        })
    }
}

#[cfg(target_os = "linux")]
impl Doorbell for EventFdDoorbell {
    fn ring(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        let one: u64 = 1;
        #[allow(unsafe_code)]
        // SAFETY: writes 8 bytes from a live local; the descriptor is open for our lifetime. A
        // failure (EAGAIN at the counter's maximum) means the doorbell is already rung.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn drain(&self) -> bool {
        let mut v: u64 = 0;
        #[allow(unsafe_code)]
        // SAFETY: reads 8 bytes into a live local; the descriptor is non-blocking.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8 && v > 0
    }

    fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
}

/// A doorbell for simulations: a flag, no descriptor.
#[derive(Debug, Default)]
pub struct SimDoorbell {
    rung: AtomicBool,
    rings: AtomicU64,
}

impl SimDoorbell {
    pub fn new() -> SimDoorbell {
        SimDoorbell::default()
    }
    /// Whether it has been rung since the last drain (without draining).
    pub fn is_rung(&self) -> bool {
        self.rung.load(Ordering::Acquire)
    }
}

impl Doorbell for SimDoorbell {
    fn ring(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        self.rung.store(true, Ordering::Release);
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn drain(&self) -> bool {
        self.rung.swap(false, Ordering::AcqRel)
    }
    fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn eventfd_rings_and_drains_once() {
        let d = EventFdDoorbell::new().unwrap();
        assert!(!d.drain());
        d.ring();
        d.ring();
        assert!(d.drain());
        assert!(!d.drain());
        assert_eq!(d.rings(), 2);
    }

    #[test]
    fn sim_doorbell_is_a_flag() {
        let d = SimDoorbell::new();
        d.ring();
        assert!(d.is_rung());
        assert!(d.drain());
        assert!(!d.drain());
    }
}
