//! The hypervisor's heap, on memory carved out at boot.
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, start+size)` to the allocator. Call once, before any
/// allocation.
pub fn init(start: usize, size: usize) {
    // SAFETY: the caller passes RAM reserved for the heap alone, mapped
    // read-write at EL2, and calls this once.
    unsafe { HEAP.lock().init(start as *mut u8, size) };
}
