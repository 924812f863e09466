//! Stage-2 translation tables (guest-physical → physical), built as plain
//! data over a `TableMemory` so that host tests can check every descriptor.
//!
//! Layout: 4 KiB granule, 40-bit IPA, the walk starts at level 1 with two
//! concatenated level-1 tables (8 KiB root), as VTCR below says. Only 4 KiB
//! pages are written, never blocks: dirty tracking write-protects single
//! pages, and a block would make one write dirty 512 of them.
//!
//! The caller owns TLB maintenance: after `unmap` or any change that takes
//! permission away (`set_writable(.., false)`), invalidate (TLBI IPAS2E1IS
//! for the page, then VMALLE1IS, DSB, ISB) before the guest runs again, or a
//! stale TLB entry lets writes through unseen.

/// VTCR_EL2: T0SZ=24 (40-bit IPA), SL0=1 (start at level 1), inner and
/// outer write-back cacheable, inner shareable walks, TG0=4 KiB, PS=40-bit,
/// bit 31 RES1. VS=0, so VMIDs are 8 bits.
pub const VTCR: u64 = 0x8002_3558;

pub const PAGE_SIZE: u64 = 4096;
/// Size of the guest-physical address space (T0SZ=24).
pub const IPA_LIMIT: u64 = 1 << 40;
/// Largest output address (VTCR.PS=0b010).
pub const PA_LIMIT: u64 = 1 << 40;
/// Entries in the concatenated level-1 root: IPA bits 39:30.
const ROOT_ENTRIES: u64 = 1024;

// Descriptor bits (Arm ARM D8.3, stage-2 VMSAv8-64 descriptors).
const VALID_TABLE_OR_PAGE: u64 = 0b11;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
const S2AP_SHIFT: u32 = 6;
const S2AP_MASK: u64 = 0b11 << S2AP_SHIFT;
const S2AP_RO: u64 = 0b01 << S2AP_SHIFT;
const S2AP_RW: u64 = 0b11 << S2AP_SHIFT;
const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
/// Normal, outer and inner write-back cacheable.
const MEMATTR_NORMAL_WB: u64 = 0xf << MEMATTR_SHIFT;
/// Device-nGnRE.
const MEMATTR_DEVICE: u64 = 0x1 << MEMATTR_SHIFT;
/// Execute-never (stage-2 XN[1], bit 54): no speculative instruction fetch
/// from device memory.
const XN: u64 = 1 << 54;
/// Output address bits 39:12 (PS=40 bits).
const OA_MASK: u64 = 0x0000_00ff_ffff_f000;

