//! The ARM stage-2 format (VMSAv8-64, Arm ARM D8.3): 4 KiB granule, 40-bit
//! IPA, the walk starts at level 1 with two concatenated level-1 tables
//! (8 KiB root), as `VTCR` says. Format levels 0, 1, 2 are the
//! architecture's levels 1, 2, 3.
//!
//! TLB maintenance after taking a permission away: TLBI IPAS2E1IS for the
//! page, then VMALLE1IS, DSB, ISB (or one VMALLS12E1IS for a batch).
use super::{Descriptor, MemType, PageTableFormat, S2Attrs, Stage2};

/// VTCR_EL2: T0SZ=24 (40-bit IPA), SL0=1 (start at level 1), inner and
/// outer write-back cacheable, inner shareable walks, TG0=4 KiB, PS=40-bit,
/// bit 31 RES1. VS=0, so VMIDs are 8 bits.
pub const VTCR: u64 = 0x8002_3558;

// Descriptor bits (Arm ARM D8.3, stage-2 VMSAv8-64 descriptors).
const VALID: u64 = 0b01;
const TABLE_OR_PAGE: u64 = 0b11;
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

/// VMSAv8-64 stage 2 with the `VTCR` above.
#[derive(Debug, Clone, Copy)]
pub struct Vmsav8;

impl PageTableFormat for Vmsav8 {
    /// IPA bits 39:30 (two concatenated tables), 29:21, 20:12.
    const INDEX_BITS: &'static [u32] = &[10, 9, 9];
    /// VTCR.PS=0b010.
    const PA_LIMIT: u64 = 1 << 40;

    fn block_level(level: usize) -> bool {
        // 1 GiB blocks at level 1, 2 MiB at level 2 (4 KiB granule).
        level < 2
    }

    fn table(next: u64) -> u64 {
        next | TABLE_OR_PAGE
    }

    fn page(pa: u64, attrs: S2Attrs) -> u64 {
        leaf_bits(pa, attrs) | TABLE_OR_PAGE
    }

    fn block(pa: u64, level: usize, attrs: S2Attrs) -> Option<u64> {
        Self::block_level(level).then(|| leaf_bits(pa, attrs) | VALID)
    }

    fn read(e: u64, level: usize) -> Descriptor {
        let last = level == Self::INDEX_BITS.len() - 1;
        match (e & TABLE_OR_PAGE, last) {
            (TABLE_OR_PAGE, true) => Descriptor::Page { pa: e & OA_MASK, attrs: attrs(e) },
            (TABLE_OR_PAGE, false) => Descriptor::Table { next: e & OA_MASK },
            (VALID, false) => Descriptor::Block { pa: e & OA_MASK, attrs: attrs(e) },
            // Bit 0 clear, or 0b01 at level 3 (reserved, faults).
            _ => Descriptor::Invalid,
        }
    }

    fn with_writable(e: u64, writable: bool) -> u64 {
        (e & !S2AP_MASK) | if writable { S2AP_RW } else { S2AP_RO }
    }
}

/// Everything of a block or page descriptor but its type bits.
fn leaf_bits(pa: u64, attrs: S2Attrs) -> u64 {
    let ap = if attrs.writable { S2AP_RW } else { S2AP_RO };
    let mem = match attrs.memory {
        MemType::Normal => MEMATTR_NORMAL_WB,
        MemType::Device => MEMATTR_DEVICE | XN,
    };
    (pa & OA_MASK) | AF | SH_INNER | ap | mem
}

fn attrs(e: u64) -> S2Attrs {
    let writable = e & S2AP_MASK == S2AP_RW;
    let memory = if e & MEMATTR_MASK == MEMATTR_NORMAL_WB { MemType::Normal } else { MemType::Device };
    S2Attrs { writable, memory }
}

