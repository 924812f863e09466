//! AMD nested paging (NPT, AMD64 APM vol. 2 §15.25): the guest-physical →
//! physical tables are x86-64 long-mode 4-level tables (PML4, PDPT, PD,
//! PT), 4 KiB pages, 48-bit guest-physical space. The x86_64 port will
//! point the VMCB's N_CR3 at `Stage2::<Npt>::root`.
//!
//! NPT treats every guest access as a user access, so US is set in every
//! entry, tables included, or the guest faults on its own RAM. Memory types
//! go through the host PAT: PWT/PCD/PAT all clear selects PAT entry 0
//! (write-back, the reset value) for RAM, PCD|PWT selects entry 3
//! (uncacheable) for devices.
//!
//! TLB maintenance after taking a permission away: INVLPGA does not cover
//! nested entries; flush the guest's ASID (VMCB TLB_CONTROL) before the
//! next VMRUN.
use super::{Descriptor, MemType, PageTableFormat, S2Attrs};

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
/// Page size: a PDPT or PD entry that maps 1 GiB or 2 MiB itself.
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Physical address bits 51:12.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// AMD NPT with 4-level tables.
#[derive(Debug, Clone, Copy)]
pub struct Npt;

impl PageTableFormat for Npt {
    /// Guest-physical bits 47:39, 38:30, 29:21, 20:12.
    const INDEX_BITS: &'static [u32] = &[9, 9, 9, 9];
    /// The architectural maximum (MAXPHYADDR 52); the port checks the
    /// CPU's own against its memory map.
    const PA_LIMIT: u64 = 1 << 52;

    fn block_level(level: usize) -> bool {
        // 1 GiB pages in the PDPT, 2 MiB pages in the PD; PS in a PML4
        // entry is reserved.
        level == 1 || level == 2
    }

    fn table(next: u64) -> u64 {
        // Tables grant everything; the leaf decides.
        (next & ADDR_MASK) | P | RW | US
    }

    fn page(pa: u64, attrs: S2Attrs) -> u64 {
        leaf_bits(pa, attrs)
    }

    fn block(pa: u64, level: usize, attrs: S2Attrs) -> Option<u64> {
        // PS moves the PAT bit to bit 12; it stays clear, as for pages.
        Self::block_level(level).then(|| leaf_bits(pa, attrs) | PS)
    }

    fn read(e: u64, level: usize) -> Descriptor {
        let last = level == Self::INDEX_BITS.len() - 1;
        if e & P == 0 {
            Descriptor::Invalid
        } else if last {
            Descriptor::Page { pa: e & ADDR_MASK, attrs: attrs(e) }
        } else if e & PS != 0 {
            // Reserved in a PML4 entry (the CPU faults); still not a table.
            Descriptor::Block { pa: e & ADDR_MASK, attrs: attrs(e) }
        } else {
            Descriptor::Table { next: e & ADDR_MASK }
        }
    }

    fn with_writable(e: u64, writable: bool) -> u64 {
        if writable {
            e | RW
        } else {
            e & !RW
        }
    }
}

fn leaf_bits(pa: u64, attrs: S2Attrs) -> u64 {
    let rw = if attrs.writable { RW } else { 0 };
    let mem = match attrs.memory {
        MemType::Normal => 0,
        MemType::Device => PCD | PWT | NX,
    };
    (pa & ADDR_MASK) | P | US | rw | mem
}

fn attrs(e: u64) -> S2Attrs {
    let memory = if e & PCD != 0 { MemType::Device } else { MemType::Normal };
    S2Attrs { writable: e & RW != 0, memory }
}

#[cfg(test)]
mod tests {
    use super::super::tests::VecTables;
    use super::super::{tables_for, Stage2, Stage2Error, TableMemory};
    use super::*;

    const RAM: S2Attrs = S2Attrs { writable: true, memory: MemType::Normal };
    const GUEST: u64 = 0x4000_0000;
    const BACKING: u64 = 0x6000_0000;

