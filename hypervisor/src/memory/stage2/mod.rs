//! Stage-2 translation tables (guest-physical → physical), built as plain
//! data over a `TableMemory` so that host tests can check every descriptor.
//!
//! The walker here knows no architecture: a `PageTableFormat` tells it how
//! many levels there are, how many index bits each resolves and how the
//! entries are encoded (as Bao's `page_table_dscr` and hvisor's per-arch
//! PTE types do). `vmsav8` is the ARM stage-2 format in use today; `npt` is
//! AMD's nested paging for the x86_64 port.
//!
//! Only 4 KiB pages are written, never blocks: dirty tracking
//! write-protects single pages, and a block would make one write dirty 512
//! of them.
//!
//! The caller owns TLB maintenance: after `unmap` or any change that takes
//! permission away (`set_writable(.., false)`), invalidate before the guest
//! runs again, or a stale TLB entry lets writes through unseen.
use core::marker::PhantomData;

pub mod npt;
pub mod vmsav8;

#[cfg(test)]
mod tests;

pub const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;
/// Entries of one table below the root (4 KiB of 8-byte entries).
const TABLE_ENTRIES: u64 = 512;

/// Where stage-2 tables live. `alloc_table` returns the physical address of
/// a zeroed, 4 KiB aligned table; `table_mut` gives access to a table this
/// memory handed out. A root wider than one table (ARM's two concatenated
/// level-1 tables) needs consecutive tables aligned to their total size:
/// `Stage2::new` takes its first allocations for it, so a pool that hands
/// out pages in ascending order from a base aligned to the root satisfies
/// it.
pub trait TableMemory {
    fn alloc_table(&mut self) -> Option<u64>;
    fn table_mut(&mut self, pa: u64) -> &mut [u64; 512];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    /// Guest RAM: write-back cacheable.
    Normal,
    /// Device memory (uncached), execute-never.
    Device,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S2Attrs {
    pub writable: bool,
    pub memory: MemType,
}

/// What one entry holds, as its format reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    Invalid,
    /// The next level's table.
    Table {
        next: u64,
    },
    /// A leaf above the page level, covering a whole table's range.
    Block {
        pa: u64,
        attrs: S2Attrs,
    },
    /// A 4 KiB leaf at the last level.
    Page {
        pa: u64,
        attrs: S2Attrs,
    },
}

/// A stage-2 descriptor format: the shape of the walk and the bits of each
/// entry. Levels are numbered from the root, 0; the last level holds 4 KiB
/// pages. Every level below the root indexes one 512-entry table; the root
/// may be wider. An all-zero entry must be invalid, since tables come
/// zeroed and `unmap` writes zero.
pub trait PageTableFormat {
    /// Index bits each level resolves, root first. Below the root each is
    /// 9; a root of `n > 9` bits is `2^(n-9)` consecutive tables aligned to
    /// their total size (ARM's concatenated tables).
    const INDEX_BITS: &'static [u32];
    /// Input (guest-physical) address space: what the levels resolve above
    /// the page offset.
    const IPA_LIMIT: u64 = 1 << (PAGE_SHIFT + sum(Self::INDEX_BITS));
    /// Output addresses must lie below this.
    const PA_LIMIT: u64;

    /// Whether `level` may hold a block. The walker never writes blocks
    /// but finds them if someone else did.
    fn block_level(level: usize) -> bool;
    /// An entry pointing at the next level's table at `next`.
    fn table(next: u64) -> u64;
    /// A 4 KiB leaf mapping `pa`.
    fn page(pa: u64, attrs: S2Attrs) -> u64;
    /// A block at `level` mapping `pa`, or `None` where blocks are not
    /// allowed.
    fn block(pa: u64, level: usize, attrs: S2Attrs) -> Option<u64>;
    /// What `entry`, found at `level`, holds.
    fn read(entry: u64, level: usize) -> Descriptor;
    /// The valid leaf `entry` with write permission granted or taken away,
    /// everything else kept.
    fn with_writable(entry: u64, writable: bool) -> u64;
}