impl Stage2<Vmsav8> {
    /// VTTBR_EL2 for this guest. VTCR.VS=0 makes the VMID 8 bits wide
    /// (VTTBR bits 55:48, bits 63:56 RES0); higher bits of `vmid` are not
    /// representable and are dropped.
    pub fn vttbr(&self, vmid: u16) -> u64 {
        debug_assert!(vmid <= 0xff, "8-bit VMID with VTCR.VS=0");
        ((vmid as u64) & 0xff) << 48 | self.root()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::VecTables;
    use super::super::{tables_for, Stage2Error, TableMemory, PAGE_SIZE};
    use super::*;

    type S2 = Stage2<Vmsav8>;
    const RW: S2Attrs = S2Attrs { writable: true, memory: MemType::Normal };
    const GUEST: u64 = 0x4000_0000;
    const BACKING: u64 = 0x6000_0000;
    const IPA_LIMIT: u64 = Vmsav8::IPA_LIMIT;

    fn new() -> (VecTables, S2) {
        let mut mem = VecTables::new(0x8000_0000, 1000);
        let s2 = S2::new(&mut mem).expect("root");
        (mem, s2)
    }

    #[test]
    fn vtcr_fields() {
        assert_eq!(VTCR & 0x3f, 24, "T0SZ");
        assert_eq!(64 - (VTCR & 0x3f), IPA_LIMIT.trailing_zeros() as u64, "T0SZ matches the levels");
        assert_eq!((VTCR >> 6) & 3, 1, "SL0: level 1");
        assert_eq!((VTCR >> 14) & 3, 0, "TG0: 4 KiB");
        assert_eq!((VTCR >> 16) & 7, 0b010, "PS: 40 bits");
        assert_eq!(Vmsav8::PA_LIMIT, 1 << 40);
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

    /// The bits written before the walker became generic, pinned: a
    /// change here changes what the guest's accesses do.
    #[test]
    fn descriptor_values_are_pinned() {
        let dev_ro = S2Attrs { writable: false, memory: MemType::Device };
        let ro = S2Attrs { writable: false, memory: MemType::Normal };
        assert_eq!(Vmsav8::page(0x4000_0000, RW), 0x0000_0000_4000_07ff);
        assert_eq!(Vmsav8::page(0x4000_0000, ro), 0x0000_0000_4000_077f);
        assert_eq!(Vmsav8::page(0x00ff_ffff_f000, RW), 0x0000_00ff_ffff_f7ff);
        assert_eq!(Vmsav8::page(0x0900_0000, dev_ro), 0x0040_0000_0900_0747);
        assert_eq!(Vmsav8::table(0x8000_3000), 0x8000_3003);
        assert_eq!(Vmsav8::block(0x4000_0000, 0, RW), Some(0x0000_0000_4000_07fd));
        assert_eq!(Vmsav8::block(0x4000_0000, 2, RW), None, "no blocks at level 3");
        assert_eq!(Vmsav8::with_writable(0x4000_07ff, false), 0x4000_077f);
        assert_eq!(Vmsav8::with_writable(0x4000_077f, true), 0x4000_07ff);
        // The whole tables of a small mapping, entry by entry.
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, GUEST, BACKING, 2 * 4096, RW).unwrap();
        s2.set_writable(&mut mem, GUEST + 4096, false).unwrap();
        assert_eq!(mem.table_mut(0x8000_0000)[1], 0x8000_2003);
        assert_eq!(mem.table_mut(0x8000_2000)[0], 0x8000_3003);
        assert_eq!(mem.table_mut(0x8000_3000)[..3], [0x6000_07ff, 0x6000_177f, 0]);
    }

    #[test]
    fn reads_what_it_writes() {
        for level in 0..3 {
            assert_eq!(Vmsav8::read(0, level), Descriptor::Invalid);
        }
        assert_eq!(Vmsav8::read(0x6000_07ff, 2), Descriptor::Page { pa: 0x6000_0000, attrs: RW });
        assert_eq!(Vmsav8::read(0x6000_07fd, 2), Descriptor::Invalid, "0b01 at level 3 is reserved");
        assert_eq!(Vmsav8::read(0x6000_07fd, 1), Descriptor::Block { pa: 0x6000_0000, attrs: RW });
        assert_eq!(Vmsav8::read(0x8000_3003, 0), Descriptor::Table { next: 0x8000_3000 });
    }

    /// ARM's 256 MiB guest: root (2) + one level-2 table (the range lies in
    /// one GiB) + 128 level-3 tables (one per 2 MiB); the pool is sized as
    /// before the walker became generic.
    #[test]
    fn table_counts() {
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, GUEST, BACKING, 256 << 20, RW).unwrap();
        assert_eq!(mem.tables.len(), 2 + 1 + 128);
        for len in [0, 4096, 256 << 20, 2 << 30, 3 << 30] {
            assert_eq!(tables_for::<Vmsav8>(len), 3 + len.div_ceil(2 << 20) + 1 + len.div_ceil(1 << 30) + 1);
        }
    }

    #[test]
    fn root_alignment() {
        // An allocator starting on an odd page: the root moves up by one.
        let mut mem = VecTables::new(0x8000_1000, 10);
        let s2 = S2::new(&mut mem).unwrap();
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
        assert_eq!(S2::new(&mut mem).unwrap_err(), Stage2Error::RootNotContiguous);
        let mut mem = VecTables::new(0x8000_0000, 1);
        assert_eq!(S2::new(&mut mem).unwrap_err(), Stage2Error::OutOfTables);
        // The top page of the IPA space sits in the second root table.
        let (mut mem, mut s2) = new();
        s2.map(&mut mem, IPA_LIMIT - PAGE_SIZE, 0, PAGE_SIZE, RW).unwrap();
        assert_ne!(mem.table_mut(s2.root() + PAGE_SIZE)[511], 0);
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
