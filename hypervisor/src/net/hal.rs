//! `virtio_drivers::Hal` for the hypervisor: DMA pages from a pool carved at
//! boot, and address translation that is the identity (EL2 maps RAM and the
//! device window 1:1, so a physical address is its own virtual address).
//!
//! Coherence: virtio devices in QEMU write guest memory through the same
//! memory system the CPU caches sit in (the device model is part of the
//! host, the "DMA" is a memcpy), so the rings and buffers need no cache
//! maintenance, and `share`/`unshare` only translate. A real non-coherent
//! DMA master would need, besides these two hooks, the rings mapped
//! non-cacheable (the driver and device touch them concurrently at a finer
//! grain than a cache line): with EL2's 1 GiB-block map that means a
//! separate non-cacheable window for the pool. The hooks would then do
//! `dc cvac` over DriverToDevice buffers in `share` (push our writes out),
//! `dc civac` over DeviceToDriver buffers in `share` (no dirty line may be
//! evicted over what the device writes) and `dc ivac` over them again in
//! `unshare` (drop lines fetched speculatively meanwhile), each range
//! followed by `dsb sy`. Virtio-mmio devices are provided by emulators and
//! hypervisors, which are coherent; a physical board's NIC gets its own
//! driver with its own DMA rules, so that code is not written here, where
//! no test could run it.
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Pages the pool tracks at most (1 MiB of 4 KiB pages).
pub const MAX_POOL_PAGES: usize = 256;

/// A first-fit allocator of contiguous page runs over one range of pages:
/// plain bookkeeping, no memory access (so it tests on the host).
#[derive(Debug, Clone)]
pub struct PagePool {
    base: u64,
    pages: usize,
    used: [u64; MAX_POOL_PAGES / 64],
}

impl PagePool {
    /// A pool over `pages` pages at `base` (page aligned); pages beyond
    /// `MAX_POOL_PAGES` are left unused.
    pub const fn new(base: u64, pages: usize) -> Self {
        let pages = if pages < MAX_POOL_PAGES { pages } else { MAX_POOL_PAGES };
        PagePool { base, pages, used: [0; MAX_POOL_PAGES / 64] }
    }

    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, used: bool) {
        if used {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }

    /// The address of `n` free contiguous pages, now taken; None when no
    /// such run is left (or `n` is 0).
    pub fn alloc(&mut self, n: usize) -> Option<u64> {
        if n == 0 || n > self.pages {
            return None;
        }
        let mut start = 0;
        while start + n <= self.pages {
            match (start..start + n).find(|&i| self.is_used(i)) {
                Some(busy) => start = busy + 1,
                None => {
                    (start..start + n).for_each(|i| self.set(i, true));
                    return Some(self.base + (start * PAGE_SIZE) as u64);
                }
            }
        }
        None
    }

    /// Returns `n` pages at `addr`; false (and nothing changes) if they are
    /// not all allocated pages of this pool.
    pub fn free(&mut self, addr: u64, n: usize) -> bool {
        let Some(off) = addr.checked_sub(self.base) else { return false };
        if off % PAGE_SIZE as u64 != 0 {
            return false;
        }
        let start = (off / PAGE_SIZE as u64) as usize;
        if n == 0 || start.checked_add(n).is_none_or(|end| end > self.pages) || !(start..start + n).all(|i| self.is_used(i)) {
            return false;
        }
        (start..start + n).for_each(|i| self.set(i, false));
        true
    }

    pub fn free_pages(&self) -> usize {
        (0..self.pages).filter(|&i| !self.is_used(i)).count()
    }
}

/// The DMA pool, set once at boot before the NIC is opened. Global because
/// `virtio-drivers` calls its HAL as free functions (no `self`), and there
/// is one pool per machine.
static POOL: spin::Mutex<Option<PagePool>> = spin::Mutex::new(None);