    #[test]
    fn descriptor_values() {
        let dev = S2Attrs { writable: true, memory: MemType::Device };
        let ro = S2Attrs { writable: false, memory: MemType::Normal };
        // P | RW | US, write-back (PAT entry 0), executable.
        assert_eq!(Npt::page(0x6000_0000, RAM), 0x6000_0007);
        assert_eq!(Npt::page(0x6000_0000, ro), 0x6000_0005);
        // P | RW | US | PWT | PCD | NX: uncacheable, never executed.
        assert_eq!(Npt::page(0xfee0_0000, dev), 0x8000_0000_fee0_001f);
        assert_eq!(Npt::table(0x8000_3000), 0x8000_3007);
        assert_eq!(Npt::block(0x4000_0000, 1, RAM), Some(0x4000_0087));
        assert_eq!(Npt::block(0x4000_0000, 0, RAM), None, "no PS in the PML4");
        assert_eq!(Npt::with_writable(0x6000_0007, false), 0x6000_0005);
        assert_eq!(Npt::read(0x6000_0007, 3), Descriptor::Page { pa: 0x6000_0000, attrs: RAM });
        assert_eq!(Npt::read(0x8000_3007, 2), Descriptor::Table { next: 0x8000_3000 });
        assert_eq!(Npt::read(0x4020_0087, 2), Descriptor::Block { pa: 0x4020_0000, attrs: RAM });
        assert_eq!(Npt::read(0x8000_3006, 0), Descriptor::Invalid, "P clear");
        assert_eq!(Npt::IPA_LIMIT, 1 << 48);
    }

    /// Four levels from a one-table root, US everywhere; write-protect and
    /// translate go through RW alone.
    #[test]
    fn maps_protects_translates() {
        let mut mem = VecTables::new(0x8000_0000, 1000);
        let mut s2 = Stage2::<Npt>::new(&mut mem).unwrap();
        assert_eq!(s2.root(), 0x8000_0000);
        s2.map(&mut mem, GUEST, BACKING, 4 << 20, RAM).unwrap();
        // PML4[0] → PDPT[1] → PD[0], PD[1] → PT.
        assert_eq!(mem.table_mut(0x8000_0000)[0], 0x8000_1007);
        assert_eq!(mem.table_mut(0x8000_1000)[1], 0x8000_2007);
        assert_eq!(mem.table_mut(0x8000_2000)[..3], [0x8000_3007, 0x8000_4007, 0]);
        assert_eq!(mem.table_mut(0x8000_3000)[5], BACKING + 5 * 4096 + 7);
        assert_eq!(mem.tables.len(), 5);

        let page = GUEST + 5 * 4096;
        assert_eq!(s2.set_writable(&mut mem, page, false), Ok(true));
        assert_eq!(mem.table_mut(0x8000_3000)[5], BACKING + 5 * 4096 + 5, "RW clear, US kept");
        assert_eq!(s2.translate(&mut mem, page + 0x10), Some((BACKING + 5 * 4096 + 0x10, S2Attrs { writable: false, ..RAM })));
        assert_eq!(s2.set_writable_range(&mut mem, GUEST, 4 << 20, false), Ok(1023));
        assert_eq!(s2.set_writable_range(&mut mem, GUEST, 4 << 20, true), Ok(1024));
        assert_eq!(s2.translate(&mut mem, GUEST + (4 << 20)), None);
        assert_eq!(s2.translate(&mut mem, 1 << 48), None);
        // The top of the 48-bit space: PML4 entry 511.
        s2.map(&mut mem, (1 << 48) - 4096, 0xf_ffff_ffff_f000, 4096, RAM).unwrap();
        assert_eq!(s2.translate(&mut mem, (1 << 48) - 1), Some((0xf_ffff_ffff_ffff, RAM)));
        assert_ne!(mem.table_mut(0x8000_0000)[511], 0);
    }

    #[test]
    fn table_counts_and_foreign_blocks() {
        // Root, PDPT, PD, 128 PTs for 256 MiB inside one GiB.
        let mut mem = VecTables::new(0x8000_0000, 1000);
        let mut s2 = Stage2::<Npt>::new(&mut mem).unwrap();
        s2.map(&mut mem, GUEST, BACKING, 256 << 20, RAM).unwrap();
        assert_eq!(mem.tables.len(), 1 + 1 + 1 + 128);
        assert_eq!(tables_for::<Npt>(256 << 20), 1 + 2 + 2 + 129);
        // A 1 GiB page in PDPT[2], written by someone else.
        mem.table_mut(0x8000_1000)[2] = Npt::block(0x1_0000_0000, 1, RAM).unwrap();
        assert_eq!(s2.map(&mut mem, 2 << 30, BACKING, 4096, RAM), Err(Stage2Error::UnexpectedBlock { ipa: 2 << 30 }));
        assert_eq!(s2.translate(&mut mem, 2 << 30), None);
    }
}