const fn sum(bits: &[u32]) -> u32 {
    let (mut s, mut i) = (0, 0);
    while i < bits.len() {
        s += bits[i];
        i += 1;
    }
    s
}

/// Tables the root of format `F` spans.
fn root_tables<F: PageTableFormat>() -> u64 {
    1 << (F::INDEX_BITS[0] - 9)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage2Error {
    /// An address or length is not a multiple of 4 KiB.
    Misaligned,
    /// The range reaches past the format's IPA or PA space (or wraps).
    OutOfRange,
    /// This page already has a mapping; nothing of the range was mapped.
    AlreadyMapped { ipa: u64 },
    /// This page has no mapping.
    NotMapped { ipa: u64 },
    /// The table memory is exhausted. Nothing of the range stays mapped.
    OutOfTables,
    /// The table memory did not give consecutive tables, aligned to their
    /// total size, for a root wider than one table.
    RootNotContiguous,
    /// A block descriptor lies where a table was expected: this builder
    /// never writes blocks, so the tables were changed behind its back.
    UnexpectedBlock { ipa: u64 },
}

/// One guest's stage-2 tables in format `F`. The table memory is passed to
/// each call so the same code runs over real memory and over host-test
/// vectors.
#[derive(Debug)]
pub struct Stage2<F: PageTableFormat> {
    root: u64,
    format: PhantomData<F>,
}

impl<F: PageTableFormat> Stage2<F> {
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, Stage2Error> {
        let n = root_tables::<F>();
        // An ascending allocator that started off the root's alignment
        // wastes fewer than `n` tables before an aligned run starts; after
        // `2n - 1` tables without a run it never gives one.
        let (mut start, mut run) = (0, 0);
        for _ in 0..2 * n - 1 {
            let t = mem.alloc_table().ok_or(Stage2Error::OutOfTables)?;
            if run > 0 && t == start + run * PAGE_SIZE {
                run += 1;
            } else if t.is_multiple_of(n * PAGE_SIZE) {
                (start, run) = (t, 1);
            } else {
                run = 0;
            }
            if run == n {
                return Ok(Stage2 { root: start, format: PhantomData });
            }
        }
        Err(Stage2Error::RootNotContiguous)
    }

    /// Physical address of the root.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps `len` bytes at `ipa` to `pa` with 4 KiB pages. All or nothing:
    /// if any page is already mapped, or tables run out, no page of the
    /// range is left mapped (tables allocated on the way stay, empty, for
    /// later use).
    pub fn map(&mut self, mem: &mut impl TableMemory, ipa: u64, pa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_range(ipa, len, F::IPA_LIMIT)?;
        check_range(pa, len, F::PA_LIMIT)?;
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            if let Some(slot) = self.leaf(mem, ipa + off, false)? {
                if slot.read::<F>(mem) != Descriptor::Invalid {
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
            mem.table_mut(slot.table)[slot.index] = F::page(pa + off, attrs);
        }
        Ok(())
    }

    /// Removes the mappings of `len` bytes at `ipa`; pages that were not
    /// mapped are skipped. Returns how many pages were unmapped. Empty
    /// tables are kept for reuse.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, ipa: u64, len: u64) -> Result<u64, Stage2Error> {
        check_range(ipa, len, F::IPA_LIMIT)?;
        let mut count = 0;
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            if let Some(slot) = self.leaf(mem, ipa + off, false)? {
                if slot.read::<F>(mem) != Descriptor::Invalid {
                    mem.table_mut(slot.table)[slot.index] = 0;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Grants or takes away write permission on the mapped page at `ipa`.
    /// Returns whether the descriptor changed.
    pub fn set_writable(&mut self, mem: &mut impl TableMemory, ipa: u64, writable: bool) -> Result<bool, Stage2Error> {
        check_range(ipa, PAGE_SIZE, F::IPA_LIMIT)?;
        let slot = self.leaf(mem, ipa, false)?.ok_or(Stage2Error::NotMapped { ipa })?;
        let e = &mut mem.table_mut(slot.table)[slot.index];
        if !matches!(F::read(*e, slot.level), Descriptor::Page { .. }) {
            return Err(Stage2Error::NotMapped { ipa });
        }
        let new = F::with_writable(*e, writable);
        let changed = new != *e;
        *e = new;
        Ok(changed)
    }

    /// `set_writable` over a range (the start of an epoch write-protects all
    /// of guest RAM); unmapped pages are skipped. Returns how many
    /// descriptors changed.
    pub fn set_writable_range(&mut self, mem: &mut impl TableMemory, ipa: u64, len: u64, writable: bool) -> Result<u64, Stage2Error> {
        check_range(ipa, len, F::IPA_LIMIT)?;
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
        if ipa >= F::IPA_LIMIT {
            return None;
        }
        let slot = self.leaf(mem, ipa, false).ok().flatten()?;
        match slot.read::<F>(mem) {
            Descriptor::Page { pa, attrs } => Some((pa | (ipa & (PAGE_SIZE - 1)), attrs)),
            _ => None,
        }
    }

    /// Finds the last-level entry for `ipa`, walking from the root and, if
    /// `alloc`, creating missing tables. `Ok(None)`: a table on the way is
    /// missing and `alloc` is false (or the memory ran out).
    fn leaf(&self, mem: &mut impl TableMemory, ipa: u64, alloc: bool) -> Result<Option<Slot>, Stage2Error> {
        let bits = F::INDEX_BITS;
        let last = bits.len() - 1;
        let mut shift = PAGE_SHIFT + sum(bits) - bits[0];
        let i = (ipa >> shift) & ((1 << bits[0]) - 1);
        // A wide root is consecutive tables: entry 512 is the second
        // table's first.
        let mut slot = Slot { table: self.root + (i / TABLE_ENTRIES) * PAGE_SIZE, index: (i % TABLE_ENTRIES) as usize, level: 0 };
        while slot.level < last {
            let next = match slot.read::<F>(mem) {
                Descriptor::Table { next } => next,
                Descriptor::Invalid => {
                    if !alloc {
                        return Ok(None);
                    }
                    let Some(t) = mem.alloc_table() else { return Ok(None) };
                    mem.table_mut(slot.table)[slot.index] = F::table(t);
                    t
                }
                Descriptor::Block { .. } | Descriptor::Page { .. } => return Err(Stage2Error::UnexpectedBlock { ipa }),
            };
            shift -= bits[slot.level + 1];
            slot = Slot { table: next, index: ((ipa >> shift) % TABLE_ENTRIES) as usize, level: slot.level + 1 };
        }
        Ok(Some(slot))
    }
}

/// Tables a pool needs for `Stage2::<F>::new` and mapping `len` bytes with
/// 4 KiB pages at any IPA: the root (plus what an allocator starting off
/// its alignment wastes) and, per level below it, a table per range one
/// table of that level covers (one more when the range is not aligned to
/// it). For ARM that is 3 + a level-3 table per 2 MiB + a level-2 table per
/// 1 GiB; a fixed pool (it was 4 MiB: 1024 tables) stops at about 2 GiB of
/// guest.
pub fn tables_for<F: PageTableFormat>(len: u64) -> u64 {
    let bits = F::INDEX_BITS;
    let mut n = 2 * root_tables::<F>() - 1;
    let mut span = PAGE_SHIFT;
    for level in (1..bits.len()).rev() {
        span += bits[level];
        n += len.div_ceil(1 << span) + 1;
    }
    n
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    table: u64,
    index: usize,
    level: usize,
}

impl Slot {
    fn read<F: PageTableFormat>(self, mem: &mut impl TableMemory) -> Descriptor {
        F::read(mem.table_mut(self.table)[self.index], self.level)
    }
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
