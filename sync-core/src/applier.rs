//! The standby's applier: the committed guest image, and the epoch being
//! received, staged beside it.
//!
//! Records of an epoch are applied into staging copies, never into the
//! committed image: each page's record applies to the page's *committed*
//! content (the base the active side diffed against, see `resume`), a
//! Delta's result is checked against the record's hash (a Zero or Full
//! page's hash is computed here: see `delta`), and the staged pages
//! replace the committed ones only at `commit`, after the page count and
//! the image digest matched. Any error, or an epoch that never commits (a
//! cut link), discards staging: the committed image is the image of the
//! last committed epoch, always.
//!
//! A catch-up (see `catchup`) stages one epoch over several cuts: its
//! EpochCommit names the final cut, at or after the epoch begun, and a page
//! may be staged more than once in it (the later record replaces the staged
//! page; the commit's `page_count` counts records, not pages).

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::delta::{self, DeltaError};
use crate::digest::{PageHashes, PageMemoryMut};
use crate::page::{Page, PAGE_SIZE};
use crate::wire::{Digest, Epoch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// A batch or commit with no epoch begun.
    NoEpoch,
    /// `begin` while an epoch is staged.
    EpochOpen,
    /// The epoch is not after the committed one.
    StaleEpoch,
    /// The epoch's records were made against another image than ours.
    BaseMismatch {
        have: Epoch,
        want: Epoch,
    },
    /// Commit of an epoch before the staged one.
    WrongEpoch,
    PageOutOfRange,
    Record(DeltaError),
    /// The epoch's record count differs from the commit's.
    PageCountMismatch,
    /// The image after the epoch would not have the commit's digest.
    DigestMismatch,
    /// No memory to stage the page: the epoch is dropped (the active side
    /// resends from the committed epoch).
    OutOfMemory,
}

/// What the staging of one epoch holds.
struct Staging {
    epoch: Epoch,
    /// Staged pages: page number, new content, its hash.
    pages: Vec<(u64, Box<Page>, u64)>,
    /// Records applied (a page replaced counts again).
    records: u64,
}

/// `slot` entry of a page not staged.
const NOT_STAGED: u32 = u32::MAX;

/// The standby's image and the epoch in flight.
pub struct Applier<M: PageMemoryMut> {
    image: M,
    hashes: PageHashes,
    committed: Epoch,
    staging: Option<Staging>,
    /// Per guest page: its index in the staged pages, or NOT_STAGED. Made
    /// at the first epoch, kept (all NOT_STAGED between epochs).
    slot: Vec<u32>,
    /// Page buffers kept from earlier epochs (bounded), to spare the
    /// allocator 4 KiB allocations at every epoch.
    pool: Vec<Box<Page>>,
}

/// Most page buffers kept for reuse (4 MiB).
const POOL_MAX: usize = 1024;

impl<M: PageMemoryMut> Applier<M> {
    /// An applier over `image`, which holds the image of epoch `committed`
    /// (a fresh standby: all zeros at epoch 0). Hashes every page once.
    pub fn new(image: M, committed: Epoch) -> Self {
        let hashes = PageHashes::of_memory(&image);
        Self::with_hashes(image, committed, hashes)
    }

    /// As `new`, with the page hashes known (e.g. `PageHashes::zeroed`
    /// for a zeroed image, which spares hashing it).
    pub fn with_hashes(image: M, committed: Epoch, hashes: PageHashes) -> Self {
        Self { image, hashes, committed, staging: None, slot: Vec::new(), pool: Vec::new() }
    }

    pub fn committed_epoch(&self) -> Epoch {
        self.committed
    }

    /// The committed image.
    pub fn image(&self) -> &M {
        &self.image
    }

    pub fn page_hashes(&self) -> &PageHashes {
        &self.hashes
    }

    /// Digest of the committed image (as in EpochCommit).
    pub fn digest(&self) -> Digest {
        self.hashes.digest()
    }

    /// The epoch being staged, if any.
    pub fn staging_epoch(&self) -> Option<Epoch> {
        self.staging.as_ref().map(|s| s.epoch)
    }

    /// Gives up the image, its hashes and epoch (a switch makes it the
    /// guest's RAM). A staged epoch is dropped.
    pub fn into_parts(self) -> (M, PageHashes, Epoch) {
        (self.image, self.hashes, self.committed)
    }