/// Where stage-2 tables live. `alloc_table` returns the physical address of
/// a zeroed, 4 KiB aligned table; `table_mut` gives access to a table this
/// memory handed out. The root needs two consecutive tables, 8 KiB aligned:
/// `Stage2::new` takes its first two (or three) allocations for it, so a
/// pool that hands out pages in ascending order from an 8 KiB aligned base
/// satisfies it.
pub trait TableMemory {
    fn alloc_table(&mut self) -> Option<u64>;
    fn table_mut(&mut self, pa: u64) -> &mut [u64; 512];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    /// Guest RAM: write-back cacheable.
    Normal,
    /// Device-nGnRE, execute-never.
    Device,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S2Attrs {
    pub writable: bool,
    pub memory: MemType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage2Error {
    /// An address or length is not a multiple of 4 KiB.
    Misaligned,
    /// The range reaches past the 40-bit IPA or PA space (or wraps).
    OutOfRange,
    /// This page already has a mapping; nothing of the range was mapped.
    AlreadyMapped { ipa: u64 },
    /// This page has no mapping.
    NotMapped { ipa: u64 },
    /// The table memory is exhausted. Nothing of the range stays mapped.
    OutOfTables,
    /// The table memory did not give two consecutive tables, 8 KiB
    /// aligned, for the root.
    RootNotContiguous,
    /// A block descriptor lies where a table was expected: this builder
    /// never writes blocks, so the tables were changed behind its back.
    UnexpectedBlock { ipa: u64 },
}

/// One guest's stage-2 tables. The table memory is passed to each call so
/// the same code runs over real memory and over host-test vectors.
#[derive(Debug)]
pub struct Stage2 {
    root: u64,
}

impl Stage2 {
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, Stage2Error> {
        let a = mem.alloc_table().ok_or(Stage2Error::OutOfTables)?;
        let b = mem.alloc_table().ok_or(Stage2Error::OutOfTables)?;
        if a.is_multiple_of(2 * PAGE_SIZE) && b == a + PAGE_SIZE {
            return Ok(Stage2 { root: a });
        }
        // An ascending allocator that started on an odd page: the next
        // page pairs with `b`; `a` is lost (one page, once).
        if b.is_multiple_of(2 * PAGE_SIZE) {
            let c = mem.alloc_table().ok_or(Stage2Error::OutOfTables)?;
            if c == b + PAGE_SIZE {
                return Ok(Stage2 { root: b });
            }
        }
        Err(Stage2Error::RootNotContiguous)
    }

    /// Physical address of the 8 KiB root.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// VTTBR_EL2 for this guest. VTCR.VS=0 makes the VMID 8 bits wide
    /// (VTTBR bits 55:48, bits 63:56 RES0); higher bits of `vmid` are not
    /// representable and are dropped.
    pub fn vttbr(&self, vmid: u16) -> u64 {
        debug_assert!(vmid <= 0xff, "8-bit VMID with VTCR.VS=0");
        ((vmid as u64) & 0xff) << 48 | self.root
    }

    /// Maps `len` bytes at `ipa` to `pa` with 4 KiB pages. All or nothing:
    /// if any page is already mapped, or tables run out, no page of the
    /// range is left mapped (tables allocated on the way stay, empty, for
    /// later use).
    pub fn map(&mut self, mem: &mut impl TableMemory, ipa: u64, pa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_range(ipa, len, IPA_LIMIT)?;
        check_range(pa, len, PA_LIMIT)?;
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            if let Some(slot) = self.leaf(mem, ipa + off, false)? {
                if mem.table_mut(slot.table)[slot.index] & 1 != 0 {
                    return Err(Stage2Error::AlreadyMapped { ipa: ipa + off });
                }
            }
        }
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            let slot = match self.leaf(mem, ipa + off, true) {
                Ok(Some(slot)) => slot,
                // `leaf` with allocation only fails for want of a table
                // (blocks were ruled out by the first pass).
                Ok(None) | Err(_) => {
                    self.unmap(mem, ipa, off)?;
                    return Err(Stage2Error::OutOfTables);
                }
            };
            mem.table_mut(slot.table)[slot.index] = page_descriptor(pa + off, attrs);
        }
        Ok(())
    }

