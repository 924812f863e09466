//! The hypervisor's heap: a few regions of RAM carved out at boot, each a
//! `linked_list_allocator` heap. Boot starts with one small region (it must
//! allocate before it knows the guest config); sync adds one sized for the
//! shadow pages once it does. It counts the bytes in use and their
//! high-water mark (`usage`) for the power-off log and the memory figures.
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use linked_list_allocator::Heap;

const MAX_REGIONS: usize = 4;

struct Region {
    heap: Heap,
    start: usize,
    end: usize,
}

struct Regions(spin::Mutex<heapless::Vec<Region, MAX_REGIONS>>);

/// Global because the allocator is: one heap per machine.
#[global_allocator]
static HEAP: Regions = Regions(spin::Mutex::new(heapless::Vec::new()));

/// Bytes asked for and not freed yet, their most, and the regions' size
/// (updated under the regions' lock; atomics only to be statics).
static USED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static SIZE: AtomicUsize = AtomicUsize::new(0);

/// Heap bytes in use now, at most so far, and in all regions.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub used: usize,
    pub peak: usize,
    pub size: usize,
}

pub fn usage() -> Usage {
    Usage { used: USED.load(Ordering::Relaxed), peak: PEAK.load(Ordering::Relaxed), size: SIZE.load(Ordering::Relaxed) }
}

impl core::fmt::Display for Usage {
    /// The power-off line (after `vmsync: `), parsed by the host.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "heap used_bytes={} peak_bytes={} size_bytes={}", self.used, self.peak, self.size)
    }
}

/// Adds `[start, start+size)` to the allocator. Returns false when the
/// region table is full (the memory then stays unused).
pub fn add_region(start: usize, size: usize) -> bool {
    let mut heap = Heap::empty();
    // SAFETY: the caller passes RAM reserved for the heap alone, mapped
    // read-write at EL2, and never passes the same memory twice.
    unsafe { heap.init(start as *mut u8, size) };
    let added = HEAP.0.lock().push(Region { heap, start, end: start + size }).is_ok();
    if added {
        SIZE.fetch_add(size, Ordering::Relaxed);
    }
    added
}

// SAFETY: each region is an independent heap; a block is freed to the region
// whose range holds it, which is the one that allocated it.
unsafe impl GlobalAlloc for Regions {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut regions = self.0.lock();
        for r in regions.iter_mut() {
            if let Ok(p) = r.heap.allocate_first_fit(layout) {
                let used = USED.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(used, Ordering::Relaxed);
                return p.as_ptr();
            }
        }
        for r in regions.iter() {
            log::error!("heap region {:#x}..{:#x}: {} used, {} free; asked {:?}", r.start, r.end, r.heap.used(), r.heap.free(), layout);
        }
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut regions = self.0.lock();
        let a = ptr as usize;
        if let (Some(r), Some(p)) = (regions.iter_mut().find(|r| r.start <= a && a < r.end), NonNull::new(ptr)) {
            // SAFETY: `ptr` came from this region's heap with this layout
            // (GlobalAlloc's contract), found by its address range.
            unsafe { r.heap.deallocate(p, layout) };
            USED.fetch_sub(layout.size(), Ordering::Relaxed);
        }
    }
}
