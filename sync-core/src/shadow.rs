//! Shadow pages: the content of each page as last sent to the standbys,
//! which deltas are computed against.
//!
//! With `Budget::Full` every page can have a shadow; with `Budget::Pages(n)`
//! at most `n` do, and CLOCK (second chance) picks the page to forget. A
//! page without a shadow is sent whole, so hit rate is what the budget buys.
//! A shadow's reference bit is set when its page is sent again (updated, or
//! looked up for a delta), not when the shadow is first made: a page sent
//! once (the first epoch's whole guest, a buffer written once) goes before
//! the pages written epoch after epoch, which a fresh shadow would
//! otherwise push out when the budget is about the working set.
//! Each shadow keeps its page hash, so an unchanged page is encoded without
//! rehashing and a changed one by updating that hash.
//!
//! Storage grows in chunks of pages as shadows are first made, never by
//! reallocating what exists (a 1 GiB guest's full shadow is 1 GiB; copying it
//! to grow would need 2 GiB for a moment).

use crate::delta::Shadow;
use crate::page::{hash_page, AlignedPage, Page, PAGE_SIZE};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// How many pages may have a shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Every page of the range.
    Full,
    /// At most this many pages; CLOCK replacement beyond.
    Pages(usize),
}

/// Pages per storage chunk (128 KiB).
const CHUNK: usize = 32;
/// `index` value for "no shadow".
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    page: u32,
    hash: u64,
    referenced: bool,
}

/// Counters since creation (or `reset_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Why a shadow store could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowError {
    /// More pages than a u32 can number (the slot index uses u32::MAX).
    TooManyPages,
}

pub struct ShadowStore {
    /// Guest page -> slot, or NONE.
    index: Vec<u32>,
    slots: Vec<Slot>,
    chunks: Vec<Box<[AlignedPage]>>,
    capacity: usize,
    hand: usize,
    stats: ShadowStats,
}

impl ShadowStore {
    /// A store for pages `0..page_count` with the given budget. Nothing is
    /// allocated for page content until shadows are made.
    pub fn new(page_count: u64, budget: Budget) -> Result<Self, ShadowError> {
        if page_count >= NONE as u64 {
            return Err(ShadowError::TooManyPages);
        }
        let n = page_count as usize;
        let capacity = match budget {
            Budget::Full => n,
            Budget::Pages(p) => p.min(n),
        };
        Ok(ShadowStore { index: vec![NONE; n], slots: Vec::new(), chunks: Vec::new(), capacity, hand: 0, stats: ShadowStats::default() })
    }

    pub fn page_count(&self) -> u64 {
        self.index.len() as u64
    }

    /// The shadow of `page`, counting a hit or a miss.
    pub fn get(&mut self, page: u64) -> Option<&Page> {
        self.get_shadow(page).map(|s| s.page)
    }

    /// The shadow of `page` with its hash (what `delta::encode_with`
    /// takes), counting a hit or a miss.
    pub fn get_shadow(&mut self, page: u64) -> Option<Shadow<'_>> {
        let slot = self.slot_of(page);
        if slot == NONE {
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        let s = &mut self.slots[slot as usize];
        s.referenced = true;
        let hash = s.hash;
        Some(Shadow { page: self.data(slot as usize), hash })
    }

    /// `get_shadow(page)`, and `peek(next)` borrowed beside it (the
    /// encoder loads the next page's shadow while it encodes this one).
    pub fn get_shadow_and_peek(&mut self, page: u64, next: Option<u64>) -> (Option<Shadow<'_>>, Option<&Page>) {
        let counted = self.get_shadow(page).is_some();
        let this = &*self;
        let shadow = counted.then(|| this.slot_of(page)).map(|slot| Shadow { page: this.data(slot as usize), hash: this.slots[slot as usize].hash });
        (shadow, next.and_then(|n| this.peek(n)))
    }

    /// The shadow of `page`, without counting or touching CLOCK state.
    pub fn peek(&self, page: u64) -> Option<&Page> {
        let slot = self.slot_of(page);
        (slot != NONE).then(|| self.data(slot as usize))
    }

    /// Records `content` as what was last sent for `page`.
    pub fn update(&mut self, page: u64, content: &Page) {
        self.update_with_hash(page, content, hash_page(content));
    }

