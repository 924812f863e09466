//! Digests of a whole guest image.
//!
//! `PageHashes` keeps every page's 64-bit page hash (the one records carry)
//! and an order-independent sum over them, so the image digest after an
//! epoch costs O(pages changed), not O(guest RAM): both sides can put one
//! in every EpochCommit even at 50 ms epochs on a 1 GiB guest (hashing 1 GiB
//! with BLAKE3 takes about a second). Each page contributes
//! `mix(page number, page hash)` to two independent 64-bit lanes; a change
//! of any page changes its term, and unrelated changes cancel only by
//! chance (~2^-128). It finds divergence; the wire's AEAD stops attackers.
//!
//! `content_digest` is the slow, exact one: BLAKE3 over every byte, for
//! tests and for checks at a switch.

use alloc::vec;
use alloc::vec::Vec;

use crate::page::{hash_page, Page, ZERO_PAGE_HASH};
use crate::wire::Digest;

/// Read access to a guest image, page by page (guest RAM on the active
/// side, the committed image on a standby).
pub trait PageMemory {
    fn page_count(&self) -> u64;
    /// Page `n`, or None past the end.
    fn page(&self, n: u64) -> Option<&Page>;
}

/// Write access, for the standby's image.
pub trait PageMemoryMut: PageMemory {
    fn page_mut(&mut self, n: u64) -> Option<&mut Page>;
}

/// A guest image held in a Vec of pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMemory {
    pages: Vec<Page>,
}

impl VecMemory {
    /// An all-zero image of `page_count` pages.
    pub fn zeroed(page_count: usize) -> Self {
        Self { pages: vec![[0u8; crate::page::PAGE_SIZE]; page_count] }
    }
    pub fn pages(&self) -> &[Page] {
        &self.pages
    }
    pub fn pages_mut(&mut self) -> &mut [Page] {
        &mut self.pages
    }
}

impl PageMemory for VecMemory {
    fn page_count(&self) -> u64 {
        self.pages.len() as u64
    }
    fn page(&self, n: u64) -> Option<&Page> {
        self.pages.get(usize::try_from(n).ok()?)
    }
}

impl PageMemoryMut for VecMemory {
    fn page_mut(&mut self, n: u64) -> Option<&mut Page> {
        self.pages.get_mut(usize::try_from(n).ok()?)
    }
}

/// Exact digest of an image: BLAKE3 over the page count and every byte.
pub fn content_digest(mem: &impl PageMemory) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&mem.page_count().to_le_bytes());
    for n in 0..mem.page_count() {
        // page_count() bounds n, so every page exists; a missing one would
        // be a broken PageMemory and is hashed as absent (no bytes).
        if let Some(p) = mem.page(n) {
            h.update(p);
        }
    }
    *h.finalize().as_bytes()
}

const LANE_KEYS: [u64; 2] = [0x9E37_79B9_7F4A_7C15, 0xD6E8_FEB8_6659_FD93];

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn term(lane: usize, page: u64, hash: u64) -> u64 {
    let k = LANE_KEYS[lane];
    splitmix(hash ^ splitmix(page.wrapping_mul(k) ^ k))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageOutOfRange;

/// Every page's hash and their incremental sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageHashes {
    hashes: Vec<u64>,
    lanes: [u64; 2],
}

impl PageHashes {
    /// Hashes of an all-zero image.
    pub fn zeroed(page_count: u64) -> Self {
        let mut s = Self { hashes: vec![ZERO_PAGE_HASH; page_count as usize], lanes: [0; 2] };
        for p in 0..page_count {
            s.add(p, ZERO_PAGE_HASH);
        }
        s
    }

    /// Hashes of an existing image (reads every page once).
    pub fn of_memory(mem: &impl PageMemory) -> Self {
        let n = mem.page_count();
        let mut s = Self { hashes: Vec::with_capacity(n as usize), lanes: [0; 2] };
        for p in 0..n {
            let h = mem.page(p).map_or(ZERO_PAGE_HASH, hash_page);
            s.hashes.push(h);
            s.add(p, h);
        }
        s
    }

