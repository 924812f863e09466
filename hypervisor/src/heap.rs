//! The hypervisor's heap: a few regions of RAM carved out at boot, each a
//! `linked_list_allocator` heap. Boot starts with one small region (it must
//! allocate before it knows the guest config); sync adds one sized for the
//! shadow pages once it does.
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;

const MAX_REGIONS: usize = 4;

struct Region {
    heap: Heap,
    start: usize,
    end: usize,
}

struct Regions(spin::Mutex<heapless::Vec<Region, MAX_REGIONS>>);

#[global_allocator]
static HEAP: Regions = Regions(spin::Mutex::new(heapless::Vec::new()));

/// Adds `[start, start+size)` to the allocator. Returns false when the
/// region table is full (the memory then stays unused).
pub fn add_region(start: usize, size: usize) -> bool {
    let mut heap = Heap::empty();
    // SAFETY: the caller passes RAM reserved for the heap alone, mapped
    // read-write at EL2, and never passes the same memory twice.
    unsafe { heap.init(start as *mut u8, size) };
    HEAP.0.lock().push(Region { heap, start, end: start + size }).is_ok()
}

// SAFETY: each region is an independent heap; a block is freed to the region
// whose range holds it, which is the one that allocated it.
unsafe impl GlobalAlloc for Regions {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut regions = self.0.lock();
        for r in regions.iter_mut() {
            if let Ok(p) = r.heap.allocate_first_fit(layout) {
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
        }
    }
}