    /// As `update`, with the content's hash already known (the encoder
    /// returns it). A page outside the range is ignored; with a zero budget
    /// nothing is kept.
    pub fn update_with_hash(&mut self, page: u64, content: &Page, hash: u64) {
        let Some(&current) = self.index.get(page as usize) else {
            return;
        };
        let (slot, again) = if current != NONE {
            (current as usize, true)
        } else {
            match self.take_slot(page as u32) {
                Some(s) => (s, false),
                None => return,
            }
        };
        let s = &mut self.slots[slot];
        s.hash = hash;
        // Sent again: likely to be written again (see the module doc).
        s.referenced |= again;
        self.data_mut(slot).copy_from_slice(content);
    }

    /// Forgets the shadow of `page` (the next send of it goes whole).
    pub fn invalidate(&mut self, page: u64) {
        let slot = self.slot_of(page);
        if slot == NONE {
            return;
        }
        // Move the last slot into the hole so slots stay dense.
        let slot = slot as usize;
        let last = self.slots.len() - 1;
        self.index[page as usize] = NONE;
        if slot != last {
            let moved = self.slots[last];
            self.slots[slot] = moved;
            let (src_c, src_o) = (last / CHUNK, last % CHUNK);
            let content = self.chunks[src_c][src_o];
            self.data_mut(slot).copy_from_slice(&content.0);
            self.index[moved.page as usize] = slot as u32;
        }
        self.slots.pop();
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    /// Forgets every shadow (a standby that lost its image); keeps storage.
    pub fn clear(&mut self) {
        for s in &self.slots {
            self.index[s.page as usize] = NONE;
        }
        self.slots.clear();
        self.hand = 0;
    }

    pub fn stats(&self) -> ShadowStats {
        self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = ShadowStats::default();
    }

    /// Hits over lookups, 0.0 before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let total = self.stats.hits + self.stats.misses;
        if total == 0 {
            0.0
        } else {
            self.stats.hits as f64 / total as f64
        }
    }

    /// Pages that have a shadow now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Most pages that can have a shadow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of shadow content held now (pages with a shadow x 4096).
    pub fn bytes_used(&self) -> usize {
        self.slots.len() * PAGE_SIZE
    }

    /// Bytes allocated in all: content chunks, slot table and page index.
    pub fn bytes_allocated(&self) -> usize {
        self.chunks.len() * CHUNK * PAGE_SIZE + self.slots.capacity() * core::mem::size_of::<Slot>() + self.index.len() * core::mem::size_of::<u32>()
    }

    fn slot_of(&self, page: u64) -> u32 {
        self.index.get(page as usize).copied().unwrap_or(NONE)
    }

    fn data(&self, slot: usize) -> &Page {
        &self.chunks[slot / CHUNK][slot % CHUNK]
    }

    fn data_mut(&mut self, slot: usize) -> &mut Page {
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }

