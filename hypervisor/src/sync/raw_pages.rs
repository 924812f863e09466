//! A region of hypervisor memory seen as guest pages: the image a local
//! standby applies epochs into.
use sync_core::digest::{PageMemory, PageMemoryMut};
use sync_core::page::{Page, PAGE_SIZE};

pub struct RawPages {
    base: *mut Page,
    count: u64,
}

// SAFETY: one CPU runs the hypervisor; the region belongs to this value.
unsafe impl Send for RawPages {}

impl RawPages {
    /// # Safety
    /// `base` must be page aligned and point to `count` pages that nothing
    /// else uses for as long as this value lives.
    pub unsafe fn new(base: *mut u8, count: u64) -> Self {
        RawPages { base: base as *mut Page, count }
    }

    pub fn bytes(&self) -> u64 {
        self.count * PAGE_SIZE as u64
    }
}

impl PageMemory for RawPages {
    fn page_count(&self) -> u64 {
        self.count
    }

    fn page(&self, n: u64) -> Option<&Page> {
        // SAFETY: `n < count`, inside the region `new` was given.
        (n < self.count).then(|| unsafe { &*self.base.add(n as usize) })
    }
}

impl PageMemoryMut for RawPages {
    fn page_mut(&mut self, n: u64) -> Option<&mut Page> {
        // SAFETY: as in `page`; `&mut self` makes the borrow exclusive.
        (n < self.count).then(|| unsafe { &mut *self.base.add(n as usize) })
    }
}