    /// Removes the mappings of `len` bytes at `ipa`; pages that were not
    /// mapped are skipped. Returns how many pages were unmapped. Empty
    /// tables are kept for reuse.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, ipa: u64, len: u64) -> Result<u64, Stage2Error> {
        check_range(ipa, len, IPA_LIMIT)?;
        let mut count = 0;
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            if let Some(slot) = self.leaf(mem, ipa + off, false)? {
                let e = &mut mem.table_mut(slot.table)[slot.index];
                if *e & 1 != 0 {
                    *e = 0;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Grants or takes away write permission on the mapped page at `ipa`.
    /// Returns whether the descriptor changed.
    pub fn set_writable(&mut self, mem: &mut impl TableMemory, ipa: u64, writable: bool) -> Result<bool, Stage2Error> {
        check_range(ipa, PAGE_SIZE, IPA_LIMIT)?;
        let slot = self.leaf(mem, ipa, false)?.ok_or(Stage2Error::NotMapped { ipa })?;
        let e = &mut mem.table_mut(slot.table)[slot.index];
        if *e & 1 == 0 {
            return Err(Stage2Error::NotMapped { ipa });
        }
        let new = (*e & !S2AP_MASK) | if writable { S2AP_RW } else { S2AP_RO };
        let changed = new != *e;
        *e = new;
        Ok(changed)
    }

    /// `set_writable` over a range (the start of an epoch write-protects all
    /// of guest RAM); unmapped pages are skipped. Returns how many
    /// descriptors changed.
    pub fn set_writable_range(&mut self, mem: &mut impl TableMemory, ipa: u64, len: u64, writable: bool) -> Result<u64, Stage2Error> {
        check_range(ipa, len, IPA_LIMIT)?;
        let mut changed = 0;
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            match self.set_writable(mem, ipa + off, writable) {
                Ok(true) => changed += 1,
                Ok(false) | Err(Stage2Error::NotMapped { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// The physical address `ipa` maps to (page offset included) and the
    /// page's attributes, or `None` if it is not mapped.
    pub fn translate(&self, mem: &mut impl TableMemory, ipa: u64) -> Option<(u64, S2Attrs)> {
        if ipa >= IPA_LIMIT {
            return None;
        }
        let slot = self.leaf(mem, ipa, false).ok().flatten()?;
        let e = mem.table_mut(slot.table)[slot.index];
        if e & 1 == 0 {
            return None;
        }
        let writable = e & S2AP_MASK == S2AP_RW;
        let memory = if e & MEMATTR_MASK == MEMATTR_NORMAL_WB { MemType::Normal } else { MemType::Device };
        Some(((e & OA_MASK) | (ipa & (PAGE_SIZE - 1)), S2Attrs { writable, memory }))
    }

    /// Finds the level-3 entry for `ipa`, walking from the root and, if
    /// `alloc`, creating missing level-2/3 tables. `Ok(None)`: a table on
    /// the way is missing and `alloc` is false (or the memory ran out).
    fn leaf(&self, mem: &mut impl TableMemory, ipa: u64, alloc: bool) -> Result<Option<Slot>, Stage2Error> {
        let l1 = (ipa >> 30) % ROOT_ENTRIES;
        // The two root tables are consecutive: entry 512 is the second
        // table's first.
        let mut slot = Slot { table: self.root + (l1 / 512) * PAGE_SIZE, index: (l1 % 512) as usize };
        for shift in [21u32, 12] {
            let e = mem.table_mut(slot.table)[slot.index];
            let next = if e & 1 == 0 {
                if !alloc {
                    return Ok(None);
                }
                let Some(t) = mem.alloc_table() else { return Ok(None) };
                mem.table_mut(slot.table)[slot.index] = t | VALID_TABLE_OR_PAGE;
                t
            } else if e & 0b10 == 0 {
                return Err(Stage2Error::UnexpectedBlock { ipa });
            } else {
                e & OA_MASK
            };
            slot = Slot { table: next, index: ((ipa >> shift) & 0x1ff) as usize };
        }
        Ok(Some(slot))
    }
}

/// Tables a pool needs for `Stage2::new` and mapping `len` bytes with 4 KiB
/// pages at any IPA: the root (two, three if the pool starts on an odd
/// page), a level-3 table per 2 MiB the range touches and a level-2 table
/// per 1 GiB (each one more when the range is not aligned to them). A
/// fixed pool (it was 4 MiB: 1024 tables) stops at about 2 GiB of guest.
pub fn tables_for(len: u64) -> u64 {
    3 + len.div_ceil(2 << 20) + 1 + len.div_ceil(1 << 30) + 1
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    table: u64,
    index: usize,
}

fn check_range(addr: u64, len: u64, limit: u64) -> Result<(), Stage2Error> {
    if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(Stage2Error::Misaligned);
    }
    match addr.checked_add(len) {
        Some(end) if end <= limit => Ok(()),
        _ => Err(Stage2Error::OutOfRange),
    }
}

fn page_descriptor(pa: u64, attrs: S2Attrs) -> u64 {
    let ap = if attrs.writable { S2AP_RW } else { S2AP_RO };
    let mem = match attrs.memory {
        MemType::Normal => MEMATTR_NORMAL_WB,
        MemType::Device => MEMATTR_DEVICE | XN,
    };
    (pa & OA_MASK) | AF | SH_INNER | ap | mem | VALID_TABLE_OR_PAGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    /// Tables in host memory, named by made-up physical addresses.
    struct VecTables {
        base: u64,
        tables: Vec<Box<[u64; 512]>>,
        limit: usize,
    }

    impl VecTables {
        fn new(base: u64, limit: usize) -> Self {
            VecTables { base, tables: Vec::new(), limit }
        }
    }

    impl TableMemory for VecTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.tables.len() == self.limit {
                return None;
            }
            self.tables.push(Box::new([0; 512]));
            Some(self.base + (self.tables.len() as u64 - 1) * PAGE_SIZE)
        }
        fn table_mut(&mut self, pa: u64) -> &mut [u64; 512] {
            &mut self.tables[((pa - self.base) / PAGE_SIZE) as usize]
        }
    }

    const RW: S2Attrs = S2Attrs { writable: true, memory: MemType::Normal };
    const GUEST: u64 = 0x4000_0000;
    const BACKING: u64 = 0x6000_0000;
    const MIB: u64 = 1 << 20;

    fn new() -> (VecTables, Stage2) {
        let mut mem = VecTables::new(0x8000_0000, 1000);
        let s2 = Stage2::new(&mut mem).expect("root");
        (mem, s2)
    }

    /// A pool sized by `tables_for` maps phone-sized guests, aligned or
    /// not; the old fixed 1024 tables did not reach 2 GiB.
    #[test]
    fn tables_for_covers_big_guests() {
        for (ipa, len) in [(GUEST, 2048 * MIB), (GUEST + 4096 * 3, 2048 * MIB), (GUEST, 4096 * MIB), (GUEST, 4 * 4096)] {
            let mut mem = VecTables::new(0x8000_0000, tables_for(len) as usize);
            let mut s2 = Stage2::new(&mut mem).expect("root");
            s2.map(&mut mem, ipa, BACKING, len, RW).unwrap_or_else(|e| panic!("{len:#x} at {ipa:#x}: {e:?}"));
        }
        let mut mem = VecTables::new(0x8000_0000, 1024);
        let mut s2 = Stage2::new(&mut mem).expect("root");
        assert_eq!(s2.map(&mut mem, GUEST, BACKING, 2048 * MIB, RW), Err(Stage2Error::OutOfTables));
    }

    #[test]
    fn vtcr_fields() {
        assert_eq!(VTCR & 0x3f, 24, "T0SZ");
        assert_eq!((VTCR >> 6) & 3, 1, "SL0: level 1");
        assert_eq!((VTCR >> 14) & 3, 0, "TG0: 4 KiB");
        assert_eq!((VTCR >> 16) & 7, 0b010, "PS: 40 bits");
    }

    #[test]
    fn maps_256_mib_with_pages() {
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, GUEST, BACKING, 256 * MIB, RW).unwrap();
        // Root (2) + one level-2 table (the range lies in one GiB) + 128
        // level-3 tables (one per 2 MiB).
        assert_eq!(mem.tables.len(), 2 + 1 + 128);
        for off in [0, 4096, 128 * MIB + 0x123, 256 * MIB - 4096, 256 * MIB - 1] {
            assert_eq!(s2.translate(&mut mem, GUEST + off), Some((BACKING + off, RW)), "offset {off:#x}");
        }
        assert_eq!(s2.translate(&mut mem, GUEST + 256 * MIB), None);
        assert_eq!(s2.translate(&mut mem, GUEST - 1), None);
        assert_eq!(s2.translate(&mut mem, 0), None);
        assert_eq!(s2.translate(&mut mem, IPA_LIMIT), None);
    }

    #[test]
    fn descriptors_are_the_measured_ones() {
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, GUEST, BACKING, 4096, RW).unwrap();
        s2.map(&mut mem, 0x0900_0000, 0x0900_0000, 4096, S2Attrs { writable: true, memory: MemType::Device }).unwrap();
        // Root entry 1 (IPA 1 GiB) points at a table; follow it by hand.
        let root = mem.table_mut(s2.root())[1];
        assert_eq!(root & 0b11, 0b11);
        let l2 = mem.table_mut(root & OA_MASK)[0];
        assert_eq!(l2 & 0b11, 0b11);
        let page = mem.table_mut(l2 & OA_MASK)[0];
        // PA | AF | SH=11 | S2AP=11 | MemAttr=1111 | page.
        assert_eq!(page, BACKING | 1 << 10 | 0b11 << 8 | 0b11 << 6 | 0xf << 2 | 0b11);
        assert_eq!(s2.translate(&mut mem, 0x0900_0004), Some((0x0900_0004, S2Attrs { writable: true, memory: MemType::Device })));
        assert_eq!(s2.vttbr(1), 1 << 48 | 0x8000_0000);
    }

    #[test]
    fn write_toggle() {
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, GUEST, BACKING, 16 * 4096, RW).unwrap();
        let page = GUEST + 5 * 4096;
        assert_eq!(s2.set_writable(&mut mem, page, false), Ok(true));
        assert_eq!(s2.set_writable(&mut mem, page, false), Ok(false));
        assert!(!s2.translate(&mut mem, page).unwrap().1.writable);
        assert!(s2.translate(&mut mem, page + 4096).unwrap().1.writable, "neighbour untouched");
        assert_eq!(s2.set_writable(&mut mem, page, true), Ok(true));
        assert_eq!(s2.translate(&mut mem, page), Some((BACKING + 5 * 4096, RW)));
        assert_eq!(s2.set_writable(&mut mem, GUEST + 16 * 4096, true), Err(Stage2Error::NotMapped { ipa: GUEST + 16 * 4096 }));
        assert_eq!(s2.set_writable(&mut mem, 0x1_0000_0000, true), Err(Stage2Error::NotMapped { ipa: 0x1_0000_0000 }));
        // A whole range, with a hole that is skipped.
        s2.unmap(&mut mem, GUEST + 3 * 4096, 4096).unwrap();
        assert_eq!(s2.set_writable_range(&mut mem, GUEST, 16 * 4096, false), Ok(15));
        assert_eq!(s2.set_writable_range(&mut mem, GUEST, 16 * 4096, false), Ok(0));
    }

