//! Stage-2 table memory from a fixed pool of physical pages.
use crate::memory::stage2::TableMemory;

pub struct PoolTables {
    next: u64,
    end: u64,
}

impl PoolTables {
    /// # Safety
    /// `[base, base+size)` must be RAM reserved for stage-2 tables alone,
    /// identity-mapped at EL2, 4 KiB aligned.
    pub unsafe fn new(base: u64, size: u64) -> Self {
        PoolTables { next: base, end: base + size }
    }
}

impl TableMemory for PoolTables {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.next + 4096 > self.end {
            return None;
        }
        let pa = self.next;
        self.next += 4096;
        self.table_mut(pa).fill(0);
        Some(pa)
    }

    fn table_mut(&mut self, pa: u64) -> &mut [u64; 512] {
        // SAFETY: every `pa` handed to us came from `alloc_table`, so it is a
        // 4 KiB aligned page of the pool that `new`'s contract reserves.
        unsafe { &mut *(pa as *mut [u64; 512]) }
    }
}