    /// Starts staging `epoch`, whose records were encoded against the image
    /// of `base`.
    pub fn begin(&mut self, epoch: Epoch, base: Epoch) -> Result<(), ApplyError> {
        if self.staging.is_some() {
            self.abort();
            return Err(ApplyError::EpochOpen);
        }
        if epoch <= self.committed {
            return Err(ApplyError::StaleEpoch);
        }
        if base != self.committed {
            return Err(ApplyError::BaseMismatch { have: self.committed, want: base });
        }
        let n = self.image.page_count() as usize;
        if self.slot.len() != n {
            // Page numbers index it; a guest has far fewer than u32::MAX pages.
            self.slot.try_reserve_exact(n).map_err(|_| ApplyError::OutOfMemory)?;
            self.slot.resize(n, NOT_STAGED);
        }
        self.staging = Some(Staging { epoch, pages: Vec::new(), records: 0 });
        Ok(())
    }

    /// Drops the staged epoch; the committed image is untouched.
    pub fn abort(&mut self) {
        if let Some(s) = self.staging.take() {
            for (p, _, _) in &s.pages {
                self.slot[*p as usize] = NOT_STAGED;
            }
            let room = POOL_MAX.saturating_sub(self.pool.len());
            self.pool.extend(s.pages.into_iter().take(room).map(|(_, b, _)| b));
        }
    }

    /// Applies a decompressed batch of page records into staging. On error
    /// the whole epoch is dropped.
    pub fn apply_batch(&mut self, records: &[u8]) -> Result<(), ApplyError> {
        if self.staging.is_none() {
            return Err(ApplyError::NoEpoch);
        }
        let mut batch = delta::BatchDecoder::new(records);
        loop {
            let r = match batch.next_record() {
                Ok(Some(rec)) => self.apply_one(&rec),
                Ok(None) => return Ok(()),
                Err(e) => Err(ApplyError::Record(e)),
            };
            if let Err(e) = r {
                self.abort();
                return Err(e);
            }
        }
    }

    /// Applies one record into staging.
    fn apply_one(&mut self, rec: &delta::PageRecordRef<'_>) -> Result<(), ApplyError> {
        let p = rec.page_num;
        if p >= self.image.page_count() {
            return Err(ApplyError::PageOutOfRange);
        }
        let staging = self.staging.as_mut().ok_or(ApplyError::NoEpoch)?;
        // p < page_count = slot.len() (set at begin).
        let at = self.slot[p as usize];
        let committed = self.image.page(p).ok_or(ApplyError::PageOutOfRange)?;
        if at != NOT_STAGED {
            // Staged before in this epoch (a catch-up): the record applies to
            // the committed page like any other, and replaces what was staged.
            let (_, buf, hash) = &mut staging.pages[at as usize];
            buf.copy_from_slice(committed);
            *hash = delta::apply_in_place(buf, rec).map_err(ApplyError::Record)?;
            staging.records += 1;
            return Ok(());
        }
        staging.pages.try_reserve(1).map_err(|_| ApplyError::OutOfMemory)?;
        let Some(mut buf) = self.pool.pop().or_else(new_page) else { return Err(ApplyError::OutOfMemory) };
        buf.copy_from_slice(committed);
        let hash = match delta::apply_in_place(&mut buf, rec) {
            Ok(h) => h,
            Err(e) => {
                self.pool.push(buf);
                return Err(ApplyError::Record(e));
            }
        };
        self.slot[p as usize] = staging.pages.len() as u32;
        staging.pages.push((p, buf, hash));
        staging.records += 1;
        Ok(())
    }

    /// Commits the staged epoch if it is `epoch`, holds `page_count` records
    /// and gives the image `digest`. On error the epoch is dropped and the
    /// committed image is untouched.
    pub fn commit(&mut self, epoch: Epoch, digest: &Digest, page_count: u64) -> Result<(), ApplyError> {
        let r = self.check_commit(epoch, digest, page_count);
        if r.is_err() {
            self.abort();
            return r;
        }
        let Some(mut s) = self.staging.take() else {
            return Err(ApplyError::NoEpoch); // check_commit saw it: unreachable
        };
        for (p, page, hash) in s.pages.drain(..) {
            self.slot[p as usize] = NOT_STAGED;
            // Staged pages were all found in the image when applied.
            if let Some(dst) = self.image.page_mut(p) {
                dst.copy_from_slice(&page[..]);
            }
            let _ = self.hashes.set(p, hash);
            if self.pool.len() < POOL_MAX {
                self.pool.push(page);
            }
        }
        self.committed = epoch;
        Ok(())
    }

    fn check_commit(&self, epoch: Epoch, digest: &Digest, page_count: u64) -> Result<(), ApplyError> {
        let s = self.staging.as_ref().ok_or(ApplyError::NoEpoch)?;
        // A catch-up begun at `s.epoch` commits at a later cut.
        if epoch < s.epoch {
            return Err(ApplyError::WrongEpoch);
        }
        if s.records != page_count {
            return Err(ApplyError::PageCountMismatch);
        }
        let after = self.hashes.digest_after(s.pages.iter().map(|(p, _, h)| (*p, *h))).map_err(|_| ApplyError::PageOutOfRange)?;
        if &after != digest {
            return Err(ApplyError::DigestMismatch);
        }
        Ok(())
    }
}