/// Hands `[base, base + size)` to the DMA pool.
///
/// # Safety
/// The range is RAM reserved for DMA alone, page aligned, identity-mapped
/// read-write (Normal memory) at EL2, and this is called at most once.
pub unsafe fn init_pool(base: u64, size: u64) {
    *POOL.lock() = Some(PagePool::new(base, (size / PAGE_SIZE as u64) as usize));
}

/// Identity translation of a buffer the driver hands to the device.
fn phys_of(buffer: NonNull<[u8]>) -> PhysAddr {
    buffer.as_ptr() as *mut u8 as u64
}

/// The hypervisor's `Hal`: DMA pages from the pool, identity addresses.
pub struct DmaHal;

// SAFETY: `dma_alloc` returns page-aligned, zeroed pages that the pool hands
// out to one caller at a time (or address 0, which virtio-drivers treats as
// failure); every address it and `share` return is the identity of memory
// the EL2 map covers, which is what the device sees (no IOMMU).
unsafe impl Hal for DmaHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let got = POOL.lock().as_mut().and_then(|p| p.alloc(pages));
        match got.and_then(|a| NonNull::new(a as *mut u8).map(|p| (a, p))) {
            Some((paddr, ptr)) => {
                // SAFETY: the pool owns these pages (`init_pool`'s contract)
                // and just gave them to this caller alone.
                unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, pages * PAGE_SIZE) };
                (paddr, ptr)
            }
            None => {
                log::warn!("net: DMA pool exhausted ({pages} pages asked)");
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let ok = POOL.lock().as_mut().is_some_and(|p| p.free(paddr, pages));
        if ok {
            0
        } else {
            -1
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // Only the PCI transport asks (for BARs); the device window is
        // identity-mapped, and a zero address cannot name a BAR.
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        // Coherent device (see the module comment): nothing to flush.
        phys_of(buffer)
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Coherent device: the CPU already sees what the device wrote.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    #[test]
    fn first_fit_runs_and_frees() {
        let mut p = PagePool::new(0x10_0000, 8);
        assert_eq!(p.alloc(2), Some(0x10_0000));
        assert_eq!(p.alloc(1), Some(0x10_0000 + 2 * P));
        assert_eq!(p.alloc(4), Some(0x10_0000 + 3 * P));
        assert_eq!(p.free_pages(), 1);
        assert_eq!(p.alloc(2), None);
        assert!(p.free(0x10_0000, 2));
        assert_eq!(p.alloc(2), Some(0x10_0000), "freed run is reused");
        assert_eq!(p.alloc(0), None);
    }

    #[test]
    fn skips_busy_pages_inside_a_candidate_run() {
        let mut p = PagePool::new(0, 6);
        let a = p.alloc(1).unwrap();
        let b = p.alloc(1).unwrap();
        let _c = p.alloc(1).unwrap();
        assert!(p.free(a, 1));
        // Page 0 is free but too short for 3; the run starts at page 3.
        assert_eq!(p.alloc(3), Some(3 * P));
        assert!(p.free(b, 1));
        assert_eq!(p.alloc(2), Some(0));
    }

    #[test]
    fn rejects_foreign_or_double_frees() {
        let mut p = PagePool::new(0x4000, 4);
        let a = p.alloc(2).unwrap();
        assert!(!p.free(a + 1, 1), "unaligned");
        assert!(!p.free(0x1000, 1), "below the pool");
        assert!(!p.free(a, 3), "runs past what was allocated");
        assert!(!p.free(a + 4 * P, 1), "beyond the pool");
        assert!(p.free(a, 2));
        assert!(!p.free(a, 2), "double free");
        assert_eq!(p.free_pages(), 4);
    }

    #[test]
    fn caps_at_the_bitmap() {
        let mut p = PagePool::new(0, 10_000);
        assert_eq!(p.free_pages(), MAX_POOL_PAGES);
        assert_eq!(p.alloc(MAX_POOL_PAGES), Some(0));
        assert_eq!(p.alloc(1), None);
    }
}
