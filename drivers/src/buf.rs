//! Aligned I/O buffers and per-core buffer pools.
//!
//! An [`IoBuf`] is a heap buffer whose start is aligned to [`SECTOR_SIZE`] (4 KiB) and whose
//! capacity is a whole number of sectors, as `O_DIRECT` and NVMe PRP lists require. Its *length*
//! (the bytes an I/O transfers) is also a whole number of sectors, at most the capacity.
//!
//! A [`BufPool`] makes a fixed number of equal buffers at start-up and tags each with a
//! [`RegSlot`] so a backend that registered the pool (io_uring fixed buffers) can use the
//! registered fast path. Buffers move by value: submit gives one to the driver, the completion
//! gives it back (the "rent" model of glommio/monoio, `STYLE.md` habit 4).

use bytemuck::{Pod, Zeroable};
use std::sync::atomic::{AtomicU32, Ordering};

/// Alignment and granularity of every device I/O, in bytes.
pub const SECTOR_SIZE: usize = 4096;

/// One sector of memory; `Vec<Sector>` is therefore 4 KiB-aligned without any unsafe code.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(4096))]
struct Sector([u8; SECTOR_SIZE]);

const _: () = assert!(std::mem::size_of::<Sector>() == SECTOR_SIZE);
const _: () = assert!(std::mem::align_of::<Sector>() == SECTOR_SIZE);

/// Identifies a buffer made by a [`BufPool`]: the pool's process-unique id and the buffer's index
/// in it (the io_uring fixed-buffer index when the pool is registered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegSlot {
    pub pool_id: u32,
    pub index: u16,
}

/// A 4 KiB-aligned buffer of `capacity()` bytes (a multiple of [`SECTOR_SIZE`]) with a current
/// transfer length `len()` (also a multiple of [`SECTOR_SIZE`], at most the capacity).
pub struct IoBuf {
    sectors: Vec<Sector>,
    len: usize,
    reg: Option<RegSlot>,
}

impl IoBuf {
    /// A zeroed buffer of `len` bytes (capacity = len).
    ///
    /// # Panics
    /// If `len` is zero or not a multiple of [`SECTOR_SIZE`] (a programmer error).
    pub fn new(len: usize) -> IoBuf {
        assert!(
            len > 0 && len.is_multiple_of(SECTOR_SIZE),
            "IoBuf length {len} is not a positive multiple of {SECTOR_SIZE}"
        );
        IoBuf {
            sectors: vec![Sector([0; SECTOR_SIZE]); len / SECTOR_SIZE],
            len,
            reg: None,
        }
    }

    /// Bytes the next I/O transfers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer holds at least one sector.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory behind the buffer.
    pub fn capacity(&self) -> usize {
        self.sectors.len() * SECTOR_SIZE
    }

    /// Sets the transfer length.
    ///
    /// # Panics
    /// If `len` is zero, not a multiple of [`SECTOR_SIZE`], or over the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len > 0 && len.is_multiple_of(SECTOR_SIZE) && len <= self.capacity(),
            "bad IoBuf length {len} (capacity {})",
            self.capacity()
        );
        self.len = len;
    }

    /// The first `len()` bytes.
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.sectors)[..self.len]
    }

    /// The first `len()` bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut bytemuck::cast_slice_mut(&mut self.sectors)[..len]
    }

    /// Start of the memory, for drivers that hand the address to the kernel or a device.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        bytemuck::cast_slice_mut::<Sector, u8>(&mut self.sectors).as_mut_ptr()
    }

    /// The pool slot this buffer came from, if any.
    pub fn reg_slot(&self) -> Option<RegSlot> {
        self.reg
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("reg", &self.reg)
            .finish()
    }
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// A fixed set of `count` equal buffers of `buf_len` bytes, made once at start-up.
///
/// `take` hands a buffer out (its length reset to the full capacity); `put` returns it. The pool
/// never grows: when it is empty the caller waits for a completion to give a buffer back.
pub struct BufPool {
    id: u32,
    buf_len: usize,
    count: usize,
    regions: Vec<(usize, usize)>,
    free: Vec<IoBuf>,
}

impl BufPool {
    /// # Panics
    /// If `count` is 0 or over `u16::MAX`, or `buf_len` is not a positive multiple of
    /// [`SECTOR_SIZE`].
    pub fn new(count: usize, buf_len: usize) -> BufPool {
        assert!(
            count > 0 && count <= u16::MAX as usize,
            "pool count {count} out of range"
        );
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let mut free = Vec::with_capacity(count);
        let mut regions = Vec::with_capacity(count);
        for index in 0..count {
            let mut buf = IoBuf::new(buf_len);
            buf.reg = Some(RegSlot {
                pool_id: id,
                index: index as u16,
            });
            regions.push((buf.as_mut_ptr() as usize, buf_len));
            free.push(buf);
        }
        // Hand out low indexes first.
        free.reverse();
        BufPool {
            id,
            buf_len,
            count,
            regions,
            free,
        }
    }

    /// Process-unique id carried in every buffer's [`RegSlot`].
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Capacity of each buffer, bytes.
    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// Buffers made by the pool.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Buffers currently in the pool.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// `(address, length)` of every buffer, by slot index, for registration with a device. The
    /// addresses stay valid for as long as the buffers live (moving an `IoBuf` does not move its
    /// memory).
    pub fn regions(&self) -> &[(usize, usize)] {
        &self.regions
    }

    /// A buffer with `len() == buf_len()`, or `None` when all are out.
    pub fn take(&mut self) -> Option<IoBuf> {
        let mut buf = self.free.pop()?;
        buf.len = self.buf_len;
        Some(buf)
    }

    /// Returns a buffer to the pool.
    ///
    /// # Panics
    /// If the buffer was not made by this pool.
    pub fn put(&mut self, buf: IoBuf) {
        assert!(
            buf.reg.map(|r| r.pool_id) == Some(self.id),
            "buffer returned to the wrong pool"
        );
        assert!(self.free.len() < self.count);
        self.free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_sector_aligned() {
        let mut b = IoBuf::new(3 * SECTOR_SIZE);
        assert_eq!(b.as_mut_ptr() as usize % SECTOR_SIZE, 0);
        assert_eq!(b.len(), 3 * SECTOR_SIZE);
        b.set_len(SECTOR_SIZE);
        assert_eq!(b.as_slice().len(), SECTOR_SIZE);
    }

    #[test]
    #[should_panic]
    fn unaligned_length_panics() {
        let _ = IoBuf::new(100);
    }

    #[test]
    fn pool_hands_out_and_takes_back() {
        let mut p = BufPool::new(2, 2 * SECTOR_SIZE);
        let a = p.take().unwrap();
        let b = p.take().unwrap();
        assert!(p.take().is_none());
        assert_eq!(a.reg_slot().unwrap().index, 0);
        assert_eq!(b.reg_slot().unwrap().index, 1);
        assert_eq!(p.regions()[1].0 % SECTOR_SIZE, 0);
        p.put(a);
        p.put(b);
        assert_eq!(p.available(), 2);
    }

    #[test]
    #[should_panic]
    fn foreign_buffer_is_refused() {
        let mut p = BufPool::new(1, SECTOR_SIZE);
        p.put(IoBuf::new(SECTOR_SIZE));
    }
}
