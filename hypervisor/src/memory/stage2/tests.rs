//! The walker's behaviour, the same for every format: each test runs over
//! ARM's VMSAv8 and AMD's NPT. Format-specific bits are pinned in the
//! formats' own files.
use super::npt::Npt;
use super::vmsav8::Vmsav8;
use super::*;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Tables in host memory, named by made-up physical addresses.
pub(super) struct VecTables {
    base: u64,
    pub(super) tables: Vec<Box<[u64; 512]>>,
    limit: usize,
}

impl VecTables {
    pub(super) fn new(base: u64, limit: usize) -> Self {
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

fn new<F: PageTableFormat>() -> (VecTables, Stage2<F>) {
    let mut mem = VecTables::new(0x8000_0000, 1000);
    let s2 = Stage2::new(&mut mem).expect("root");
    (mem, s2)
}

/// Tables between the root and the leaves' tables.
fn middle<F: PageTableFormat>() -> usize {
    F::INDEX_BITS.len() - 2
}

/// Runs each named generic test once per format.
macro_rules! for_each_format {
    ($($name:ident),* $(,)?) => {
        mod vmsav8 {
            $(#[test] fn $name() { super::$name::<super::Vmsav8>() })*
        }
        mod npt {
            $(#[test] fn $name() { super::$name::<super::Npt>() })*
        }
    };
}

for_each_format!(
    formats_are_well_formed,
    tables_for_covers_big_guests,
    maps_256_mib_with_pages,
    write_toggle,
    unmap_and_remap,
    errors,
    out_of_tables_leaves_nothing_mapped,
    foreign_block_is_reported,
);

/// What the walker assumes of every format.
fn formats_are_well_formed<F: PageTableFormat>() {
    let bits = F::INDEX_BITS;
    assert!(bits.len() >= 2 && bits[0] >= 9, "a root and a level of pages");
    assert!(bits[1..].iter().all(|&b| b == 9), "one 512-entry table per level below the root");
    for level in 0..bits.len() {
        assert_eq!(F::read(0, level), Descriptor::Invalid, "zeroed tables are empty");
        assert_eq!(F::block(BACKING, level, RW).is_some(), F::block_level(level));
    }
    assert!(!F::block_level(bits.len() - 1), "the last level holds pages");
    for attrs in [RW, S2Attrs { writable: false, memory: MemType::Device }] {
        let e = F::page(BACKING, attrs);
        assert_eq!(F::read(e, bits.len() - 1), Descriptor::Page { pa: BACKING, attrs });
        assert_eq!(
            F::read(F::with_writable(e, !attrs.writable), bits.len() - 1),
            Descriptor::Page { pa: BACKING, attrs: S2Attrs { writable: !attrs.writable, ..attrs } }
        );
    }
    assert_eq!(F::read(F::table(0x8000_3000), 0), Descriptor::Table { next: 0x8000_3000 });
}

/// A pool sized by `tables_for` maps phone-sized guests, aligned or not;
/// the old fixed 1024 tables did not reach 2 GiB.
fn tables_for_covers_big_guests<F: PageTableFormat>() {
    for (ipa, len) in [(GUEST, 2048 * MIB), (GUEST + 4096 * 3, 2048 * MIB), (GUEST, 4096 * MIB), (GUEST, 4 * 4096)] {
        let mut mem = VecTables::new(0x8000_0000, tables_for::<F>(len) as usize);
        let mut s2 = Stage2::<F>::new(&mut mem).expect("root");
        s2.map(&mut mem, ipa, BACKING, len, RW).unwrap_or_else(|e| panic!("{len:#x} at {ipa:#x}: {e:?}"));
    }
    let mut mem = VecTables::new(0x8000_0000, 1024);
    let mut s2 = Stage2::<F>::new(&mut mem).expect("root");
    assert_eq!(s2.map(&mut mem, GUEST, BACKING, 2048 * MIB, RW), Err(Stage2Error::OutOfTables));
}

fn maps_256_mib_with_pages<F: PageTableFormat>() {
    let (mut mem, mut s2) = new::<F>();
    s2.map(&mut mem, GUEST, BACKING, 256 * MIB, RW).unwrap();
    // Root + one table per middle level (the range lies in one GiB) + 128
    // leaf tables (one per 2 MiB).
    assert_eq!(mem.tables.len() as u64, root_tables::<F>() + middle::<F>() as u64 + 128);
    for off in [0, 4096, 128 * MIB + 0x123, 256 * MIB - 4096, 256 * MIB - 1] {
        assert_eq!(s2.translate(&mut mem, GUEST + off), Some((BACKING + off, RW)), "offset {off:#x}");
    }
    assert_eq!(s2.translate(&mut mem, GUEST + 256 * MIB), None);
    assert_eq!(s2.translate(&mut mem, GUEST - 1), None);
    assert_eq!(s2.translate(&mut mem, 0), None);
    assert_eq!(s2.translate(&mut mem, F::IPA_LIMIT), None);
}

fn write_toggle<F: PageTableFormat>() {
    let (mut mem, mut s2) = new::<F>();
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

fn unmap_and_remap<F: PageTableFormat>() {
    let (mut mem, mut s2) = new::<F>();
    s2.map(&mut mem, GUEST, BACKING, 4 * MIB, RW).unwrap();
    let tables = mem.tables.len();
    assert_eq!(s2.unmap(&mut mem, GUEST + MIB, MIB), Ok(256));
    assert_eq!(s2.translate(&mut mem, GUEST + MIB), None);
    assert_eq!(s2.translate(&mut mem, GUEST + 2 * MIB - 1), None);
    assert!(s2.translate(&mut mem, GUEST + 2 * MIB).is_some());
    assert_eq!(s2.unmap(&mut mem, GUEST + MIB, MIB), Ok(0), "already gone");
    assert_eq!(s2.unmap(&mut mem, F::IPA_LIMIT - 4096, 4096), Ok(0), "never mapped");
    s2.map(&mut mem, GUEST + MIB, 0x7000_0000, MIB, RW).unwrap();
    assert_eq!(s2.translate(&mut mem, GUEST + MIB), Some((0x7000_0000, RW)));
    assert_eq!(mem.tables.len(), tables, "empty tables are reused");
}

fn errors<F: PageTableFormat>() {
    let (mut mem, mut s2) = new::<F>();
    let (ipa_limit, pa_limit) = (F::IPA_LIMIT, F::PA_LIMIT);
    assert_eq!(s2.map(&mut mem, GUEST + 1, BACKING, 4096, RW), Err(Stage2Error::Misaligned));
    assert_eq!(s2.map(&mut mem, GUEST, BACKING + 8, 4096, RW), Err(Stage2Error::Misaligned));
    assert_eq!(s2.map(&mut mem, GUEST, BACKING, 100, RW), Err(Stage2Error::Misaligned));
    assert_eq!(s2.map(&mut mem, ipa_limit - 4096, BACKING, 8192, RW), Err(Stage2Error::OutOfRange));
    assert_eq!(s2.map(&mut mem, GUEST, pa_limit, 4096, RW), Err(Stage2Error::OutOfRange));
    assert_eq!(s2.map(&mut mem, u64::MAX - 4095, BACKING, 4096, RW), Err(Stage2Error::OutOfRange));
    assert_eq!(mem.tables.len() as u64, root_tables::<F>(), "nothing allocated for rejected ranges");
    // The top page of the IPA space is fine.
    s2.map(&mut mem, ipa_limit - 4096, pa_limit - 4096, 4096, RW).unwrap();
    assert_eq!(s2.translate(&mut mem, ipa_limit - 1), Some((pa_limit - 1, RW)));

    s2.map(&mut mem, GUEST + 8192, BACKING, 4096, RW).unwrap();
    assert_eq!(s2.map(&mut mem, GUEST, BACKING, 4 * 4096, RW), Err(Stage2Error::AlreadyMapped { ipa: GUEST + 8192 }));
    assert_eq!(s2.translate(&mut mem, GUEST), None, "all or nothing");
    assert_eq!(s2.translate(&mut mem, GUEST + 8192), Some((BACKING, RW)), "the old mapping stays");
}

fn out_of_tables_leaves_nothing_mapped<F: PageTableFormat>() {
    // Root + middle tables + two leaf tables: a 6 MiB range needs three.
    let mut mem = VecTables::new(0x8000_0000, root_tables::<F>() as usize + middle::<F>() + 2);
    let mut s2 = Stage2::<F>::new(&mut mem).unwrap();
    assert_eq!(s2.map(&mut mem, GUEST, BACKING, 6 * MIB, RW), Err(Stage2Error::OutOfTables));
    assert_eq!(s2.translate(&mut mem, GUEST), None);
    assert_eq!(s2.translate(&mut mem, GUEST + 4 * MIB - 4096), None);
    // What fits in the tables that exist still maps.
    s2.map(&mut mem, GUEST, BACKING, 4 * MIB, RW).unwrap();
}

/// A 2 MiB block written by someone else where the walker expects a leaf
/// table: reported, never walked through.
fn foreign_block_is_reported<F: PageTableFormat>() {
    let (mut mem, mut s2) = new::<F>();
    s2.map(&mut mem, GUEST, BACKING, 4096, RW).unwrap();
    // Find the entry above the leaf table by walking by hand.
    let bits = F::INDEX_BITS;
    let above_leaf = bits.len() - 2;
    let mut shift = PAGE_SHIFT + sum(bits) - bits[0];
    let i = (GUEST >> shift) & ((1 << bits[0]) - 1);
    let (mut table, mut index) = (s2.root() + (i / 512) * PAGE_SIZE, (i % 512) as usize);
    for level in 0..above_leaf {
        let Descriptor::Table { next } = F::read(mem.table_mut(table)[index], level) else { panic!("level {level}") };
        shift -= bits[level + 1];
        (table, index) = (next, ((GUEST >> shift) % 512) as usize);
    }
    mem.table_mut(table)[index] = F::block(BACKING, above_leaf, RW).expect("2 MiB blocks");
    assert_eq!(s2.map(&mut mem, GUEST + 4096, BACKING, 4096, RW), Err(Stage2Error::UnexpectedBlock { ipa: GUEST + 4096 }));
    assert_eq!(s2.translate(&mut mem, GUEST), None);
    assert_eq!(s2.set_writable(&mut mem, GUEST, false), Err(Stage2Error::UnexpectedBlock { ipa: GUEST }));
}
