//! Which guest pages were written in an epoch.
//!
//! A bitmap answers "is this page dirty" in O(1) and keeps each page in the
//! list once; the list gives iteration and clearing in O(dirty pages), not
//! O(guest RAM), which matters at every epoch cut (a 1 GiB guest has 262,144
//! pages, an epoch typically dirties a few hundred).

use crate::page::PAGE_SIZE;
use alloc::vec;
use alloc::vec::Vec;

/// Why a dirty set could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyError {
    /// The base guest-physical address is not page aligned.
    UnalignedBase,
    /// More pages than a u32 page number can name (16 TiB of RAM).
    TooManyPages,
}

/// The dirty pages of one guest RAM range, for one epoch.
#[derive(Clone, Debug)]
pub struct DirtySet {
    base_gpa: u64,
    page_count: u64,
    bits: Vec<u64>,
    /// Page numbers (relative to `base_gpa`) in the order first marked.
    list: Vec<u32>,
    /// Marks that named a page outside the range (a caller bug worth a
    /// counter: such a write would escape sync).
    out_of_range: u64,
}

impl DirtySet {
    /// A clean set for `page_count` pages starting at `base_gpa`.
    pub fn new(base_gpa: u64, page_count: u64) -> Result<Self, DirtyError> {
        if !base_gpa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(DirtyError::UnalignedBase);
        }
        if page_count > u32::MAX as u64 {
            return Err(DirtyError::TooManyPages);
        }
        let words = page_count.div_ceil(64) as usize;
        Ok(DirtySet { base_gpa, page_count, bits: vec![0; words], list: Vec::new(), out_of_range: 0 })
    }

    pub fn base_gpa(&self) -> u64 {
        self.base_gpa
    }

    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Marks page `page` (relative to the base). Returns true when it was
    /// clean before. A page outside the range is counted, not marked.
    #[inline]
    pub fn mark(&mut self, page: u64) -> bool {
        if page >= self.page_count {
            self.out_of_range += 1;
            return false;
        }
        let (w, b) = ((page / 64) as usize, page % 64);
        let bit = 1u64 << b;
        if self.bits[w] & bit != 0 {
            return false;
        }
        self.bits[w] |= bit;
        // page < page_count <= u32::MAX, checked in new().
        self.list.push(page as u32);
        true
    }

    /// Marks the page holding guest-physical address `gpa`. `None` when the
    /// address is outside the range (nothing is marked).
    #[inline]
    pub fn mark_gpa(&mut self, gpa: u64) -> Option<bool> {
        let page = self.page_of(gpa)?;
        Some(self.mark(page))
    }

    /// Marks every page touched by `len` bytes at `gpa` (a hypervisor write
    /// to guest memory). Returns how many were newly dirty, or `None` when
    /// any byte is outside the range (then nothing is marked).
    pub fn mark_range(&mut self, gpa: u64, len: u64) -> Option<u64> {
        if len == 0 {
            return Some(0);
        }
        let first = self.page_of(gpa)?;
        let last = self.page_of(gpa.checked_add(len - 1)?)?;
        Some((first..=last).filter(|&p| self.mark(p)).count() as u64)
    }

    /// The page number (relative to the base) of `gpa`, if in range.
    #[inline]
    pub fn page_of(&self, gpa: u64) -> Option<u64> {
        let page = gpa.checked_sub(self.base_gpa)? / PAGE_SIZE as u64;
        (page < self.page_count).then_some(page)
    }

    #[inline]
    pub fn contains(&self, page: u64) -> bool {
        page < self.page_count && self.bits[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Dirty pages, in the order they were first marked (or address order
    /// after `sort`).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.list.iter().map(|&p| p as u64)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Orders the list by address: neighbouring pages then sit next to each
    /// other in a batch, which helps zstd, and output is deterministic.
    pub fn sort(&mut self) {
        self.list.sort_unstable();
    }

    /// Marks that fell outside the range since creation.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// Empties the set in O(dirty pages), keeping its allocations.
    pub fn clear(&mut self) {
        for &p in &self.list {
            self.bits[(p / 64) as usize] = 0;
        }
        self.list.clear();
    }
}

/// The set being filled (`current`) and the one cut at the last epoch
/// boundary (`previous`), swapped at each cut without allocating.
#[derive(Clone, Debug)]
pub struct DirtyTracker {
    current: DirtySet,
    previous: DirtySet,
}

impl DirtyTracker {
    pub fn new(base_gpa: u64, page_count: u64) -> Result<Self, DirtyError> {
        let current = DirtySet::new(base_gpa, page_count)?;
        let previous = current.clone();
        Ok(DirtyTracker { current, previous })
    }

    /// The set marks go to.
    #[inline]
    pub fn current(&mut self) -> &mut DirtySet {
        &mut self.current
    }

    #[inline]
    pub fn mark(&mut self, page: u64) -> bool {
        self.current.mark(page)
    }

    #[inline]
    pub fn mark_gpa(&mut self, gpa: u64) -> Option<bool> {
        self.current.mark_gpa(gpa)
    }

    /// Ends the epoch: the filled set becomes `previous` (returned, to be
    /// encoded) and marking continues into an empty set, the one cut last
    /// time, cleared in O(its dirty pages).
    pub fn cut(&mut self) -> &mut DirtySet {
        self.previous.clear();
        core::mem::swap(&mut self.current, &mut self.previous);
        &mut self.previous
    }

    /// Whether `page` was marked in the open epoch.
    #[inline]
    pub fn is_marked(&self, page: u64) -> bool {
        self.current.contains(page)
    }

    /// The set cut last.
    pub fn previous(&self) -> &DirtySet {
        &self.previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn mark_reports_new_pages_once_in_order() {
        let mut s = DirtySet::new(0x4000_0000, 100).unwrap();
        assert!(s.mark(7));
        assert!(s.mark(3));
        assert!(!s.mark(7));
        assert!(s.mark(99));
        assert!(!s.mark(100), "outside");
        assert_eq!(s.out_of_range(), 1);
        assert_eq!(s.iter().collect::<Vec<_>>(), [7, 3, 99]);
        assert_eq!(s.len(), 3);
        assert!(s.contains(3) && !s.contains(4) && !s.contains(1000));
        s.sort();
        assert_eq!(s.iter().collect::<Vec<_>>(), [3, 7, 99]);
    }

    #[test]
    fn gpas_map_to_pages_and_ranges_cover_every_page() {
        let mut s = DirtySet::new(0x4000_0000, 16).unwrap();
        assert_eq!(s.mark_gpa(0x4000_1FFF), Some(true));
        assert_eq!(s.mark_gpa(0x4000_1000), Some(false));
        assert_eq!(s.mark_gpa(0x3FFF_FFFF), None);
        assert_eq!(s.mark_gpa(0x4001_0000), None);
        // 2 bytes straddling pages 2/3, then 3 pages from page 5.
        assert_eq!(s.mark_range(0x4000_2FFF, 2), Some(2));
        assert_eq!(s.mark_range(0x4000_5000, 3 * 4096), Some(3));
        assert_eq!(s.mark_range(0x4000_F000, 4097), None, "runs past the end");
        assert_eq!(s.iter().collect::<Vec<_>>(), [1, 2, 3, 5, 6, 7]);
        assert_eq!(DirtySet::new(0x123, 1).unwrap_err(), DirtyError::UnalignedBase);
    }

    #[test]
    fn cut_swaps_and_recycles() {
        let mut t = DirtyTracker::new(0, 1 << 20).unwrap();
        t.mark(5);
        t.mark(500_000);
        let cut = t.cut();
        assert_eq!(cut.iter().collect::<Vec<_>>(), [5, 500_000]);
        assert!(t.current().is_empty());
        assert!(t.mark(5), "clean again in the new epoch");
        t.mark(6);
        let cut = t.cut();
        assert_eq!(cut.iter().collect::<Vec<_>>(), [5, 6]);
        // The recycled set was cleared: page 500_000 is not dirty any more.
        assert!(!t.current().contains(500_000));
        assert!(t.current().is_empty());
        assert!(t.mark(500_000));
    }
}