/// A new page buffer; None when memory is out.
fn new_page() -> Option<Box<Page>> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(PAGE_SIZE).ok()?;
    v.resize(PAGE_SIZE, 0);
    v.into_boxed_slice().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{encode_page_record, BatchEncoder};
    use crate::digest::{content_digest, VecMemory};
    use crate::page::hash_page;

    fn page(seed: u8) -> Page {
        core::array::from_fn(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
    }

    /// The digest an image of `pages` would have.
    fn digest_of(pages: &[Page]) -> Digest {
        let mut m = VecMemory::zeroed(pages.len());
        m.pages_mut().copy_from_slice(pages);
        PageHashes::of_memory(&m).digest()
    }

    fn fresh(n: usize) -> Applier<VecMemory> {
        Applier::with_hashes(VecMemory::zeroed(n), 0, PageHashes::zeroed(n as u64))
    }

    #[test]
    fn epochs_commit_and_deltas_use_the_committed_base() {
        let mut a = fresh(4);
        let mut want = [[0u8; PAGE_SIZE]; 4];
        // Epoch 1: pages 1 and 3 whole.
        want[1] = page(3);
        want[3] = page(5);
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        w.encode(1, &want[1], None, &mut b).unwrap();
        w.encode(3, &want[3], None, &mut b).unwrap();
        a.begin(1, 0).unwrap();
        a.apply_batch(&b).unwrap();
        a.commit(1, &digest_of(&want), 2).unwrap();
        assert_eq!(a.image().pages(), &want);
        assert_eq!(a.committed_epoch(), 1);
        // Epoch 2: a delta of page 1 against its epoch-1 content, split
        // over two batches with a page-0 record.
        let old = want[1];
        want[1][10] ^= 0xff;
        want[0][0] = 1;
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        let o = encode_page_record(1, &want[1], Some(&old), &mut b1).unwrap();
        assert_eq!(o.kind, crate::delta::RecordKind::Delta);
        encode_page_record(0, &want[0], Some(&[0u8; PAGE_SIZE]), &mut b2).unwrap();
        a.begin(2, 1).unwrap();
        a.apply_batch(&b1).unwrap();
        assert_eq!(a.image().pages()[1], old, "staged, not committed yet");
        a.apply_batch(&b2).unwrap();
        a.commit(2, &digest_of(&want), 2).unwrap();
        assert_eq!(a.image().pages(), &want);
        assert_eq!(a.digest(), digest_of(&want));
        assert_eq!(content_digest(a.image()), {
            let mut m = VecMemory::zeroed(4);
            m.pages_mut().copy_from_slice(&want);
            content_digest(&m)
        });
    }

    fn committed_one() -> (Applier<VecMemory>, [Page; 2]) {
        let mut a = fresh(2);
        let want = [page(1), page(2)];
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        w.encode(0, &want[0], None, &mut b).unwrap();
        w.encode(1, &want[1], None, &mut b).unwrap();
        a.begin(1, 0).unwrap();
        a.apply_batch(&b).unwrap();
        a.commit(1, &digest_of(&want), 2).unwrap();
        (a, want)
    }

    #[test]
    fn every_failure_leaves_the_committed_image() {
        let (_, want) = committed_one();
        let mut next = want;
        next[0][7] ^= 1;
        let mut good = Vec::new();
        encode_page_record(0, &next[0], Some(&want[0]), &mut good).unwrap();
        let d = digest_of(&next);
        type Case = fn(&mut Applier<VecMemory>, &[u8], &Digest) -> Result<(), ApplyError>;
        let cases: &[(Case, ApplyError)] = &[
            (|a, _, _| a.apply_batch(&[]), ApplyError::NoEpoch),
            (|a, _, d| a.commit(2, d, 1), ApplyError::NoEpoch),
            (|a, _, _| a.begin(1, 1), ApplyError::StaleEpoch),
            (|a, _, _| a.begin(2, 0), ApplyError::BaseMismatch { have: 1, want: 0 }),
            (
                |a, g, d| {
                    a.begin(3, 1)?;
                    a.apply_batch(g)?;
                    a.commit(2, d, 1)
                },
                ApplyError::WrongEpoch,
            ),
            (
                |a, g, d| {
                    a.begin(2, 1)?;
                    a.apply_batch(g)?;
                    a.commit(2, d, 2)
                },
                ApplyError::PageCountMismatch,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    a.apply_batch(g)?;
                    a.commit(2, &[0; 32], 1)
                },
                ApplyError::DigestMismatch,
            ),
            (
                |a, g, d| {
                    a.begin(2, 1)?;
                    a.apply_batch(g)?;
                    a.apply_batch(g)?;
                    a.commit(2, d, 1)
                },
                ApplyError::PageCountMismatch,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    a.apply_batch(&g[..g.len() - 1])
                },
                ApplyError::Record(DeltaError::Truncated),
            ),
            (
                |a, _, _| {
                    a.begin(2, 1)?;
                    a.begin(3, 1)
                },
                ApplyError::EpochOpen,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    let mut bad = g.to_vec();
                    bad[0] = 2 << 2 | 3; // page 2 of a 2-page image
                    a.apply_batch(&bad)
                },
                ApplyError::PageOutOfRange,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    let mut bad = g.to_vec();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x55; // a run byte: the result fails its hash
                    a.apply_batch(&bad)
                },
                ApplyError::Record(DeltaError::HashMismatch),
            ),
        ];
        for (i, (case, err)) in cases.iter().enumerate() {
            let (mut a, _) = committed_one();
            assert_eq!(case(&mut a, &good, &d), Err(*err), "case {i}");
            assert_eq!(a.image().pages(), &want, "case {i}");
            assert_eq!(a.committed_epoch(), 1, "case {i}");
            assert_eq!(a.staging_epoch(), None, "case {i}: staging dropped");
            assert_eq!(a.digest(), digest_of(&want));
            // And the good epoch still applies afterwards.
            a.begin(2, 1).unwrap();
            a.apply_batch(&good).unwrap();
            a.commit(2, &d, 1).unwrap();
            assert_eq!(a.image().pages(), &next, "case {i}");
        }
    }

    #[test]
    fn a_catch_up_replaces_pages_and_commits_at_a_later_cut() {
        let (mut a, want) = committed_one();
        // Begun as epoch 3, page 0 sent twice (the guest wrote it again after
        // its first record), page 1 once; committed as the cut of epoch 5.
        let mut next = want;
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        w.encode(0, &page(7), None, &mut b).unwrap();
        w.encode(1, &page(8), None, &mut b).unwrap();
        a.begin(3, 1).unwrap();
        a.apply_batch(&b).unwrap();
        next[0] = page(9);
        next[1] = page(8);
        let mut again = Vec::new();
        encode_page_record(0, &next[0], None, &mut again).unwrap();
        a.apply_batch(&again).unwrap();
        assert_eq!(a.image().pages(), &want, "staged only");
        assert_eq!(a.commit(5, &digest_of(&next), 2), Err(ApplyError::PageCountMismatch), "three records");
        assert_eq!(a.committed_epoch(), 1);
        a.begin(3, 1).unwrap();
        a.apply_batch(&b).unwrap();
        a.apply_batch(&again).unwrap();
        a.commit(5, &digest_of(&next), 3).unwrap();
        assert_eq!(a.image().pages(), &next);
        assert_eq!(a.committed_epoch(), 5);
        assert_eq!(a.digest(), digest_of(&next));
        // A delta after a replacement still applies to the committed page.
        let (mut d1, mut d2) = (Vec::new(), Vec::new());
        let mut last = next;
        last[1][3] ^= 0x40;
        encode_page_record(1, &page(2), None, &mut d1).unwrap();
        encode_page_record(1, &last[1], Some(&next[1]), &mut d2).unwrap();
        a.begin(6, 5).unwrap();
        a.apply_batch(&d1).unwrap();
        a.apply_batch(&d2).unwrap();
        a.commit(6, &digest_of(&last), 2).unwrap();
        assert_eq!(a.image().pages(), &last);
    }

    #[test]
    fn cut_epoch_is_dropped_by_abort() {
        let (mut a, want) = committed_one();
        let mut b = Vec::new();
        encode_page_record(1, &page(9), None, &mut b).unwrap();
        a.begin(5, 1).unwrap();
        a.apply_batch(&b).unwrap();
        a.abort();
        assert_eq!(a.image().pages(), &want);
        assert_eq!(a.staging_epoch(), None);
        assert_eq!(a.page_hashes().get(1), Some(hash_page(&want[1])));
    }

    #[test]
    fn new_hashes_an_existing_image() {
        let mut m = VecMemory::zeroed(3);
        m.pages_mut()[2] = page(4);
        let a = Applier::new(m.clone(), 7);
        assert_eq!(a.committed_epoch(), 7);
        assert_eq!(a.digest(), PageHashes::of_memory(&m).digest());
        let (img, hashes, e) = a.into_parts();
        assert_eq!((img, e), (m, 7));
        assert_eq!(hashes.get(2), Some(hash_page(&page(4))));
    }
}
