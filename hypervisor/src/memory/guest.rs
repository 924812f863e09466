//! Guest RAM as the hypervisor sees it: a contiguous range of guest-physical
//! addresses backed by host memory somewhere else. Every write the
//! hypervisor makes into the guest goes through here, so dirty tracking
//! (added with sync) sees it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemError {
    /// The range is not inside guest RAM.
    OutOfRange { ipa: u64, len: u64 },
}

pub struct GuestMemory {
    ipa_base: u64,
    size: u64,
    host: *mut u8,
}

// SAFETY: the hypervisor runs on one CPU; the pointer is to memory owned by
// this structure for the life of the VM.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// # Safety
    /// `host` must point to `size` bytes that nothing else uses, mapped
    /// writable for the hypervisor, for as long as this value lives.
    pub unsafe fn new(ipa_base: u64, size: u64, host: *mut u8) -> Self {
        GuestMemory { ipa_base, size, host }
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
        // SAFETY: `offset` proved the range lies inside the backing memory
        // that `new`'s contract gives us exclusively.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.host.add(off), bytes.len()) };
        Ok(())
    }

    pub fn fill(&mut self, ipa: u64, len: u64, byte: u8) -> Result<(), GuestMemError> {
        let off = self.offset(ipa, len)?;
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
}
