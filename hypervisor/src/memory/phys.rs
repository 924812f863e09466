//! Physical memory for the hypervisor's own use: the heap, stage-2 tables
//! and the memory that backs guest RAM, carved from the top of the board's
//! RAM so the loaded image and the loader's device tree stay untouched.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhysError {
    /// No free range of this size and alignment is left.
    OutOfMemory {
        size: u64,
        align: u64,
    },
    BadAlignment,
}

const MAX_RESERVED: usize = 8;

/// Hands out ranges downward from the top of RAM, skipping reserved ones.
pub struct PhysAllocator {
    ram: Range,
    reserved: [Range; MAX_RESERVED],
    nreserved: usize,
    /// Everything at or above this address has been handed out.
    top: u64,
}

impl PhysAllocator {
    pub fn new(ram: Range) -> Self {
        PhysAllocator { ram, reserved: [Range { start: 0, end: 0 }; MAX_RESERVED], nreserved: 0, top: ram.end }
    }

    /// Keeps `r` out of every later allocation. Returns false if the table of
    /// reserved ranges is full (the caller then must not allocate).
    pub fn reserve(&mut self, r: Range) -> bool {
        if self.nreserved == MAX_RESERVED {
            return false;
        }
        self.reserved[self.nreserved] = r;
        self.nreserved += 1;
        true
    }

    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, PhysError> {
        if align == 0 || !align.is_power_of_two() {
            return Err(PhysError::BadAlignment);
        }
        let oom = PhysError::OutOfMemory { size, align };
        let mut top = self.top;
        loop {
            let start = top.checked_sub(size).ok_or(oom)? & !(align - 1);
            if start < self.ram.start {
                return Err(oom);
            }
            let end = start + size;
            // Move below the lowest reserved range this one overlaps, and retry.
            match self.reserved[..self.nreserved].iter().filter(|r| r.start < end && start < r.end).map(|r| r.start).min() {
                Some(below) => top = below,
                None => {
                    self.top = start;
                    return Ok(start);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_downward_aligned_and_skips_reserved() {
        let mut a = PhysAllocator::new(Range { start: 0x4000_0000, end: 0x8000_0000 });
        assert!(a.reserve(Range { start: 0x7ff0_0000, end: 0x7ff1_0000 })); // a device tree
        let g = a.alloc(0x1000_0000, 0x20_0000).unwrap();
        assert_eq!(g, 0x6fe0_0000);
        assert!(g + 0x1000_0000 <= 0x7ff0_0000);
        let h = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(h, g - 0x1000);
    }

    #[test]
    fn runs_out_cleanly() {
        let mut a = PhysAllocator::new(Range { start: 0x1000, end: 0x3000 });
        assert!(a.reserve(Range { start: 0x1000, end: 0x2000 }));
        assert_eq!(a.alloc(0x1000, 0x1000), Ok(0x2000));
        assert_eq!(a.alloc(0x1000, 0x1000), Err(PhysError::OutOfMemory { size: 0x1000, align: 0x1000 }));
        assert_eq!(a.alloc(1, 3), Err(PhysError::BadAlignment));
    }
}