    /// A slot for a page that has none: a fresh one while under budget,
    /// else the CLOCK victim's.
    fn take_slot(&mut self, page: u32) -> Option<usize> {
        if self.slots.len() < self.capacity {
            let slot = self.slots.len();
            if slot / CHUNK == self.chunks.len() {
                let chunk = CHUNK.min(self.capacity - slot);
                self.chunks.push(vec![AlignedPage::ZERO; chunk].into_boxed_slice());
            }
            self.slots.push(Slot { page, hash: 0, referenced: false });
            self.index[page as usize] = slot as u32;
            return Some(slot);
        }
        if self.slots.is_empty() {
            return None; // zero budget
        }
        // CLOCK: skip (and clear) referenced slots; at most one full turn
        // clears them all, so the loop ends within two turns.
        loop {
            let h = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let s = &mut self.slots[h];
            if s.referenced {
                s.referenced = false;
                continue;
            }
            self.index[s.page as usize] = NONE;
            s.page = page;
            self.index[page as usize] = h as u32;
            self.stats.evictions += 1;
            return Some(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(v: u8) -> Page {
        [v; PAGE_SIZE]
    }

    #[test]
    fn full_budget_keeps_everything() {
        let mut s = ShadowStore::new(100, Budget::Full).unwrap();
        assert!(s.get(3).is_none());
        for p in 0..100 {
            s.update(p, &page(p as u8));
        }
        for p in 0..100 {
            let sh = s.get_shadow(p).unwrap();
            assert_eq!(sh.page, &page(p as u8));
            assert_eq!(sh.hash, hash_page(&page(p as u8)));
        }
        let st = s.stats();
        assert_eq!((st.hits, st.misses, st.evictions), (100, 1, 0));
        assert!((s.hit_rate() - 100.0 / 101.0).abs() < 1e-12);
        assert_eq!(s.bytes_used(), 100 * PAGE_SIZE);
        s.update_with_hash(1000, &page(1), 0); // outside the range: ignored
        assert_eq!(s.len(), 100);
    }

    /// Shadows sit on page boundaries (no compare load spans two cache
    /// lines), and `get_shadow_and_peek` counts as `get_shadow` does.
    #[test]
    fn shadows_are_page_aligned_and_peeked_beside() {
        let mut s = ShadowStore::new(70, Budget::Full).unwrap();
        for p in 0..70 {
            s.update(p, &page(p as u8));
        }
        for p in 0..70 {
            assert_eq!(s.peek(p).unwrap().as_ptr() as usize % PAGE_SIZE, 0, "page {p}");
        }
        let (sh, next) = s.get_shadow_and_peek(5, Some(6));
        assert_eq!((sh.unwrap().page, sh.unwrap().hash, next), (&page(5), hash_page(&page(5)), Some(&page(6))));
        assert_eq!(s.get_shadow_and_peek(69, Some(70)).1, None);
        s.invalidate(7);
        assert!(s.get_shadow_and_peek(7, None).0.is_none());
        let st = s.stats();
        assert_eq!((st.hits, st.misses), (2, 1));
    }

    #[test]
    fn clock_gives_a_second_chance() {
        let mut s = ShadowStore::new(10, Budget::Pages(3)).unwrap();
        s.update(0, &page(0));
        s.update(1, &page(1));
        s.update(2, &page(2));
        // None sent twice yet: the hand evicts 0 at once.
        s.update(3, &page(3));
        assert!(s.peek(0).is_none());
        assert_eq!(s.stats().evictions, 1);
        // Touch 1; the hand is at slot 1 -> second chance, evicts page 2.
        assert!(s.get(1).is_some());
        s.update(4, &page(4));
        assert!(s.peek(2).is_none());
        assert_eq!(s.peek(1), Some(&page(1)));
        assert_eq!(s.peek(3), Some(&page(3)));
        assert_eq!(s.peek(4), Some(&page(4)));
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes_used(), 3 * PAGE_SIZE);
    }

    /// Pages sent every epoch keep their shadows while pages sent once
    /// pass through the rest of the budget.
    #[test]
    fn pages_sent_again_outlive_pages_sent_once() {
        let mut s = ShadowStore::new(100, Budget::Pages(3)).unwrap();
        for round in 0..20u8 {
            s.update(1, &page(round));
            s.update(2, &page(round));
            s.update(10 + round as u64, &page(round));
            if round > 0 {
                assert_eq!(s.peek(1), Some(&page(round)), "round {round}");
                assert_eq!(s.peek(2), Some(&page(round)), "round {round}");
            }
        }
        assert_eq!(s.stats().evictions, 19);
    }

    #[test]
    fn zero_budget_keeps_nothing() {
        let mut s = ShadowStore::new(10, Budget::Pages(0)).unwrap();
        s.update(1, &page(1));
        assert!(s.get(1).is_none());
        assert_eq!(s.stats().misses, 1);
        assert_eq!(s.bytes_used(), 0);
    }

    #[test]
    fn invalidate_and_clear() {
        let mut s = ShadowStore::new(50, Budget::Pages(40)).unwrap();
        for p in 0..40 {
            s.update(p, &page(p as u8));
        }
        s.invalidate(5);
        s.invalidate(5);
        assert!(s.peek(5).is_none());
        assert_eq!(s.len(), 39);
        for p in (0..40).filter(|&p| p != 5) {
            assert_eq!(s.peek(p), Some(&page(p as u8)), "page {p}");
        }
        s.clear();
        assert!(s.is_empty());
        assert!((0..50).all(|p| s.peek(p).is_none()));
        s.update(7, &page(9));
        assert_eq!(s.peek(7), Some(&page(9)));
    }
}