    fn add(&mut self, page: u64, hash: u64) {
        for (l, lane) in self.lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_add(term(l, page, hash));
        }
    }

    fn sub(&mut self, page: u64, hash: u64) {
        for (l, lane) in self.lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_sub(term(l, page, hash));
        }
    }

    pub fn page_count(&self) -> u64 {
        self.hashes.len() as u64
    }

    pub fn get(&self, page: u64) -> Option<u64> {
        self.hashes.get(usize::try_from(page).ok()?).copied()
    }

    /// Page `page` now hashes to `hash`.
    pub fn set(&mut self, page: u64, hash: u64) -> Result<(), PageOutOfRange> {
        let old = self.get(page).ok_or(PageOutOfRange)?;
        self.sub(page, old);
        self.add(page, hash);
        self.hashes[page as usize] = hash; // in range: get() succeeded
        Ok(())
    }

    /// The image digest.
    pub fn digest(&self) -> Digest {
        digest_of(self.lanes, self.page_count())
    }

    /// The digest the image would have after `changes` (page, new hash),
    /// without changing anything.
    pub fn digest_after(&self, changes: impl IntoIterator<Item = (u64, u64)>) -> Result<Digest, PageOutOfRange> {
        let mut t = Self { hashes: Vec::new(), lanes: self.lanes };
        for (p, h) in changes {
            t.sub(p, self.get(p).ok_or(PageOutOfRange)?);
            t.add(p, h);
        }
        Ok(digest_of(t.lanes, self.page_count()))
    }
}

fn digest_of(lanes: [u64; 2], page_count: u64) -> Digest {
    // BLAKE3 only spreads the 128-bit sum over the wire's 32-byte digest
    // and binds the image size; it costs a few hundred ns.
    let mut h = blake3::Hasher::new_derive_key("VMsync 2025 image digest of page hashes v1");
    h.update(&lanes[0].to_le_bytes());
    h.update(&lanes[1].to_le_bytes());
    h.update(&page_count.to_le_bytes());
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_digest_equals_recomputed() {
        let mut mem = VecMemory::zeroed(16);
        let mut ph = PageHashes::zeroed(16);
        assert_eq!(ph, PageHashes::of_memory(&mem));
        let d0 = ph.digest();
        for (p, b) in [(3u64, 1u8), (7, 2), (3, 5), (15, 9)] {
            mem.page_mut(p).unwrap()[100] = b;
            ph.set(p, hash_page(mem.page(p).unwrap())).unwrap();
            assert_eq!(ph, PageHashes::of_memory(&mem));
        }
        assert_ne!(ph.digest(), d0);
        // Back to zero: the digest returns to the zero image's.
        for p in [3u64, 7, 15] {
            mem.page_mut(p).unwrap().fill(0);
            ph.set(p, ZERO_PAGE_HASH).unwrap();
        }
        assert_eq!(ph.digest(), d0);
        assert_eq!(ph.set(16, 0), Err(PageOutOfRange));
    }

    #[test]
    fn digest_after_predicts_without_changing() {
        let mut ph = PageHashes::zeroed(4);
        let before = ph.clone();
        let predicted = ph.digest_after([(1, 11), (2, 22)]).unwrap();
        assert_eq!(ph, before);
        ph.set(1, 11).unwrap();
        ph.set(2, 22).unwrap();
        assert_eq!(ph.digest(), predicted);
        assert_eq!(ph.digest_after([(4, 1)]), Err(PageOutOfRange));
    }

    #[test]
    fn swapped_pages_and_sizes_differ() {
        let mut a = PageHashes::zeroed(4);
        let mut b = PageHashes::zeroed(4);
        a.set(0, 1).unwrap();
        a.set(1, 2).unwrap();
        b.set(0, 2).unwrap();
        b.set(1, 1).unwrap();
        assert_ne!(a.digest(), b.digest(), "content moved between pages");
        assert_ne!(PageHashes::zeroed(4).digest(), PageHashes::zeroed(5).digest());
    }

    #[test]
    fn content_digest_sees_every_byte() {
        let mut mem = VecMemory::zeroed(3);
        let d = content_digest(&mem);
        mem.page_mut(2).unwrap()[4095] = 1;
        assert_ne!(content_digest(&mem), d);
        assert_ne!(content_digest(&VecMemory::zeroed(2)), content_digest(&VecMemory::zeroed(3)));
    }
}
