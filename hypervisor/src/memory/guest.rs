//! Guest RAM as the hypervisor sees it: a contiguous range of guest-physical
//! addresses backed by host memory somewhere else. Every write the
//! hypervisor makes into the guest goes through here, so dirty tracking
//! sees it.
use sync_core::digest::PageMemory;
use sync_core::dirty::{DirtyError, DirtySet, DirtyTracker};
use sync_core::page::{Page, PAGE_SIZE};

use crate::vplatform::virtio::{DmaError, GuestDma};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemError {
    /// The range is not inside guest RAM.
    OutOfRange { ipa: u64, len: u64 },
}

pub struct GuestMemory {
    ipa_base: u64,
    size: u64,
    host: *mut u8,
    /// Pages written since the last epoch cut, once tracking is on.
    dirty: Option<DirtyTracker>,
}

// SAFETY: the hypervisor runs on one CPU; the pointer is to memory owned by
// this structure for the life of the VM.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// # Safety
    /// `host` must point to `size` bytes that nothing else uses, mapped
    /// writable for the hypervisor, for as long as this value lives.
    pub unsafe fn new(ipa_base: u64, size: u64, host: *mut u8) -> Self {
        GuestMemory { ipa_base, size, host, dirty: None }
    }

    /// From now on every write through this API (and every guest write the
    /// fault handler reports with `mark_dirty`) lands in a dirty set.
    pub fn start_tracking(&mut self) -> Result<(), DirtyError> {
        self.dirty = Some(DirtyTracker::new(self.ipa_base, self.size / PAGE_SIZE as u64)?);
        Ok(())
    }

    pub fn tracking(&self) -> bool {
        self.dirty.is_some()
    }

    /// Marks the page holding `ipa` written; true if it is new this epoch.
    pub fn mark_dirty(&mut self, ipa: u64) -> bool {
        match &mut self.dirty {
            Some(d) => d.mark_gpa(ipa).unwrap_or(false),
            None => false,
        }
    }

    fn mark_range(&mut self, ipa: u64, len: u64) {
        if let Some(d) = &mut self.dirty {
            d.current().mark_range(ipa, len);
        }
    }

    /// Ends the epoch: the pages written in it, as page numbers from the
    /// start of guest RAM. Marking continues into a fresh set.
    pub fn cut(&mut self) -> Option<&mut DirtySet> {
        self.dirty.as_mut().map(|d| d.cut())
    }

    /// Whether `page` (from the start of guest RAM) was written in the
    /// open epoch.
    pub fn is_dirty_now(&self, page: u64) -> bool {
        self.dirty.as_ref().is_some_and(|d| d.is_marked(page))
    }

    /// Pages written in the open epoch so far.
    pub fn dirty_now(&mut self) -> u64 {
        self.dirty.as_mut().map(|d| d.current().len() as u64).unwrap_or(0)
    }

    pub fn ipa_base(&self) -> u64 {
        self.ipa_base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }

    fn offset(&self, ipa: u64, len: u64) -> Result<usize, GuestMemError> {
        let err = GuestMemError::OutOfRange { ipa, len };
        let off = ipa.checked_sub(self.ipa_base).ok_or(err)?;
        if off.checked_add(len).ok_or(err)? > self.size {
            return Err(err);
        }
        Ok(off as usize)
    }

    pub fn write(&mut self, ipa: u64, bytes: &[u8]) -> Result<(), GuestMemError> {
        let off = self.offset(ipa, bytes.len() as u64)?;
        self.mark_range(ipa, bytes.len() as u64);
        // SAFETY: `offset` proved the range lies inside the backing memory
        // that `new`'s contract gives us exclusively.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.host.add(off), bytes.len()) };
        Ok(())
    }

    pub fn fill(&mut self, ipa: u64, len: u64, byte: u8) -> Result<(), GuestMemError> {
        let off = self.offset(ipa, len)?;
        self.mark_range(ipa, len);
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(self.host.add(off), byte, len as usize) };
        Ok(())
    }

    pub fn read(&self, ipa: u64, out: &mut [u8]) -> Result<(), GuestMemError> {
        let off = self.offset(ipa, out.len() as u64)?;
        // SAFETY: as in `write`.
        unsafe { core::ptr::copy_nonoverlapping(self.host.add(off), out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

impl PageMemory for GuestMemory {
    fn page_count(&self) -> u64 {
        self.size / PAGE_SIZE as u64
    }

    fn page(&self, n: u64) -> Option<&Page> {
        if n >= self.page_count() {
            return None;
        }
        // SAFETY: page `n` lies inside the backing memory (checked above),
        // which is page aligned; the shared borrow of `self` keeps the
        // hypervisor's own writers (which need `&mut self`) away meanwhile.
        Some(unsafe { &*(self.host.add(n as usize * PAGE_SIZE) as *const Page) })
    }
}

/// What the virtual devices reach: writes go through `write`, so dirty
/// tracking sees what a device put into guest RAM.
impl GuestDma for GuestMemory {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), DmaError> {
        GuestMemory::read(self, gpa, out).map_err(dma_error)
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), DmaError> {
        GuestMemory::write(self, gpa, bytes).map_err(dma_error)
    }
}

fn dma_error(e: GuestMemError) -> DmaError {
    let GuestMemError::OutOfRange { ipa, len } = e;
    DmaError { gpa: ipa, len }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn writes_land_at_the_offset_and_bounds_hold() {
        let mut backing = vec![0u8; 8192];
        // SAFETY: the vector outlives `m` and nothing else touches it meanwhile.
        let mut m = unsafe { GuestMemory::new(0x4000_0000, 8192, backing.as_mut_ptr()) };
        m.write(0x4000_1000, b"abc").unwrap();
        let mut out = [0u8; 3];
        m.read(0x4000_1000, &mut out).unwrap();
        assert_eq!(&out, b"abc");
        assert!(m.write(0x4000_1fff, b"a").is_ok());
        assert!(m.write(0x4000_1fff, b"ab").is_err());
        assert_eq!(m.write(0x4000_2000, b"a"), Err(GuestMemError::OutOfRange { ipa: 0x4000_2000, len: 1 }));
        assert!(m.write(0x3fff_ffff, b"a").is_err());
        assert!(m.read(u64::MAX, &mut out).is_err());
        drop(m);
        assert_eq!(&backing[0x1000..0x1003], b"abc");
    }

    #[test]
    fn hypervisor_writes_are_marked_dirty() {
        let mut backing = vec![0u8; 4 * 4096];
        // SAFETY: the vector outlives `m` and nothing else touches it meanwhile.
        let mut m = unsafe { GuestMemory::new(0x4000_0000, 4 * 4096, backing.as_mut_ptr()) };
        m.write(0x4000_0000, b"before tracking").unwrap();
        m.start_tracking().unwrap();
        m.write(0x4000_1ffe, b"xyz").unwrap(); // straddles pages 1 and 2
        m.fill(0x4000_3000, 1, 7).unwrap();
        assert!(!m.mark_dirty(0x4000_1000)); // already dirty
        assert!(m.mark_dirty(0x4000_0010)); // a guest write, reported by the fault handler
        let mut pages: std::vec::Vec<u64> = m.cut().unwrap().iter().collect();
        pages.sort();
        assert_eq!(pages, [0, 1, 2, 3]);
        assert_eq!(m.dirty_now(), 0);
        assert_eq!(m.page(1).unwrap()[0xffe], b'x');
        assert!(m.page(4).is_none());
    }

    #[test]
    fn device_writes_are_tracked_and_bounded() {
        let mut backing = vec![0u8; 2 * 4096];
        // SAFETY: the vector outlives `m` and nothing else touches it meanwhile.
        let mut m = unsafe { GuestMemory::new(0x4000_0000, 2 * 4096, backing.as_mut_ptr()) };
        m.start_tracking().unwrap();
        let dma: &mut dyn GuestDma = &mut m;
        dma.write(0x4000_1004, b"dev").unwrap();
        let mut out = [0u8; 3];
        dma.read(0x4000_1004, &mut out).unwrap();
        assert_eq!(&out, b"dev");
        assert_eq!(dma.write(0x4000_1fff, b"ab"), Err(DmaError { gpa: 0x4000_1fff, len: 2 }));
        assert_eq!(dma.read(0x3fff_fff0, &mut out), Err(DmaError { gpa: 0x3fff_fff0, len: 3 }));
        assert!(m.is_dirty_now(1));
        assert!(!m.is_dirty_now(0));
    }
}