    #[test]
    fn unmap_and_remap() {
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, GUEST, BACKING, 4 * MIB, RW).unwrap();
        let tables = mem.tables.len();
        assert_eq!(s2.unmap(&mut mem, GUEST + MIB, MIB), Ok(256));
        assert_eq!(s2.translate(&mut mem, GUEST + MIB), None);
        assert_eq!(s2.translate(&mut mem, GUEST + 2 * MIB - 1), None);
        assert!(s2.translate(&mut mem, GUEST + 2 * MIB).is_some());
        assert_eq!(s2.unmap(&mut mem, GUEST + MIB, MIB), Ok(0), "already gone");
        assert_eq!(s2.unmap(&mut mem, 0x100_0000_0000 - 4096, 4096), Ok(0), "never mapped");
        s2.map(&mut mem, GUEST + MIB, 0x7000_0000, MIB, RW).unwrap();
        assert_eq!(s2.translate(&mut mem, GUEST + MIB), Some((0x7000_0000, RW)));
        assert_eq!(mem.tables.len(), tables, "empty tables are reused");
    }

    #[test]
    fn errors() {
        let (mut mem, mut s2) = new();
        assert_eq!(s2.map(&mut mem, GUEST + 1, BACKING, 4096, RW), Err(Stage2Error::Misaligned));
        assert_eq!(s2.map(&mut mem, GUEST, BACKING + 8, 4096, RW), Err(Stage2Error::Misaligned));
        assert_eq!(s2.map(&mut mem, GUEST, BACKING, 100, RW), Err(Stage2Error::Misaligned));
        assert_eq!(s2.map(&mut mem, IPA_LIMIT - 4096, BACKING, 8192, RW), Err(Stage2Error::OutOfRange));
        assert_eq!(s2.map(&mut mem, GUEST, PA_LIMIT, 4096, RW), Err(Stage2Error::OutOfRange));
        assert_eq!(s2.map(&mut mem, u64::MAX - 4095, BACKING, 4096, RW), Err(Stage2Error::OutOfRange));
        assert_eq!(mem.tables.len(), 2, "nothing allocated for rejected ranges");
        // The top page of the IPA space is fine (second root table).
        s2.map(&mut mem, IPA_LIMIT - 4096, PA_LIMIT - 4096, 4096, RW).unwrap();
        assert_eq!(s2.translate(&mut mem, IPA_LIMIT - 1), Some((PA_LIMIT - 1, RW)));

        s2.map(&mut mem, GUEST + 8192, BACKING, 4096, RW).unwrap();
        assert_eq!(s2.map(&mut mem, GUEST, BACKING, 4 * 4096, RW), Err(Stage2Error::AlreadyMapped { ipa: GUEST + 8192 }));
        assert_eq!(s2.translate(&mut mem, GUEST), None, "all or nothing");
        assert_eq!(s2.translate(&mut mem, GUEST + 8192), Some((BACKING, RW)), "the old mapping stays");
    }

    #[test]
    fn out_of_tables_leaves_nothing_mapped() {
        // Root + level 2 + two level-3 tables: a 6 MiB range needs three.
        let mut mem = VecTables::new(0x8000_0000, 5);
        let mut s2 = Stage2::new(&mut mem).unwrap();
        assert_eq!(s2.map(&mut mem, GUEST, BACKING, 6 * MIB, RW), Err(Stage2Error::OutOfTables));
        assert_eq!(s2.translate(&mut mem, GUEST), None);
        assert_eq!(s2.translate(&mut mem, GUEST + 4 * MIB - 4096), None);
        // What fits in the tables that exist still maps.
        s2.map(&mut mem, GUEST, BACKING, 4 * MIB, RW).unwrap();
    }

    #[test]
    fn root_alignment() {
        // An allocator starting on an odd page: the root moves up by one.
        let mut mem = VecTables::new(0x8000_1000, 10);
        let s2 = Stage2::new(&mut mem).unwrap();
        assert_eq!(s2.root(), 0x8000_2000);
        // One that never gives consecutive pages cannot hold the root.
        struct Scattered(VecTables);
        impl TableMemory for Scattered {
            fn alloc_table(&mut self) -> Option<u64> {
                self.0.alloc_table()?;
                self.0.alloc_table()
            }
            fn table_mut(&mut self, pa: u64) -> &mut [u64; 512] {
                self.0.table_mut(pa)
            }
        }
        let mut mem = Scattered(VecTables::new(0x8000_0000, 10));
        assert_eq!(Stage2::new(&mut mem).unwrap_err(), Stage2Error::RootNotContiguous);
        let mut mem = VecTables::new(0x8000_0000, 1);
        assert_eq!(Stage2::new(&mut mem).unwrap_err(), Stage2Error::OutOfTables);
    }

    #[test]
    fn foreign_block_is_reported() {
        let (mut mem, mut s2) = new();
        // A level-1 block at IPA 1 GiB, written by someone else.
        mem.table_mut(s2.root())[1] = BACKING | AF | 0b01;
        assert_eq!(s2.map(&mut mem, GUEST, BACKING, 4096, RW), Err(Stage2Error::UnexpectedBlock { ipa: GUEST }));
        assert_eq!(s2.translate(&mut mem, GUEST), None);
    }
}
