//! Stage-2 table memory from a fixed pool of physical pages.
use crate::memory::stage2::{vmsav8::Vmsav8, Stage2, TableMemory};

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

/// The guest's stage-2 tables with the TLB maintenance every permission
/// change needs. A write-protect without the invalidate would leave a stale
/// writable TLB entry that never faults, hiding writes.
pub struct GuestStage2 {
    pub s2: Stage2<Vmsav8>,
    pub tables: PoolTables,
    /// Guest RAM: its first IPA and size.
    pub ram_base: u64,
    pub ram_size: u64,
}

/// Invalidates stage-1+2 TLB entries of the guest's VMID (VTTBR_EL2 holds
/// it); the hypervisor's own EL2 translations are untouched.
pub fn invalidate_guest_tlbs() {
    // SAFETY: TLB maintenance only; the DSB before orders earlier table
    // writes, the one after and the ISB complete it before the guest runs.
    unsafe { core::arch::asm!("dsb ishst", "tlbi vmalls12e1is", "dsb ish", "isb", options(nostack)) };
}

impl crate::arch::seam::Stage2Table for GuestStage2 {
    fn protect_all(&mut self) {
        self.write_protect_range(self.ram_base, self.ram_size);
    }

    fn write_protect(&mut self, pages: &mut dyn Iterator<Item = u64>) {
        GuestStage2::write_protect(self, self.ram_base, pages);
    }

    fn make_writable(&mut self, ipa: u64) -> bool {
        GuestStage2::make_writable(self, ipa)
    }

    fn flush(&mut self) {
        invalidate_guest_tlbs();
        // SAFETY: instruction cache maintenance only: the guest's image was
        // written as data, no stale instruction may survive.
        unsafe { core::arch::asm!("ic ialluis", "dsb ish", "isb", options(nostack)) };
    }
}

impl GuestStage2 {
    /// Makes the pages read-only (IPAs given as page numbers from
    /// `ipa_base`), then invalidates all stage-1+2 entries of this VMID once:
    /// cheaper than one invalidate per page when many change. Returns how
    /// many pages changed.
    pub fn write_protect(&mut self, ipa_base: u64, pages: &mut dyn Iterator<Item = u64>) -> u64 {
        let mut changed = 0;
        for p in pages {
            if let Ok(true) = self.s2.set_writable(&mut self.tables, ipa_base + p * 4096, false) {
                changed += 1;
            }
        }
        invalidate_guest_tlbs();
        changed
    }

    /// Write-protects every page of a range at once (the first epoch).
    pub fn write_protect_range(&mut self, ipa: u64, len: u64) -> u64 {
        let n = self.s2.set_writable_range(&mut self.tables, ipa, len, false).unwrap_or(0);
        invalidate_guest_tlbs();
        n
    }

    /// Gives one page its write permission back after the guest's first
    /// write of the epoch. Returns false if the IPA is not guest RAM.
    pub fn make_writable(&mut self, ipa: u64) -> bool {
        let page = ipa & !0xfff;
        match self.s2.set_writable(&mut self.tables, page, true) {
            Ok(_) => {
                // SAFETY: invalidates the stage-2 entry for this IPA (operand
                // is IPA >> 12) and the combined stage-1+2 entries that may
                // cache it, then completes before the guest retries.
                unsafe {
                    core::arch::asm!(
                        "dsb ishst", "tlbi ipas2e1is, {}", "dsb ish", "tlbi vmalle1is", "dsb ish", "isb",
                        in(reg) page >> 12, options(nostack)
                    )
                };
                true
            }
            Err(_) => false,
        }
    }
}
