//! DMA memory: anonymous mappings (2 MiB hugepages when the host has them reserved, else 4 KiB
//! pages, locked) mapped into a VFIO container at an I/O virtual address chosen by the driver.
//!
//! The device may write such memory at any time, so nothing here hands out Rust references into
//! it: every access is a raw copy or a volatile load through a checked offset.
#![allow(unsafe_code)]

use super::vfio::Container;
use crate::buf::IoBuf;
use std::io;
use std::sync::Arc;

/// 2 MiB, the x86-64 huge page.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// One DMA-able region: `len` bytes at `vaddr` in this process and at `iova` for the device.
pub struct DmaRegion {
    vaddr: *mut u8,
    len: usize,
    iova: u64,
    hugepages: bool,
    container: Arc<Container>,
}

// SAFETY: the region is plain memory owned by this value; accesses go through raw copies.
unsafe impl Send for DmaRegion {}
// SAFETY: shared access only reads or writes through raw pointers at offsets the caller owns.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Maps `len` bytes (rounded up to 4 KiB, or to 2 MiB when hugepages are used) at `iova`.
    ///
    /// # Errors
    /// `mmap` or `VFIO_IOMMU_MAP_DMA` failed (out of memory, locked-memory limit, IOVA taken).
    pub fn new(container: &Arc<Container>, len: usize, iova: u64) -> io::Result<DmaRegion> {
        let try_huge = len >= HUGE_PAGE_BYTES;
        let mut hugepages = false;
        let mut p = libc::MAP_FAILED;
        let mut map_len = len.next_multiple_of(4096);
        if try_huge {
            let hl = len.next_multiple_of(HUGE_PAGE_BYTES);
            // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
            p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    hl,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                hugepages = true;
                map_len = hl;
            }
        }
        if p == libc::MAP_FAILED {
            // SAFETY: as above, without hugepages.
            p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                    -1,
                    0,
                )
            };
        }
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let vaddr: *mut u8 = p.cast();
        // SAFETY: the mapping above is ours, stays mapped until Drop (which unmaps the IOVA first).
        if let Err(e) = unsafe { container.map_dma(vaddr as usize, iova, map_len) } {
            // SAFETY: undoing the mapping made above.
            unsafe { libc::munmap(p, map_len) };
            return Err(e);
        }
        Ok(DmaRegion {
            vaddr,
            len: map_len,
            iova,
            hugepages,
            container: container.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of byte `off`.
    pub fn iova(&self, off: usize) -> u64 {
        assert!(off < self.len);
        self.iova + off as u64
    }

    /// True when backed by 2 MiB hugepages.
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|e| e <= self.len),
            "DMA access [{off}, +{n}) outside a {}-byte region",
            self.len
        );
    }

    /// Copies `src` into the region at `off`.
    pub fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: bounds checked; `src` is ordinary memory that cannot overlap the DMA region's
        // raw view (it is a Rust slice, never formed over this region).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.vaddr.add(off), src.len()) }
    }

    /// Copies `dst.len()` bytes at `off` out of the region.
    pub fn read(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        // SAFETY: bounds checked; see `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.vaddr.add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// A volatile 32-bit load at `off` (4-aligned), for words the device writes (CQ entries).
    pub fn read32_volatile(&self, off: usize) -> u32 {
        self.check(off, 4);
        assert!(off.is_multiple_of(4));
        // SAFETY: bounds and alignment checked (the region is page-aligned).
        unsafe { self.vaddr.add(off).cast::<u32>().read_volatile() }
    }

    /// Little-endian 64-bit store at `off` (8-aligned), for PRP list entries.
    pub fn write64(&self, off: usize, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    /// Zeroes `[off, off + n)`.
    pub fn zero(&self, off: usize, n: usize) {
        self.check(off, n);
        // SAFETY: bounds checked.
        unsafe { std::ptr::write_bytes(self.vaddr.add(off), 0, n) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // The device must not reach the memory after it is freed: unmap the IOVA first. If that
        // fails the pages stay pinned by the container, so freeing the mapping is still safe.
        let _ = self.container.unmap_dma(self.iova, self.len);
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.vaddr.cast(), self.len) };
    }
}

/// An [`IoBuf`] mapped into a container for the duration of one I/O: the mapping owns the
/// buffer, so its memory cannot be freed or touched while the device may reach it, and the IOVA is
/// unmapped before the buffer is given back.
pub struct MappedBuf {
    buf: Option<IoBuf>,
    iova: u64,
    len: usize,
    container: Arc<Container>,
}

impl MappedBuf {
    /// Maps the first `buf.len()` bytes of `buf` at `iova`.
    ///
    /// # Errors
    /// `VFIO_IOMMU_MAP_DMA` failed; the buffer comes back.
    pub fn map(container: &Arc<Container>, mut buf: IoBuf, iova: u64) -> Result<MappedBuf, (IoBuf, io::Error)> {
        let len = buf.len();
        let vaddr = buf.as_mut_ptr() as usize;
        // SAFETY: the buffer's heap memory (page-aligned, a whole number of pages) is owned by the
        // returned MappedBuf and is not freed or accessed until Drop/into_buf unmap the IOVA.
        match unsafe { container.map_dma(vaddr, iova, len) } {
            Ok(()) => Ok(MappedBuf {
                buf: Some(buf),
                iova,
                len,
                container: container.clone(),
            }),
            Err(e) => Err((buf, e)),
        }
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Unmaps the IOVA and gives the buffer back.
    ///
    /// # Errors
    /// The unmap failed: the buffer is then leaked (the device might still reach it).
    pub fn into_buf(mut self) -> Result<IoBuf, io::Error> {
        self.container.unmap_dma(self.iova, self.len)?;
        Ok(self.buf.take().expect("buffer present until into_buf"))
    }
}

impl Drop for MappedBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            if self.container.unmap_dma(self.iova, self.len).is_err() {
                // Never free memory the device may still write.
                std::mem::forget(buf);
            }
        }
    }
}

/// Maps every buffer of `pool` (its full capacity) at consecutive IOVAs from `iova_base`, each
/// on a 2 MiB-aligned step of `stride` bytes; returns the IOVA of each buffer by slot index. The
/// mappings last until the container is closed.
///
/// # Errors
/// A `VFIO_IOMMU_MAP_DMA` failed; the ones made before it are undone.
pub fn map_pool(container: &Container, pool: &crate::BufPool, iova_base: u64, stride: u64) -> io::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(pool.count());
    for (i, &(vaddr, len)) in pool.regions().iter().enumerate() {
        let iova = iova_base + i as u64 * stride;
        // SAFETY: the region is one of the pool's heap buffers in this process. The device only
        // reaches it through an I/O whose buffer the driver owns (submit to completion), and the
        // controller is disabled before buffers of an unfinished I/O are given back, so a freed
        // pool is never written by the device; its pages stay pinned by the container anyway.
        if let Err(e) = unsafe { container.map_dma(vaddr, iova, len) } {
            for (j, &done) in out.iter().enumerate() {
                let _ = container.unmap_dma(done, pool.regions()[j].1);
            }
            return Err(e);
        }
        out.push(iova);
    }
    Ok(out)
}
